//! The Chrysalis host shim.
//!
//! Runs on the provider's untrusted host beside the confidential VM: launches QEMU,
//! serves the public HTTP API, relays sealed frames between clients and the enclave
//! without ever holding a key, and keeps the billing ledger and TON settlement. It may
//! depend on `chrysalis-protocol` and `chrysalis-measurements`, never on the enclave,
//! models or kernels.

mod launch;
mod relay;

use clap::{Parser, Subcommand};

/// The untrusted host side of a Chrysalis provider.
#[derive(Parser)]
#[command(name = "chrysalis-shim", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public HTTP API and relay sealed sessions to the enclave.
    ///
    /// Example: chrysalis-shim serve --enclave tcp:127.0.0.1:7000 --listen 127.0.0.1:8443
    Serve(relay::Args),
    /// Launch the guest image under QEMU: an SEV-SNP guest with measured direct boot
    /// (--snp), or an emulated development guest.
    ///
    /// Example: chrysalis-shim launch --image target/image --snp --vcpus 4 --cpu genoa --dry-run
    Launch(launch::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs in files or pipes stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => tokio::runtime::Runtime::new()?.block_on(relay::run(args)),
        Command::Launch(args) => launch::run(args),
    }
}
