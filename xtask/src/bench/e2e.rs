//! `cargo xtask bench e2e`: the full sealed path (client library → shim → enclave, with
//! verification, sealing and relaying) against `chrysalis-enclave generate` on the same
//! prompt, and aggregate throughput with several concurrent sessions.
//!
//! Release binaries; the enclave and shim run as child processes on loopback, the
//! client side runs in this process. Repetitions interleave the sealed run and the
//! `generate` run (and then each concurrency level), so load on the shared machine hits
//! both alike; the table shows medians.
//!
//! - Single stream: time to first token is from sending the sealed request to the
//!   first streamed chunk (for `generate`: its prefill time, which ends with the first
//!   token's logits); decode tokens per second is over the remaining tokens, from the
//!   first chunk to the last (for `generate`: its decode steps over its decode time).
//!   Session set-up (evidence fetch, verification, key exchange) is reported apart.
//! - Aggregate: N sessions are opened first, then N requests start together; tokens
//!   per second is all completion tokens over the wall time until the last one ends.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use chrysalis_client::attest::TrustOptions;
use chrysalis_client::session::Session;
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::{ChatMessage, InferenceRequest, Prompt, Role, SamplingParams};
use serde::Serialize;

use super::median;
use crate::stack::{build_release, ensure_model, Binaries, Stack};
use crate::util::chrysalis_home;

/// The single-stream prompt: one that keeps a small model talking.
const PROMPT: &str = "Write a long story about a lighthouse keeper and her cat.";

/// Options of `cargo xtask bench e2e`.
#[derive(clap::Args)]
pub struct E2eArgs {
    /// Model to serve (installed with `cargo xtask fetch-model` if missing).
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Most tokens generated in a single-stream run (greedy; fewer if the model stops).
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Tokens per stream in the concurrent runs.
    #[arg(long, default_value_t = 32)]
    concurrent_tokens: u32,
    /// Concurrency levels of the aggregate measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    streams: Vec<usize>,
    /// Runs of each measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Compute threads of the enclave and of `generate` alike.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print every sample and the medians as JSON.
    #[arg(long)]
    json: bool,
}

/// One single-stream run.
#[derive(Serialize, Clone)]
struct StreamSample {
    path: &'static str,
    ttft_ms: f64,
    decode_tokens: usize,
    decode_tokens_per_s: f64,
    /// Evidence fetch, verification and session open (sealed path only).
    setup_ms: Option<f64>,
    token_ids: Vec<u32>,
}

/// One aggregate run.
#[derive(Serialize, Clone)]
struct AggregateSample {
    streams: usize,
    completion_tokens: u64,
    wall_s: f64,
    tokens_per_s: f64,
}

/// Runs the benchmark.
pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    if args.streams.contains(&0) || args.repetitions == 0 {
        bail!("--streams values and --repetitions must be at least 1");
    }
    ensure_model(&args.model)?;
    let bins = build_release()?;
    let threads = args.threads.to_string();
    // Every stream comes from 127.0.0.1 and each session needs its own evidence: lift
    // the shim's per-source evidence limit (default burst 20) above the largest run.
    let burst = (args.streams.iter().copied().max().unwrap_or(1) * 4)
        .max(20)
        .to_string();
    let stack = Stack::start_with(
        &bins,
        &args.model,
        &["--threads", &threads],
        &["--evidence-burst-per-source", &burst],
    )?;
    let endpoint = Endpoint::new(&stack.url, None).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    let model_dir = chrysalis_home().join("models").join(&args.model);

    let runs = args.repetitions * (2 + args.streams.len());
    let bar = crate::bench::progress_bar(runs);
    let (mut singles, mut aggregates) = (Vec::new(), Vec::new());
    for _ in 0..args.repetitions {
        bar.set_message("sealed single stream");
        singles.push(rt.block_on(sealed_stream(&endpoint, args.tokens))?);
        bar.inc(1);
        bar.set_message("generate");
        singles.push(generate_stream(&bins, &model_dir, args)?);
        bar.inc(1);
        for &n in &args.streams {
            bar.set_message(format!("{n} concurrent streams"));
            aggregates.push(rt.block_on(aggregate(&endpoint, n, args.concurrent_tokens))?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    drop(stack);
    report(args, &singles, &aggregates)
}

fn trust() -> TrustOptions {
    TrustOptions {
        allow_simulated: true,
        ..TrustOptions::default()
    }
}

fn request(text: &str, max_tokens: u32) -> InferenceRequest {
    InferenceRequest {
        request_id: 1,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: text.to_owned(),
        }]),
        max_tokens,
        sampling: SamplingParams::GREEDY,
        stream: true,
    }
}

