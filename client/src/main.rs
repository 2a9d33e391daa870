//! `chrysalis`: the command-line client.
//!
//! A small dispatcher: each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod pay;
mod remote;
mod serve;
mod verify;
mod verify_report;

/// Chrysalis: confidential LLM inference you can verify.
#[derive(Debug, Parser)]
#[command(name = "chrysalis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // The subcommand's help comes from `verify_report::Args`.
    VerifyReport(verify_report::Args),
    /// Build payment-channel messages (deploy, top up, withdraw, close) as BOC files.
    Pay(pay::Args),
    // The subcommand's help comes from `verify::Args`.
    Verify(verify::Args),
    /// Verify the enclave, open a sealed session and stream one answer.
    Chat(chat::Args),
    /// Serve an OpenAI-compatible API on localhost that seals every request.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::VerifyReport(args) => verify_report::run(args),
        Command::Pay(args) => pay::run(args),
        Command::Verify(args) => verify::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Serve(args) => serve::run(&args),
    }
}
