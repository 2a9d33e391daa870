//! `cargo xtask bench cpu`: the CPU engine's prefill and decode speed and peak memory,
//! interleaved with llama.cpp's on the same model, prompt and thread counts.
//!
//! Every measurement runs in a child process (this binary again, or Python for
//! llama.cpp), so each one's peak resident memory (`VmHWM`) is its own. Runs alternate
//! between engines and configurations, repetition by repetition, so a change in the
//! shared machine's load hits both sides alike; the table shows medians.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrysalis_kernels::{ActivationPrecision, CpuBackend};
use chrysalis_models::engine::Engine;
use chrysalis_models::llama::SeqBatch;
use chrysalis_models::ModelDir;
use serde::{Deserialize, Serialize};

use crate::util::chrysalis_home;

mod e2e;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(clap::Subcommand)]
enum Target {
    /// The CPU backend on the real model, against llama.cpp when its Python package is
    /// installed (`pip install llama-cpp-python`). Prints tokens per second for prefill
    /// and decode at each thread count, peak memory, and our/llama.cpp ratios.
    Cpu(CpuArgs),
    /// The full sealed path (client library, shim, enclave; release builds) against
    /// `chrysalis-enclave generate` in the same run: single-stream time to first token
    /// and decode tokens per second, then aggregate tokens per second with 1, 8 and 32
    /// concurrent sessions. Starts its own enclave (dev mode) and shim on loopback.
    E2e(e2e::E2eArgs),
}

/// Options of `cargo xtask bench cpu`.
#[derive(clap::Args)]
pub struct CpuArgs {
    /// Model directory; default `$CHRYSALIS_HOME/models/smollm2-135m` (made by
    /// `cargo xtask fetch-model smollm2-135m`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The GGUF file llama.cpp runs; default: the only `*.gguf` in
    /// `$CHRYSALIS_HOME/gguf/` (where `fetch-model` keeps it).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Prompt tokens of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Tokens of the decode measurement (one forward pass each, from an empty cache).
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Runs of each configuration; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Also measure our 8-bit-activation path (llama.cpp's arithmetic).
    #[arg(long)]
    q8: bool,
    /// Skip llama.cpp even when it is installed.
    #[arg(long)]
    no_llama_cpp: bool,
    /// Print every sample, the medians and the ratios as JSON.
    #[arg(long)]
    json: bool,
    /// Internal: run one measurement of our engine in this process.
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Internal: the worker's job file.
    #[arg(long, hide = true)]
    job: Option<PathBuf>,
}

/// What a child process is asked to measure.
#[derive(Serialize, Deserialize)]
struct Job {
    model: PathBuf,
    gguf: PathBuf,
    threads: usize,
    prompt: Vec<u32>,
    decode_tokens: usize,
}

/// One child's result.
#[derive(Serialize, Deserialize, Clone)]
struct Sample {
    engine: String,
    threads: usize,
    prefill_tokens: usize,
    prefill_s: f64,
    /// CPU seconds of the prefill, all threads: unlike wall time, not inflated when
    /// other processes hold the cores (but inflated by threads that spin while waiting).
    prefill_cpu_s: f64,
    decode_tokens: usize,
    decode_s: f64,
    /// CPU seconds of the decode, all threads.
    decode_cpu_s: f64,
    peak_rss_kib: u64,
}

impl Sample {
    fn prefill_rate(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_s
    }

    fn decode_rate(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_s
    }

    /// Tokens per CPU second of one thread: what the engine would do on an idle core.
    fn prefill_cpu_rate(&self) -> f64 {
        self.prefill_tokens as f64 * self.threads as f64 / self.prefill_cpu_s
    }

    fn decode_cpu_rate(&self) -> f64 {
        self.decode_tokens as f64 * self.threads as f64 / self.decode_cpu_s
    }
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, f64, f64)> {
    let (wall, cpu) = (Instant::now(), process_cpu_s()?);
    let out = f();
    Ok((out, wall.elapsed().as_secs_f64(), process_cpu_s()? - cpu))
}

/// CPU seconds used so far by every thread of this process, from each thread's
/// `/proc/self/task/TID/schedstat` (nanoseconds on a CPU, first field).
fn process_cpu_s() -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended while we listed
        };
        ns += stat
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse::<u64>()?;
    }
    Ok(ns as f64 * 1e-9)
}