/// One request through the sealed path, timing each streamed chunk.
async fn sealed_stream(endpoint: &Endpoint, max_tokens: u32) -> anyhow::Result<StreamSample> {
    let setup = Instant::now();
    let mut session = Session::open(endpoint, &trust()).await?;
    let setup_ms = setup.elapsed().as_secs_f64() * 1e3;
    let sent = Instant::now();
    let (mut first, mut last) = (None, sent);
    let done = session
        .request(&request(PROMPT, max_tokens), |chunk| {
            let now = Instant::now();
            if first.is_none() && !chunk.token_ids.is_empty() {
                first = Some(now);
            }
            last = now;
        })
        .await?;
    session.close().await;
    let first = first.context("the sealed response carried no token")?;
    let decode_tokens = done.token_ids.len().saturating_sub(1);
    Ok(StreamSample {
        path: "sealed",
        ttft_ms: (first - sent).as_secs_f64() * 1e3,
        decode_tokens,
        decode_tokens_per_s: decode_tokens as f64 / (last - first).as_secs_f64(),
        setup_ms: Some(setup_ms),
        token_ids: done.token_ids,
    })
}

/// The same prompt through `chrysalis-enclave generate --json`, in a fresh process.
fn generate_stream(
    bins: &Binaries,
    model_dir: &Path,
    args: &E2eArgs,
) -> anyhow::Result<StreamSample> {
    let out = Command::new(&bins.enclave)
        .args(["generate", "--greedy", "--json", "--chat", PROMPT])
        .arg("--max-tokens")
        .arg(args.tokens.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--model")
        .arg(model_dir)
        .output()
        .context("running chrysalis-enclave generate")?;
    if !out.status.success() {
        bail!(
            "chrysalis-enclave generate failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("generate --json output")?;
    let t = &v["timings"];
    let number = |field: &str| {
        t[field]
            .as_f64()
            .with_context(|| format!("generate --json: no timings.{field}"))
    };
    let decode_tokens = number("decode_tokens")? as usize;
    Ok(StreamSample {
        path: "generate",
        ttft_ms: number("prefill_ms")?,
        decode_tokens,
        decode_tokens_per_s: decode_tokens as f64 / (number("decode_ms")? / 1e3),
        setup_ms: None,
        token_ids: serde_json::from_value(v["token_ids"].clone())?,
    })
}

/// `n` sessions, opened first, then `n` requests at once.
async fn aggregate(
    endpoint: &Endpoint,
    n: usize,
    max_tokens: u32,
) -> anyhow::Result<AggregateSample> {
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(Session::open(endpoint, &trust()).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut session)| {
            let req = request(
                &format!("Tell me a story about a lighthouse keeper called number {i}."),
                max_tokens,
            );
            tokio::spawn(async move {
                let done = session.request(&req, |_| {}).await;
                session.close().await;
                done
            })
        })
        .collect();
    let mut completion_tokens = 0u64;
    for task in tasks {
        completion_tokens += u64::from(task.await??.usage.completion_tokens);
    }
    let wall_s = started.elapsed().as_secs_f64();
    Ok(AggregateSample {
        streams: n,
        completion_tokens,
        wall_s,
        tokens_per_s: completion_tokens as f64 / wall_s,
    })
}

#[derive(Serialize)]
struct StreamSummary {
    path: &'static str,
    ttft_ms: f64,
    decode_tokens_per_s: f64,
    decode_tokens: usize,
    setup_ms: Option<f64>,
    runs: usize,
}

fn summarize_streams(samples: &[StreamSample], path: &'static str) -> StreamSummary {
    let mine: Vec<&StreamSample> = samples.iter().filter(|s| s.path == path).collect();
    let setups: Vec<f64> = mine.iter().filter_map(|s| s.setup_ms).collect();
    StreamSummary {
        path,
        ttft_ms: median(mine.iter().map(|s| s.ttft_ms).collect()),
        decode_tokens_per_s: median(mine.iter().map(|s| s.decode_tokens_per_s).collect()),
        decode_tokens: mine.first().map_or(0, |s| s.decode_tokens),
        setup_ms: (!setups.is_empty()).then(|| median(setups)),
        runs: mine.len(),
    }
}

#[derive(Serialize)]
struct AggregateSummary {
    streams: usize,
    tokens_per_s: f64,
    vs_one_stream: f64,
    runs: usize,
}

fn summarize_aggregates(samples: &[AggregateSample], levels: &[usize]) -> Vec<AggregateSummary> {
    let rate = |n: usize| {
        median(
            samples
                .iter()
                .filter(|s| s.streams == n)
                .map(|s| s.tokens_per_s)
                .collect(),
        )
    };
    let single = rate(1);
    levels
        .iter()
        .map(|&n| AggregateSummary {
            streams: n,
            tokens_per_s: rate(n),
            vs_one_stream: rate(n) / single,
            runs: samples.iter().filter(|s| s.streams == n).count(),
        })
        .collect()
}

fn report(
    args: &E2eArgs,
    singles: &[StreamSample],
    aggregates: &[AggregateSample],
) -> anyhow::Result<()> {
    let sealed = summarize_streams(singles, "sealed");
    let generate = summarize_streams(singles, "generate");
    let agg = summarize_aggregates(aggregates, &args.streams);
    // Greedy decoding: both paths must have produced the same tokens.
    let reference = singles.iter().find(|s| s.path == "generate");
    let same_tokens = singles
        .iter()
        .all(|s| reference.is_none_or(|r| r.token_ids == s.token_ids));
    if args.json {
        let json = serde_json::json!({
            "threads": args.threads,
            "single_stream": [sealed, generate],
            "ttft_ratio": sealed.ttft_ms / generate.ttft_ms,
            "decode_ratio": sealed.decode_tokens_per_s / generate.decode_tokens_per_s,
            "same_tokens": same_tokens,
            "aggregate": agg,
            "samples": { "single_stream": singles, "aggregate": aggregates },
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print!("{}", table(args, &sealed, &generate, &agg)?);
    if !same_tokens {
        println!("WARNING: the sealed path and generate produced different greedy tokens");
    }
    Ok(())
}

fn table(
    args: &E2eArgs,
    sealed: &StreamSummary,
    generate: &StreamSummary,
    agg: &[AggregateSummary],
) -> anyhow::Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "| path ({} thread(s)) | time to first token ms | decode tok/s | decode tokens | session set-up ms | runs |",
        args.threads
    )?;
    writeln!(t, "|---|---|---|---|---|---|")?;
    for s in [sealed, generate] {
        let setup = s.setup_ms.map_or("-".to_owned(), |ms| format!("{ms:.1}"));
        writeln!(
            t,
            "| {} | {:.1} | {:.1} | {} | {setup} | {} |",
            path_name(s.path),
            s.ttft_ms,
            s.decode_tokens_per_s,
            s.decode_tokens,
            s.runs
        )?;
    }
    writeln!(
        t,
        "\nsealed / generate: time to first token {:.3}x, decode {:.3}x (target: within 3%)\n",
        sealed.ttft_ms / generate.ttft_ms,
        sealed.decode_tokens_per_s / generate.decode_tokens_per_s
    )?;
    writeln!(
        t,
        "| concurrent streams ({} tokens each) | aggregate tok/s | vs 1 stream | runs |",
        args.concurrent_tokens
    )?;
    writeln!(t, "|---|---|---|---|")?;
    for a in agg {
        writeln!(
            t,
            "| {} | {:.1} | {:.2}x | {} |",
            a.streams, a.tokens_per_s, a.vs_one_stream, a.runs
        )?;
    }
    writeln!(
        t,
        "(medians of interleaved runs; target at 32 streams: at least 4x one stream)"
    )?;
    Ok(t)
}

fn path_name(path: &str) -> &'static str {
    match path {
        "sealed" => "sealed: client lib → shim → enclave",
        _ => "chrysalis-enclave generate",
    }
}
