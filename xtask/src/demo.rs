//! `cargo xtask demo`: an end-to-end confidential chat on this machine.
//!
//! Fetches the model if it is missing, builds the release binaries, starts the
//! enclave (dev mode: simulated, INSECURE evidence) and the shim on loopback, runs
//! `chrysalis chat --allow-simulated` on the question (verification summary, then the
//! streamed answer), and stops both services, also when interrupted.

use std::process::Command;

use anyhow::bail;

use crate::stack::{build_release, ensure_model, Stack};

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Billing only: deposit, usage and settlement on the TON emulator
    /// (needs node and `npm ci --prefix contracts`).
    #[arg(long)]
    billing: bool,
    /// The question to ask the enclave.
    #[arg(default_value = "What is the capital of France?")]
    question: String,
    /// The model to serve (installed with `cargo xtask fetch-model` if missing).
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.billing {
        return crate::billing_demo::run();
    }
    ensure_model(&args.model)?;
    let bins = build_release()?;
    eprintln!(
        "starting the enclave (dev mode: simulated evidence, INSECURE) and the shim on loopback"
    );
    let stack = Stack::start(&bins, &args.model, &[])?;
    let (enclave_pid, shim_pid) = stack.pids();
    eprintln!(
        "enclave pid {enclave_pid} on {}, shim pid {shim_pid} on {}",
        stack.enclave_addr, stack.url
    );
    eprintln!(
        "\n$ chrysalis chat --url {} --allow-simulated --show-verdict {:?}\n",
        stack.url, args.question
    );
    let status = Command::new(&bins.client)
        .args([
            "chat",
            "--url",
            &stack.url,
            "--allow-simulated",
            "--show-verdict",
            "--max-tokens",
        ])
        .arg(args.max_tokens.to_string())
        .arg(&args.question)
        .status()?;
    drop(stack);
    if !status.success() {
        bail!("chrysalis chat failed with {status}");
    }
    Ok(())
}
