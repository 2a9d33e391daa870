//! `chrysalis-enclave generate`: run one prompt through a model on this machine.
//!
//! For providers checking a model directory and for tests: it loads and verifies the
//! model, runs the prompt (an already rendered prompt, or a chat message put through
//! the model's own template), streams the reply to stdout, and with `--json` prints
//! one JSON object with the token ids, the first step's top logits and the timings.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrysalis_kernels::cuda::DeviceSpec;
use chrysalis_models::chat::ChatMessage;
use chrysalis_models::engine::{Engine, GenerateOptions, Generation, StopReason};
use chrysalis_models::sampling::SamplingParams;
use chrysalis_models::ModelDir;
use serde_json::json;

/// Arguments of `chrysalis-enclave generate`.
#[derive(clap::Args, Debug)]
#[command(
    about = "Generate text from a prompt with a local model (CPU)",
    long_about = "Generate text from a prompt with a local model on the CPU.\n\n\
        The model is a directory written by `cargo xtask fetch-model NAME`; it is \
        verified against its manifest's root hash before use. Give either a rendered \
        prompt (--prompt-file, special tokens such as <|im_start|> are parsed) or a \
        chat message (--chat, put through the model's own chat template).\n\n\
        Sampling defaults to llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, \
        min-p 0.05); --greedy always takes the most likely token.",
    after_help = "Examples:\n  \
        chrysalis-enclave generate --model smollm2-135m --chat 'What is the capital of France?' --greedy\n  \
        chrysalis-enclave generate --model ./my-model --prompt-file prompt.txt --max-tokens 64 --seed 1 --json"
)]
pub struct GenerateArgs {
    /// A model name under $CHRYSALIS_HOME/models (default ~/.cache/chrysalis/models),
    /// or a path to a model directory.
    #[arg(long, value_name = "NAME_OR_DIR")]
    pub model: String,

    /// A file holding an already rendered prompt (template applied, special tokens
    /// written out).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "chat",
        conflicts_with = "chat"
    )]
    pub prompt_file: Option<PathBuf>,

    /// A user message, rendered with the model's chat template.
    #[arg(long, value_name = "TEXT")]
    pub chat: Option<String>,

    /// A system message to put before --chat (otherwise the template's default).
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,

    /// Most tokens to generate (a stop token counts).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_tokens: usize,

    /// Always take the most likely token (no randomness).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "min_p", "seed"])]
    pub greedy: bool,

    /// Softmax temperature; 0 is the same as --greedy.
    #[arg(long, value_name = "T", default_value_t = SamplingParams::default().temperature)]
    pub temperature: f32,

    /// Nucleus sampling: keep the most likely tokens until their mass reaches P.
    #[arg(long, value_name = "P", default_value_t = SamplingParams::default().top_p)]
    pub top_p: f32,

    /// Keep only the K most likely tokens (0: all).
    #[arg(long, value_name = "K", default_value_t = SamplingParams::default().top_k)]
    pub top_k: usize,

    /// Drop tokens less likely than M times the most likely one.
    #[arg(long, value_name = "M", default_value_t = SamplingParams::default().min_p)]
    pub min_p: f32,

    /// Penalise tokens seen in the last 64 (1: off; 1.1 is a common choice).
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    pub repeat_penalty: f32,

    /// Seed of the sampler, for reproducible output (default: random, printed).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// CPU threads for the kernels (0: one per CPU).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,

    /// Where the kernels run: `cpu`, or `cuda[:N]` for NVIDIA GPU N (fails with "no CUDA
    /// driver" on a machine without one).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,

    /// Print one JSON object (ids, text, top logits, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

impl GenerateArgs {
    /// The sampling parameters these flags ask for.
    pub fn sampling(&self, seed: u64) -> SamplingParams {
        if self.greedy {
            return SamplingParams {
                repeat_penalty: self.repeat_penalty,
                ..SamplingParams::GREEDY
            };
        }
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed,
            ..SamplingParams::default()
        }
    }
}

/// Where models live: `$CHRYSALIS_HOME/models`, by default `~/.cache/chrysalis/models`.
pub fn models_home() -> PathBuf {
    let home = std::env::var_os("CHRYSALIS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let user_home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            user_home.join(".cache").join("chrysalis")
        });
    home.join("models")
}

/// Resolves `--model`: an existing directory or anything that looks like a path is
/// taken as is; a bare name is looked up under [`models_home`].
pub fn resolve_model(name_or_dir: &str) -> PathBuf {
    let as_path = Path::new(name_or_dir);
    if as_path.is_dir() || as_path.components().count() > 1 {
        as_path.to_path_buf()
    } else {
        models_home().join(name_or_dir)
    }
}

/// Opens and verifies a model directory, with a hint to fetch it when it is missing.
pub fn open_model(name_or_dir: &str) -> anyhow::Result<ModelDir> {
    open_model_expecting(name_or_dir, None)
}

