//! `chrysalis serve`: the OpenAI-compatible local gateway.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrysalis_client::attest;
use chrysalis_client::gateway::Gateway;

use crate::remote::{runtime, Remote};

/// Serve an OpenAI-compatible API on localhost that seals every request to a verified
/// enclave.
///
/// Routes: GET /v1/models, POST /v1/chat/completions (with "stream": true as
/// server-sent events; usage in every final response). The enclave is verified at
/// start-up and again for every session the gateway opens.
///
/// Example:
///   chrysalis serve --url http://127.0.0.1:8443 --listen 127.0.0.1:8000 --allow-simulated
///   OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=unused python app.py
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    remote: Remote,
    /// Local address to serve on (keep it on loopback: plaintext crosses it).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// How long to keep retrying, with backoff, while the shim or the enclave behind it
    /// is not reachable yet (it may still be loading its model). A verification
    /// failure is never retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait: u64,
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(serve(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chrysalis serve: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let (endpoint, trust) = args.remote.resolve()?;
    // Fail fast with the reason if the enclave would not be trusted.
    let verdict = verify_when_up(&endpoint, &trust, Duration::from_secs(args.wait)).await?;
    eprint!("{}", verdict.summary());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let marker = if verdict.insecure {
        format!(" ({})", verdict.fingerprint())
    } else {
        String::new()
    };
    // Tests and scripts wait for this line.
    println!("chrysalis serve: OpenAI-compatible API on http://{local}/v1{marker}");
    axum::serve(listener, Gateway::new(endpoint, trust).router()).await?;
    Ok(())
}

/// Fetches and verifies evidence, retrying with backoff for up to `wait` while the shim
/// or the enclave cannot be reached (services may start in any order; the enclave takes
/// a few seconds to load and verify its model). Only transport failures are retried: a
/// refusal of the evidence ends here, at once.
async fn verify_when_up(
    endpoint: &chrysalis_client::transport::Endpoint,
    trust: &attest::TrustOptions,
    wait: Duration,
) -> Result<attest::Verdict, attest::AttestError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match attest::fetch_and_verify(endpoint, trust).await {
            Err(attest::AttestError::Fetch(why)) if start.elapsed() + delay < wait => {
                eprintln!(
                    "chrysalis serve: waiting for the enclave behind {} ({why}); \
                     retrying in {:.1} s, giving up after {} s",
                    endpoint.url(),
                    delay.as_secs_f64(),
                    wait.as_secs()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
