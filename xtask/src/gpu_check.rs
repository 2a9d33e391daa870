//! `cargo xtask gpu-check`: the GPU parity suite and timing table for `docs/gpu.md`.
//!
//! On a machine without an NVIDIA driver it exits non-zero saying no GPU was found. On
//! a GPU machine it compiles every kernel with NVRTC for the card, then runs the parity
//! suite of `chrysalis_kernels::cuda::parity` (each kernel against the portable CPU
//! backend, the device AES-GCM against the aes-gcm crate), full-model greedy decoding on
//! GPU and CPU, and the timings; it exits non-zero if any check fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrysalis_kernels::bounce::{BounceChannel, BounceKey, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES};
use chrysalis_kernels::cuda::parity::{aes_gcm_parity, kernel_parity, ParityRow, Rng};
use chrysalis_kernels::cuda::{
    driver_present, nvrtc::Nvrtc, CudaBackend, CudaBounceDevice, CudaOptions, Transfers, SOURCES,
};
use chrysalis_kernels::{Backend, CpuBackend, CpuOptions, Isa};
use chrysalis_models::engine::Engine;
use chrysalis_models::llama::{Llama, SeqBatch};
use chrysalis_models::ModelDir;
use serde::Serialize;

use crate::util::{chrysalis_home, workspace_root};

/// Arguments of `cargo xtask gpu-check`.
#[derive(clap::Args)]
#[command(
    long_about = "Runs the GPU checks of issue 8 on this machine's NVIDIA GPU: each CUDA kernel \
against the portable CPU backend on random inputs (relative L2 <= 1e-3 in f32, <= 1e-2 in \
bf16), the GPU AES-GCM against the aes-gcm crate (including rejected tags), SmolLM2 greedy \
tokens on GPU against the CPU's for the fixture prompt, and a timing table: prefill and \
decode tokens/s (encrypted and plain transfers, and Hugging Face transformers' eager \
generate when --hf-model is given), bounce-buffer GB/s per direction.\n\n\
Without an NVIDIA driver it exits non-zero with \"no GPU found\". Exits non-zero when any \
check fails.\n\n\
Needs NVRTC: pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79\n\
Model: cargo xtask fetch-model smollm2-135m\n\n\
Example: cargo xtask gpu-check --write-docs"
)]
pub struct Args {
    /// Print one JSON object with every row, for scripts.
    #[arg(long)]
    json: bool,
    /// Which GPU to use (as in `--device cuda:N`).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Model directory; default `$CHRYSALIS_HOME/models/smollm2-135m`.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// A Hugging Face checkout of the same model (SmolLM2-135M-Instruct) for the
    /// transformers eager `generate` peer; the peer row is skipped without it.
    #[arg(long, value_name = "DIR")]
    hf_model: Option<PathBuf>,
    /// Decode steps per timing run.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Timing runs per engine, interleaved; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Replace the results section of docs/gpu.md with this run's table.
    #[arg(long)]
    write_docs: bool,
}

/// The card as `nvidia-smi` names it.
#[derive(Serialize)]
struct Card {
    name: String,
    driver: String,
    /// Compute capability as `major * 10 + minor` (90 for H100).
    sm: u32,
}

/// One timing figure.
#[derive(Serialize)]
struct Timing {
    what: String,
    value: f64,
    unit: &'static str,
    target: String,
}

#[derive(Serialize, Default)]
struct Report {
    gpu_found: bool,
    card: Option<Card>,
    kernels_compiled_for_card: bool,
    parity: Vec<Row>,
    timings: Vec<Timing>,
    message: String,
}

/// A parity row in the report.
#[derive(Serialize)]
struct Row {
    check: String,
    error: f64,
    limit: f64,
    passed: bool,
    note: String,
}

impl From<ParityRow> for Row {
    fn from(r: ParityRow) -> Self {
        Self {
            check: r.check,
            error: r.error,
            limit: r.limit,
            passed: r.passed,
            note: r.note,
        }
    }
}