/// Medians of one engine at one thread count.
#[derive(Serialize)]
struct Summary {
    engine: String,
    threads: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    prefill_tokens_per_cpu_s: f64,
    decode_tokens_per_cpu_s: f64,
    peak_rss_mib: f64,
    runs: usize,
}

/// Runs `cargo xtask bench ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.target {
        Target::Cpu(cpu) => match (&cpu.worker, &cpu.job) {
            (Some(engine), Some(job)) => worker(engine, job),
            _ => bench_cpu(&cpu),
        },
        Target::E2e(e2e) => e2e::run(&e2e),
    }
}

/// Our engines by name: the exact default and the 8-bit-activation option.
fn precision_of(engine: &str) -> anyhow::Result<ActivationPrecision> {
    match engine {
        "chrysalis" => Ok(ActivationPrecision::F32),
        "chrysalis-q8" => Ok(ActivationPrecision::Q8),
        other => bail!("unknown engine {other:?}: expected chrysalis or chrysalis-q8"),
    }
}

fn bench_cpu(args: &CpuArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("note: xtask is a dev build; the kernels and models crates are optimised (opt-level 3) either way");
    }
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| chrysalis_home().join("models").join("smollm2-135m"));
    let prompt = benchmark_prompt(&model, args.prefill_tokens)?;
    let llama_cpp = !args.no_llama_cpp && llama_cpp_available();
    let gguf = match (&args.gguf, llama_cpp) {
        (Some(path), _) => path.clone(),
        (None, true) => find_gguf()?,
        (None, false) => PathBuf::new(),
    };
    if !llama_cpp {
        eprintln!("note: llama.cpp's Python package is not installed (or --no-llama-cpp): measuring our engine only");
    }
    let mut engines = vec!["chrysalis"];
    if args.q8 {
        engines.push("chrysalis-q8");
    }
    if llama_cpp {
        engines.push("llama.cpp");
    }
    let runs = args.repetitions * args.threads.len() * engines.len();
    let bar = progress_bar(runs);
    let job_dir = std::env::temp_dir().join(format!("chrysalis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&job_dir)?;
    let mut samples = Vec::new();
    for _ in 0..args.repetitions {
        for &threads in &args.threads {
            for engine in &engines {
                bar.set_message(format!("{engine} x{threads}"));
                let job = Job {
                    model: model.clone(),
                    gguf: gguf.clone(),
                    threads,
                    prompt: prompt.clone(),
                    decode_tokens: args.decode_tokens,
                };
                let job_file = job_dir.join("job.json");
                std::fs::write(&job_file, serde_json::to_vec(&job)?)?;
                samples.push(run_child(engine, &job_file)?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&job_dir);
    report(args, &samples)
}

/// A fixed English text, tokenized by the model's own tokenizer and cut to `len`
/// tokens, so every engine reads the same ids.
fn benchmark_prompt(model: &Path, len: usize) -> anyhow::Result<Vec<u32>> {
    let dir = ModelDir::open(model).with_context(|| {
        format!(
            "opening model directory {} (run `cargo xtask fetch-model smollm2-135m`, or pass --model)",
            model.display()
        )
    })?;
    let paragraph = "The history of computing is a story of machines that learned to keep \
        secrets and share results. Early mainframes ran one program at a time for one owner; \
        later systems divided memory between users and trusted an operating system to keep \
        them apart. Confidential computing moves that trust into the processor itself, which \
        encrypts a virtual machine's memory and signs a report of what it booted. ";
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < len {
        text.push_str(paragraph);
        ids = dir.tokenizer().encode(&text)?;
    }
    ids.truncate(len);
    Ok(ids)
}

fn llama_cpp_available() -> bool {
    Command::new("python3")
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The single `*.gguf` file in `$CHRYSALIS_HOME/gguf/`, where `fetch-model` keeps it.
fn find_gguf() -> anyhow::Result<PathBuf> {
    let dir = chrysalis_home().join("gguf");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "listing {} (run `cargo xtask fetch-model smollm2-135m`, or pass --gguf)",
                dir.display()
            )
        })?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no GGUF file in {}: pass --gguf", dir.display()),
        _ => bail!(
            "several GGUF files in {}: pick one with --gguf ({found:?})",
            dir.display()
        ),
    }
}

/// Runs one measurement in a child process and parses its JSON line.
fn run_child(engine: &str, job_file: &Path) -> anyhow::Result<Sample> {
    let mut cmd = if engine == "llama.cpp" {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", LLAMA_CPP_WORKER]).arg(job_file);
        cmd
    } else {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["bench", "cpu", "--worker", engine, "--job"])
            .arg(job_file);
        cmd
    };
    let output = cmd
        .output()
        .with_context(|| format!("starting the {engine} worker"))?;
    if !output.status.success() {
        bail!(
            "{engine} worker failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{engine} worker printed {line:?}"))
}

