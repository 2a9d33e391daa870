//! `chrysalis verify`: fetch live evidence with a fresh nonce and print the verdict.

use std::process::ExitCode;

use chrysalis_client::attest;

use crate::remote::{runtime, Remote};

/// Fetch the enclave's evidence with a fresh nonce and check it.
///
/// SEV-SNP evidence is checked as `chrysalis verify-report` checks a report (AMD chain,
/// signature over the raw report, chip id, guest policy, VMPL), plus:
///   - the launch measurement must be in the published manifests built into this
///     binary (or those given with --manifests, which replace them);
///   - REPORTED_TCB must meet those manifests' minimum for the report's CPU generation
///     (Milan, Genoa, Turin), raised by --min-tcb;
///   - REPORT_DATA must bind the enclave's keys, the model root and our nonce.
///
/// The verdict lists only the checks that ran.
///
/// INSECURE options, each marking every output INSECURE:
///   --insecure-any-measurement  accept any launch measurement (any image)
///   --allow-simulated           accept simulated (dev-mode) evidence
///
/// Exit status: 0 when the evidence is accepted, 1 with the failed check otherwise.
///
/// Examples:
///   chrysalis verify --url https://provider.example:8443
///   chrysalis verify --url https://provider.example:8443 --manifests ./published --min-tcb genoa:snp=28
///   chrysalis verify --url http://127.0.0.1:8443 --allow-simulated --json
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
            println!("{}", verdict.verdict_line());
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