/// Runs the check; errors are the exit status scripts look at.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut report = Report::default();
    if let Err(err) = driver_present() {
        report.message = format!("no GPU found: {err}");
        return finish(&args, report);
    }
    report.gpu_found = true;
    let card = query_card(args.device).context("libcuda opened, but nvidia-smi failed")?;
    let nvrtc = Nvrtc::locate()?;
    for source in SOURCES {
        nvrtc.compile_ptx(source.name, source.code, card.sm)?;
    }
    report.kernels_compiled_for_card = true;
    eprintln!(
        "{} (driver {}, sm_{}): every kernel compiles; running the parity suite",
        card.name, card.driver, card.sm
    );
    report.card = Some(card);
    let ordinal = u32::try_from(args.device).context("--device")?;
    let gpu = CudaBackend::new(ordinal)?;
    let cpu = CpuBackend::with_options(CpuOptions {
        threads: 1,
        isa: Some(Isa::Portable),
    })?;
    let mut rows = kernel_parity(&gpu, &cpu, 0x5eed);
    rows.push(argmax_row(&gpu));
    let mut device = CudaBounceDevice::new(gpu.device().clone(), MAX_CHUNK_BYTES)?;
    rows.extend(aes_gcm_parity(&mut device, 0xae5, MAX_CHUNK_BYTES));
    drop(device);
    report.timings.extend(bounce_throughput(&gpu)?);
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| chrysalis_home().join("models").join("smollm2-135m"));
    let (model_row, timings) = model_checks(&args, &model, ordinal)?;
    rows.push(model_row);
    report.timings.extend(timings);
    report.parity = rows.into_iter().map(Row::from).collect();
    let failed = report.parity.iter().filter(|r| !r.passed).count();
    report.message = if failed == 0 {
        format!("all {} parity checks passed", report.parity.len())
    } else {
        format!("{failed} of {} parity checks failed", report.parity.len())
    };
    finish(&args, report)
}

/// Device argmax against the host's on random logits with a planted tie.
fn argmax_row(gpu: &CudaBackend) -> ParityRow {
    let mut logits = Rng::new(9).vec(49152, 8.0);
    logits[31000] = 20.0;
    logits[777] = 20.0;
    let outcome = match gpu.argmax(&logits) {
        Ok(777) => Ok(()),
        Ok(other) => Err(format!(
            "device picked {other}, expected 777 (first of a tie)"
        )),
        Err(e) => Err(e.to_string()),
    };
    ParityRow::exact("argmax 49152 logits, tie goes to the lowest id", outcome)
}

/// GB/s of 256 MiB through the encrypted bounce channel, each direction, median of 3.
fn bounce_throughput(gpu: &CudaBackend) -> anyhow::Result<Vec<Timing>> {
    const BYTES: usize = 256 << 20;
    let device = CudaBounceDevice::new(gpu.device().clone(), DEFAULT_CHUNK_BYTES)?;
    let mut channel = BounceChannel::new(device, &BounceKey::generate(), DEFAULT_CHUNK_BYTES)?;
    let data = Rng::new(11).bytes(BYTES);
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let id = channel.upload(&data)?;
        up.push(BYTES as f64 / started.elapsed().as_secs_f64() / 1e9);
        let started = Instant::now();
        let back = channel.download(id, 0, BYTES)?;
        down.push(BYTES as f64 / started.elapsed().as_secs_f64() / 1e9);
        if back != data {
            bail!("bounce round trip of {BYTES} bytes returned different bytes");
        }
        channel.device_mut().free(id)?;
    }
    Ok(vec![
        timing(
            "bounce host-to-device (encrypted, 1 MiB chunks)",
            median(&mut up),
            "GB/s",
            ">= 50",
        ),
        timing(
            "bounce device-to-host (encrypted, 1 MiB chunks)",
            median(&mut down),
            "GB/s",
            ">= 50",
        ),
    ])
}