/// The child side for our engine: load, warm up, time a prefill of the prompt and
/// `decode_tokens` single-token steps, print one JSON line.
fn worker(engine: &str, job_file: &Path) -> anyhow::Result<()> {
    let job: Job = serde_json::from_slice(&std::fs::read(job_file)?)?;
    let backend =
        CpuBackend::with_threads(job.threads)?.with_activation_precision(precision_of(engine)?);
    let engine_model = Engine::load(ModelDir::open(&job.model)?, Arc::new(backend))?;
    let llama = engine_model.model();
    let context = job.prompt.len() + job.decode_tokens + 1;
    // Warm-up: fault in every weight page and start the worker threads.
    let mut cache = llama.new_cache_with_len(context);
    llama.forward(&mut [SeqBatch {
        cache: &mut cache,
        tokens: &job.prompt[..8.min(job.prompt.len())],
    }])?;

    let mut cache = llama.new_cache_with_len(context);
    let (prefill, prefill_s, prefill_cpu_s) = timed(|| {
        let tokens = &job.prompt;
        llama.forward(&mut [SeqBatch {
            cache: &mut cache,
            tokens,
        }])
    })?;
    prefill?;

    let mut cache = llama.new_cache_with_len(context);
    let tokens = &job.prompt[..1];
    llama.forward(&mut [SeqBatch {
        cache: &mut cache,
        tokens,
    }])?;
    let (decode, decode_s, decode_cpu_s) = timed(|| {
        for step in 0..job.decode_tokens {
            let tokens = &[job.prompt[(step + 1) % job.prompt.len()]];
            llama.forward(&mut [SeqBatch {
                cache: &mut cache,
                tokens,
            }])?;
        }
        anyhow::Ok(())
    })?;
    decode?;
    let sample = Sample {
        engine: engine.to_owned(),
        threads: job.threads,
        prefill_tokens: job.prompt.len(),
        prefill_s,
        prefill_cpu_s,
        decode_tokens: job.decode_tokens,
        decode_s,
        decode_cpu_s,
        peak_rss_kib: peak_rss_kib()?,
    };
    println!("{}", serde_json::to_string(&sample)?);
    Ok(())
}

/// This process's peak resident set (`VmHWM` in `/proc/self/status`), KiB.
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line in /proc/self/status")?;
    let kib = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim();
    Ok(kib.parse()?)
}

/// llama.cpp's side, same protocol: read the job, warm up, time prefill and decode
/// with the same token ids, print one JSON line.
const LLAMA_CPP_WORKER: &str = r#"
import json, sys, time
from llama_cpp import Llama
job = json.load(open(sys.argv[1]))
prompt, n_dec, threads = job["prompt"], job["decode_tokens"], job["threads"]
ctx = len(prompt) + n_dec + 8
llm = Llama(model_path=job["gguf"], n_ctx=ctx, n_batch=len(prompt), n_ubatch=len(prompt),
            n_threads=threads, n_threads_batch=threads, verbose=False)
llm.eval(prompt[:8]); llm.reset()
t, c = time.perf_counter(), time.process_time()
llm.eval(prompt)
prefill_s, prefill_cpu_s = time.perf_counter() - t, time.process_time() - c
llm.reset(); llm.eval(prompt[:1])
t, c = time.perf_counter(), time.process_time()
for step in range(n_dec):
    llm.eval([prompt[(step + 1) % len(prompt)]])
