//! `cargo xtask demo`: an end-to-end confidential chat on this machine.

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
}

/// Runs the parts of the request path that exist so far.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.billing {
        return crate::billing_demo::run();
    }
    anyhow::bail!(
        "the demo needs the engine and the enclave, which have not landed yet \
         (question was {:?})",
        args.question
    )
}