fn timing(what: &str, value: f64, unit: &'static str, target: &str) -> Timing {
    Timing {
        what: what.to_owned(),
        value,
        unit,
        target: target.to_owned(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The fixture prompt and llama.cpp's f32 greedy ids for it.
fn fixture() -> anyhow::Result<(String, Vec<u32>)> {
    let path = workspace_root().join("models/tests/data/capital_of_france.f32.json");
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let prompt = json["prompt"]
        .as_str()
        .context("fixture has no prompt")?
        .to_owned();
    let ids = serde_json::from_value(json["greedy_token_ids"].clone())
        .context("fixture greedy_token_ids")?;
    Ok((prompt, ids))
}

fn load_engine(model: &Path, backend: Arc<dyn Backend>) -> anyhow::Result<Engine> {
    let dir = ModelDir::open(model).with_context(|| {
        format!(
            "opening {} (run `cargo xtask fetch-model smollm2-135m`, or pass --model)",
            model.display()
        )
    })?;
    Ok(Engine::load(dir, backend)?)
}

fn cuda_engine(model: &Path, ordinal: u32, transfers: Transfers) -> anyhow::Result<Engine> {
    let backend = CudaBackend::with_options(CudaOptions {
        ordinal,
        transfers,
        ..CudaOptions::default()
    })?;
    load_engine(model, Arc::new(backend))
}

/// Greedy ids of the fixture prompt on `engine`, as many as the fixture has.
fn greedy(engine: &Engine, prompt: &str, count: usize) -> anyhow::Result<Vec<u32>> {
    let ids = engine.encode_prompt(prompt)?;
    let options = chrysalis_models::engine::GenerateOptions {
        max_tokens: count,
        sampling: chrysalis_models::sampling::SamplingParams::GREEDY,
    };
    Ok(engine.generate(&ids, &options, |_| {})?.token_ids)
}

/// Greedy tokens GPU vs CPU (and vs llama.cpp's fixture), then prefill/decode timings
/// with encrypted and plain transfers, interleaved, and the transformers peer.
fn model_checks(
    args: &Args,
    model: &Path,
    ordinal: u32,
) -> anyhow::Result<(ParityRow, Vec<Timing>)> {
    let (prompt, fixture_ids) = fixture()?;
    let cpu = load_engine(model, Arc::new(CpuBackend::new()))?;
    let encrypted = cuda_engine(model, ordinal, Transfers::Encrypted)?;
    let plain = cuda_engine(model, ordinal, Transfers::DangerousPlainForBenchmarks)?;
    let cpu_ids = greedy(&cpu, &prompt, fixture_ids.len())?;
    let gpu_ids = greedy(&encrypted, &prompt, fixture_ids.len())?;
    let outcome = if gpu_ids == cpu_ids {
        Ok(())
    } else {
        Err(format!("GPU {gpu_ids:?}, CPU {cpu_ids:?}"))
    };
    let mut row = ParityRow::exact(
        "SmolLM2-135M greedy tokens GPU == CPU, fixture prompt",
        outcome,
    );
    if gpu_ids != fixture_ids {
        row.note = format!("{} (llama.cpp f32 fixture: {fixture_ids:?})", row.note)
            .trim()
            .to_owned();
    }
    let prompt_ids = encrypted.encode_prompt(&prompt)?;
    let (mut enc_prefill, mut enc_decode, mut plain_decode) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs.max(1) {
        eprintln!("timing run {} of {}", run + 1, args.runs.max(1));
        let (p, d) = time_forward(encrypted.model(), &prompt_ids, args.decode_tokens)?;
        enc_prefill.push(p);
        enc_decode.push(d);
        plain_decode.push(time_forward(plain.model(), &prompt_ids, args.decode_tokens)?.1);
    }
    let (enc, pl) = (median(&mut enc_decode), median(&mut plain_decode));
    let mut timings = vec![
        timing(
            "prefill, encrypted transfers",
            median(&mut enc_prefill),
            "tok/s",
            "-",
        ),
        timing(
            "decode, encrypted transfers",
            enc,
            "tok/s",
            ">= 2x transformers",
        ),
        timing("decode, plain transfers", pl, "tok/s", "-"),
        timing(
            "decode overhead of encryption",
            (pl / enc - 1.0) * 100.0,
            "%",
            "< 3",
        ),
    ];
    if let Some(hf) = &args.hf_model {
        let peer = hf_peer(hf, &prompt, args.decode_tokens)?;
        timings.push(timing(
            "transformers eager generate decode",
            peer,
            "tok/s",
            "-",
        ));
        timings.push(timing(
            "decode speed-up over transformers",
            enc / peer,
            "x",
            ">= 2",
        ));
    }
    Ok((row, timings))
}

/// Prefill tokens/s of `prompt` and decode tokens/s of `steps` single-token steps.
fn time_forward(llama: &Llama, prompt: &[u32], steps: usize) -> anyhow::Result<(f64, f64)> {
    let mut cache = llama.new_cache_with_len(prompt.len() + steps + 1);
    let started = Instant::now();
    let logits = llama.forward(&mut [SeqBatch {
        cache: &mut cache,
        tokens: prompt,
    }])?;
    let prefill = prompt.len() as f64 / started.elapsed().as_secs_f64();
    let mut token = argmax(logits.row(0));
    let started = Instant::now();
    for _ in 0..steps {
        let logits = llama.forward(&mut [SeqBatch {
            cache: &mut cache,
            tokens: &[token],
        }])?;
        token = argmax(logits.row(0));
    }
    Ok((prefill, steps as f64 / started.elapsed().as_secs_f64()))
}

fn argmax(logits: &[f32]) -> u32 {
    let best = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        });
    u32::try_from(best.0).unwrap_or(0)
}

/// Decode tokens/s of transformers' eager `generate` on the GPU: the time of
/// `steps + 1` new tokens minus the time of 1, over `steps`.
fn hf_peer(dir: &Path, prompt: &str, steps: usize) -> anyhow::Result<f64> {
    const SCRIPT: &str = r#"
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").cuda().eval()
ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids.cuda()
def timed(n):
    torch.cuda.synchronize(); t = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize(); return time.perf_counter() - t
timed(4)
runs = sorted((timed(steps + 1) - timed(1)) for _ in range(3))
print(json.dumps({"decode_tok_s": steps / runs[1]}))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dir)
        .arg(prompt)
        .arg(steps.to_string())
        .output()
        .context("running python3 for the transformers peer")?;
    if !out.status.success() {
        bail!(
            "transformers peer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("peer printed {line:?}"))?;
    value["decode_tok_s"]
        .as_f64()
        .context("peer gave no decode_tok_s")
}

/// Prints the report (JSON or a table), writes docs/gpu.md when asked, and fails unless
/// every check ran and passed.
fn finish(args: &Args, report: Report) -> anyhow::Result<()> {
    let table = markdown(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.card.is_some() {
        println!("{table}");
    }
    let all_passed = !report.parity.is_empty() && report.parity.iter().all(|r| r.passed);
    if args.write_docs && report.card.is_some() {
        write_docs(&table)?;
    }
    if all_passed {
        Ok(())
    } else {
        bail!(report.message)
    }
}

/// The results as the markdown table `docs/gpu.md` holds.
fn markdown(report: &Report) -> String {
    let mut out = match &report.card {
        Some(card) => format!(
            "Card: {}. Driver: {}. sm_{}.\n\n",
            card.name, card.driver, card.sm
        ),
        None => format!("{}\n\n", report.message),
    };
    out.push_str("| check | error | limit | result |\n|---|---|---|---|\n");
    for r in &report.parity {
        let verdict = if r.passed { "pass" } else { "FAIL" };
        out.push_str(&format!(
            "| {} | {:.2e} | {:.0e} | {verdict} {} |\n",
            r.check, r.error, r.limit, r.note
        ));
    }
    out.push_str("\n| timing | value | target |\n|---|---|---|\n");
    for t in &report.timings {
        out.push_str(&format!(
            "| {} | {:.2} {} | {} |\n",
            t.what, t.value, t.unit, t.target
        ));
    }
    out
}

const DOCS_BEGIN: &str = "<!-- gpu-check results: begin -->";
const DOCS_END: &str = "<!-- gpu-check results: end -->";

/// Replaces the text between the result markers of docs/gpu.md.
fn write_docs(table: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("docs/gpu.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(begin), Some(end)) = (text.find(DOCS_BEGIN), text.find(DOCS_END)) else {
        bail!(
            "{} lacks the {DOCS_BEGIN} / {DOCS_END} markers",
            path.display()
        );
    };
    let updated = format!("{}{DOCS_BEGIN}\n{table}\n{}", &text[..begin], &text[end..]);
    std::fs::write(&path, updated)?;
    eprintln!("wrote the results to {}", path.display());
    Ok(())
}

/// Name, driver and compute capability of GPU `index` from `nvidia-smi`.
fn query_card(index: usize) -> anyhow::Result<Card> {
    let out = Command::new("nvidia-smi")
        .args([
            &format!("--id={index}"),
            "--query-gpu=name,driver_version,compute_cap",
            "--format=csv,noheader",
        ])
        .output()
        .context("could not run nvidia-smi")?;
    if !out.status.success() {
        bail!(
            "nvidia-smi: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [name, driver, cap] = fields.as_slice() else {
        bail!("nvidia-smi printed {line:?}, expected name, driver, compute capability");
    };
    let (major, minor) = cap
        .split_once('.')
        .with_context(|| format!("compute capability {cap:?}, expected MAJOR.MINOR"))?;
    Ok(Card {
        name: (*name).to_owned(),
        driver: (*driver).to_owned(),
        sm: major.parse::<u32>()? * 10 + minor.parse::<u32>()?,
    })
}
