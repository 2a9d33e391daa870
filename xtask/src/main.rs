//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Each subcommand lives in its own module; this file only parses and dispatches.
//! xtask may depend on any crate of the workspace.

mod billing_demo;
mod ci;
mod demo;
mod util;

use clap::{Parser, Subcommand};

/// Chrysalis project automation.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every check CI runs: rustfmt, clippy with warnings as errors, all tests.
    Ci(ci::Args),
    /// End-to-end confidential chat on this machine (the README's main command).
    Demo(demo::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ci(args) => ci::run(args),
        Command::Demo(args) => demo::run(args),
    }
}