/// Like [`open_model`], and when `expected_root` is given the directory's Merkle root
/// must equal it: in the guest image that root comes from the measured kernel command
/// line, so a model disk the host swapped is refused before any weight is used.
pub fn open_model_expecting(
    name_or_dir: &str,
    expected_root: Option<[u8; 32]>,
) -> anyhow::Result<ModelDir> {
    let path = resolve_model(name_or_dir);
    if !path.is_dir() {
        bail!(
            "model {name_or_dir:?} not found at {}: run `cargo xtask fetch-model {name_or_dir}` \
             (or pass a model directory)",
            path.display()
        );
    }
    match expected_root {
        Some(root) => ModelDir::open_expecting(&path, root),
        None => ModelDir::open(&path),
    }
    .with_context(|| format!("loading the model at {}", path.display()))
}

/// Runs the command.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let backend = args
        .device
        .open_with(args.threads)
        .with_context(|| format!("starting the {} backend", args.device))?;
    let backend_name = backend.name();
    // Kernel threads on the CPU (0 asks for one per CPU, as the CPU backend does); a GPU
    // backend reports 0.
    let threads = match (args.device, args.threads) {
        (DeviceSpec::Cpu, 0) => std::thread::available_parallelism().map_or(1, usize::from),
        (DeviceSpec::Cpu, n) => n,
        (DeviceSpec::Cuda(_), _) => 0,
    };
    let load_started = Instant::now();
    let dir = open_model(&args.model)?;
    let engine = Engine::load(dir, Arc::from(backend)).context("building the model")?;
    let load_ms = load_started.elapsed().as_secs_f64() * 1e3;
    if !args.json {
        eprintln!(
            "loaded {} (root {}) in {load_ms:.0} ms; {backend_name}, {threads} threads",
            engine.name(),
            hex::encode(engine.root())
        );
    }

    let prompt = prompt_tokens(&engine, args)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: args.sampling(seed),
    };
    let mut stdout = std::io::stdout().lock();
    let generation = engine.generate(&prompt, &options, |piece| {
        if !args.json {
            // A closed stdout (a pipe to `head`) must not stop generation with a panic.
            let _ = stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush());
        }
    })?;

    if args.json {
        let report = json_report(
            &engine,
            &generation,
            &options,
            backend_name,
            threads,
            load_ms,
        );
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(stdout)?;
        eprintln!("{}", timing_line(&generation));
    }
    Ok(())
}

/// The prompt's tokens from `--prompt-file` or `--chat`.
fn prompt_tokens(engine: &Engine, args: &GenerateArgs) -> anyhow::Result<Vec<u32>> {
    if let Some(path) = &args.prompt_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt file {}", path.display()))?;
        return Ok(engine.encode_prompt(&text)?);
    }
    let Some(chat) = &args.chat else {
        bail!("expected --prompt-file FILE or --chat TEXT");
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.as_str()));
    }
    messages.push(ChatMessage::user(chat.as_str()));
    Ok(engine.encode_chat(&messages)?)
}

/// A seed for runs that did not ask for one; printed so the run can be repeated.
fn random_seed() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

fn timing_line(g: &Generation) -> String {
    format!(
        "prefill: {} tokens in {:.1} ms ({:.1} tokens/s); decode: {} tokens in {:.1} ms ({:.1} tokens/s); stop: {}",
        g.prompt_token_ids.len(),
        g.prefill_time.as_secs_f64() * 1e3,
        g.prefill_tokens_per_s(),
        g.decode_steps,
        g.decode_time.as_secs_f64() * 1e3,
        g.decode_tokens_per_s(),
        stop_reason_name(g.stop_reason),
    )
}

fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::StopToken => "stop_token",
        StopReason::MaxTokens => "max_tokens",
    }
}

fn json_report(
    engine: &Engine,
    g: &Generation,
    options: &GenerateOptions,
    backend: &str,
    threads: usize,
    load_ms: f64,
) -> serde_json::Value {
    let s = &options.sampling;
    let top5: Vec<_> = g
        .first_top5
        .iter()
        .map(|t| json!({ "id": t.id, "token": t.token, "logit": t.logit }))
        .collect();
    json!({
        "model": engine.name(),
        "model_root": hex::encode(engine.root()),
        "backend": backend,
        "threads": threads,
        "sampling": {
            "greedy": s.is_greedy(),
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "repeat_penalty": s.repeat_penalty,
            "seed": s.seed,
        },
        "prompt_token_ids": g.prompt_token_ids,
        "token_ids": g.token_ids,
        "text": g.text,
        "stop_reason": stop_reason_name(g.stop_reason),
        "first_step_top5": top5,
        "timings": {
            "load_ms": load_ms,
            "prefill_tokens": g.prompt_token_ids.len(),
            "prefill_ms": g.prefill_time.as_secs_f64() * 1e3,
            "prefill_tokens_per_s": g.prefill_tokens_per_s(),
            "decode_tokens": g.decode_steps,
            "decode_ms": g.decode_time.as_secs_f64() * 1e3,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        },
    })
}
