//! The Chrysalis enclave.
//!
//! In production this binary is `/init`, PID 1 of the measured SEV-SNP guest: it
//! attests, verifies and loads the model named by the measured kernel command line,
//! and serves sealed inference sessions through the host shim. On a developer machine
//! the same binary runs as an ordinary process (`generate`, and `serve` in dev mode with
//! simulated, INSECURE evidence). It may depend on every library crate of the workspace:
//! protocol, measurements, models and kernels.
//!
//! This file only parses the command line and dispatches to the library's modules.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chrysalis_enclave::{generate, serve};

mod init;

/// The Chrysalis confidential inference enclave.
#[derive(Parser, Debug)]
#[command(name = "chrysalis-enclave", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt with a local model (CPU).
    Generate(generate::GenerateArgs),
    /// Serve sealed inference sessions to the host shim (evidence, sessions, batching).
    ///
    /// Example (dev mode, INSECURE simulated evidence):
    /// chrysalis-enclave serve --listen tcp:127.0.0.1:7000 --model smollm2-135m --dev
    Serve(serve::Args),
}

fn main() -> ExitCode {
    // As `/init` of the guest image the kernel starts us as PID 1, with no arguments.
    if std::process::id() == 1 {
        init::run();
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chrysalis-enclave: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