decode_s, decode_cpu_s = time.perf_counter() - t, time.process_time() - c
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"engine": "llama.cpp", "threads": threads, "prefill_tokens": len(prompt),
                  "prefill_s": prefill_s, "prefill_cpu_s": prefill_cpu_s, "decode_tokens": n_dec,
                  "decode_s": decode_s, "decode_cpu_s": decode_cpu_s,
                  "peak_rss_kib": hwm}))
"#;

/// A progress bar counting benchmark runs.
fn progress_bar(runs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(runs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize)> = samples
        .iter()
        .map(|s| (s.engine.clone(), s.threads))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(engine, threads)| {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.engine == engine && s.threads == threads)
                .collect();
            Summary {
                prefill_tokens_per_s: median(mine.iter().map(|s| s.prefill_rate()).collect()),
                decode_tokens_per_s: median(mine.iter().map(|s| s.decode_rate()).collect()),
                prefill_tokens_per_cpu_s: median(
                    mine.iter().map(|s| s.prefill_cpu_rate()).collect(),
                ),
                decode_tokens_per_cpu_s: median(mine.iter().map(|s| s.decode_cpu_rate()).collect()),
                peak_rss_mib: median(
                    mine.iter()
                        .map(|s| s.peak_rss_kib as f64 / 1024.0)
                        .collect(),
                ),
                runs: mine.len(),
                engine,
                threads,
            }
        })
        .collect()
}

/// Our engines' medians over llama.cpp's at the same thread count.
#[derive(Serialize)]
struct Ratio {
    engine: String,
    threads: usize,
    prefill: f64,
    decode: f64,
    prefill_cpu: f64,
    decode_cpu: f64,
}

fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let peer = |threads| {
        summaries
            .iter()
            .find(|s| s.engine == "llama.cpp" && s.threads == threads)
    };
    summaries
        .iter()
        .filter(|s| s.engine != "llama.cpp")
        .filter_map(|s| {
            peer(s.threads).map(|p| Ratio {
                engine: s.engine.clone(),
                threads: s.threads,
                prefill: s.prefill_tokens_per_s / p.prefill_tokens_per_s,
                decode: s.decode_tokens_per_s / p.decode_tokens_per_s,
                prefill_cpu: s.prefill_tokens_per_cpu_s / p.prefill_tokens_per_cpu_s,
                decode_cpu: s.decode_tokens_per_cpu_s / p.decode_tokens_per_cpu_s,
            })
        })
        .collect()
}

fn report(args: &CpuArgs, samples: &[Sample]) -> anyhow::Result<()> {
    let summaries = summarize(samples);
    let ratios = ratios(&summaries);
    if args.json {
        let json =
            serde_json::json!({ "samples": samples, "medians": summaries, "ratios": ratios });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = String::new();
    let (p, d) = (args.prefill_tokens, args.decode_tokens);
    writeln!(table, "| engine | threads | prefill {p} tok/s | decode {d} tok/s | prefill tok/cpu-s | decode tok/cpu-s | peak RSS MiB | runs |")?;
    writeln!(table, "|---|---|---|---|---|---|---|---|")?;
    for s in &summaries {
        writeln!(
            table,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            s.engine,
            s.threads,
            s.prefill_tokens_per_s,
            s.decode_tokens_per_s,
            s.prefill_tokens_per_cpu_s,
            s.decode_tokens_per_cpu_s,
            s.peak_rss_mib,
            s.runs
        )?;
    }
    if !ratios.is_empty() {
        writeln!(
            table,
            "\n| engine / llama.cpp | threads | prefill | decode | prefill (cpu) | decode (cpu) |"
        )?;
        writeln!(table, "|---|---|---|---|---|---|")?;
        for r in &ratios {
            writeln!(
                table,
                "| {} | {} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                r.engine, r.threads, r.prefill, r.decode, r.prefill_cpu, r.decode_cpu
            )?;
        }
    }
    print!("{table}");
    println!(
        "(medians of interleaved runs, each a fresh process; tok/cpu-s = tokens per CPU second \
         of one thread, which ignores other processes' load but counts threads spinning idle)"
    );
    Ok(())
}
