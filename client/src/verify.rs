//! `chrysalis verify`: fetch live evidence with a fresh nonce and print the verdict.

use std::process::ExitCode;

use chrysalis_client::attest;

use crate::remote::{runtime, Remote};

/// Fetch the enclave's evidence with a fresh nonce and check it.
///
/// SEV-SNP evidence is checked exactly as `chrysalis verify-report` checks a report
/// (AMD chain, signature over the raw report, policy, TCB, measurement), plus the
/// REPORT_DATA binding of the enclave's keys, the model root and our nonce. Simulated
/// (dev-mode) evidence is refused unless --allow-simulated, and then marked INSECURE.
///
/// Exit status: 0 when the evidence is accepted, 1 with the failed check otherwise.
///
/// Example: chrysalis verify --url http://127.0.0.1:8443 --allow-simulated --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    remote: Remote,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    let outcome = runtime().and_then(|rt| {
        let (endpoint, trust) = args.remote.resolve()?;
        Ok(rt.block_on(attest::fetch_and_verify(&endpoint, &trust)))
    });
    match outcome {
        Ok(Ok(verdict)) if args.json => {
            println!("{}", verdict.to_json());
            ExitCode::SUCCESS
        }
        Ok(Ok(verdict)) => {
            print!("{}", verdict.summary());
            println!(
                "{}",
                if verdict.insecure {
                    "verdict: ACCEPTED, INSECURE (simulated)"
                } else {
                    "verdict: ACCEPTED"
                }
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(args.json, &e.to_string()),
        Err(e) => fail(args.json, &format!("{e:#}")),
    }
}

fn fail(json: bool, why: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "verified": false, "error": why }));
    } else {
        eprintln!("chrysalis verify: REJECTED: {why}");
    }
    ExitCode::FAILURE
}
