//! `cargo xtask demo`: an end-to-end confidential chat on this machine.

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Args {
    /// The question to ask the enclave.
    #[arg(default_value = "What is the capital of France?")]
    question: String,
}

/// Runs the parts of the request path that exist so far.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "the demo needs the engine and the enclave, which have not landed yet \
         (question was {:?})",
        args.question
    )
}
