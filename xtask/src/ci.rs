//! `cargo xtask ci`: the README's test command and what `.ci/run` calls.

use crate::util::{cargo, run_checked, workspace_root};

/// Options of `cargo xtask ci`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (tests only).
    #[arg(long)]
    tests_only: bool,
}

/// Runs formatting and lint checks, then every test of the workspace.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    if !args.tests_only {
        run_checked(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
        run_checked(cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run_checked(cargo().current_dir(&root).args([
        "test",
        "--workspace",
        "--locked",
        "--no-fail-fast",
    ]))?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}
