//! Continuous batching must not change a sequence's logits by a single bit: the model's
//! forward pass hands the backend each sequence's token count (`Backend::matmul_seqs`),
//! so a prompt runs the blocked product and a decode step the per-token one whether the
//! sequence runs alone or beside others of any length. Greedy tokens then cannot depend
//! on who else is being served.
//!
//! Needs the model directory: `cargo xtask fetch-model smollm2-135m` (it lands under
//! `$CHRYSALIS_HOME/models/smollm2-135m`, by default `~/.cache/chrysalis`).

use std::path::PathBuf;
use std::sync::Arc;

use chrysalis_kernels::{CpuBackend, CpuOptions, BLOCKED_MIN_SEQ_TOKENS};
use chrysalis_models::engine::Engine;
use chrysalis_models::kv_cache::KvCache;
use chrysalis_models::llama::{Llama, SeqBatch};
use chrysalis_models::sampling::argmax;
use chrysalis_models::ModelDir;

const MODEL: &str = "smollm2-135m";

fn model_path() -> PathBuf {
    let home = std::env::var_os("CHRYSALIS_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/chrysalis"),
        PathBuf::from,
    );
    home.join("models").join(MODEL)
}

/// The engine on a backend with `threads` threads.
fn engine(threads: usize) -> Engine {
    let path = model_path();
    let dir = ModelDir::open(&path).unwrap_or_else(|e| {
        panic!(
            "model directory {}: {e} (run `cargo xtask fetch-model {MODEL}` first)",
            path.display()
        )
    });
    let options = CpuOptions { threads, isa: None };
    let backend = CpuBackend::with_options(options).expect("backend starts");
    Engine::load(dir, Arc::new(backend)).expect("engine loads")
}

/// Prompts of different lengths: two long enough for the blocked product, one below it.
fn prompts(e: &Engine) -> Vec<Vec<u32>> {
    let chat = |text: &str| {
        e.encode_prompt(&format!(
            "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
        ))
        .expect("prompt encodes")
    };
    let short = vec![504, 3575];
    assert!(short.len() < BLOCKED_MIN_SEQ_TOKENS);
    vec![
        chat("What is the capital of France?"),
        chat("Name three colours and say why the sky is blue, briefly."),
        short,
    ]
}

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

/// One step of the sequences in `running` (indices into `caches`/`next`); returns
/// each one's logits in order.
fn step(
    model: &Llama,
    caches: &mut [KvCache],
    next: &[Vec<u32>],
    running: &[usize],
) -> Vec<Vec<f32>> {
    let mut chosen: Vec<(usize, &mut KvCache)> = caches
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| running.contains(i))
        .collect();
    chosen.sort_by_key(|(i, _)| running.iter().position(|r| r == i));
    let mut batch: Vec<SeqBatch<'_>> = chosen
        .into_iter()
        .map(|(i, cache)| SeqBatch {
            cache,
            tokens: &next[i],
        })
        .collect();
    model.forward(&mut batch).expect("step runs").into_rows()
}

/// Each prompt alone, then `decode` greedy single-token steps: the logits' bits.
fn alone(model: &Llama, prompt: &[u32], decode: usize) -> Vec<Vec<u32>> {
    let mut caches = vec![model.new_cache()];
    let mut next = vec![prompt.to_vec()];
    let mut out = Vec::new();
    for _ in 0..=decode {
        let logits = step(model, &mut caches, &next, &[0]).remove(0);
        next[0] = vec![argmax(&logits).expect("logits")];
        out.push(bits(&logits));
    }
    out
}

/// Sequences join a running batch in another order and at other steps; every
/// sequence's logits at every step are bitwise those of the sequence alone.
fn check_batched_equals_alone(threads: usize) {
    let e = engine(threads);
    let model = e.model();
    let prompts = prompts(&e);
    let decode = 3;
    let expected: Vec<Vec<Vec<u32>>> = prompts.iter().map(|p| alone(model, p, decode)).collect();

    // Step by step, the sequences that run; a sequence's first step is its prompt.
    let schedule: [&[usize]; 6] = [&[1], &[2, 1], &[1, 0, 2], &[0, 2, 1], &[0, 2], &[0]];
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut next = prompts.clone();
    let mut done = [0usize; 3];
    for running in schedule {
        let logits = step(model, &mut caches, &next, running);
        for (&s, row) in running.iter().zip(&logits) {
            assert_eq!(
                bits(row),
                expected[s][done[s]],
                "x{threads}: sequence {s} at step {} in a step of {running:?}",
                done[s]
            );
            next[s] = vec![argmax(row).expect("logits")];
            done[s] += 1;
        }
    }
    assert_eq!(done, [decode + 1; 3]);
}

#[test]
fn batched_logits_are_bitwise_those_of_each_sequence_alone() {
    check_batched_equals_alone(1);
}

#[test]
fn batched_logits_are_bitwise_those_of_each_sequence_alone_on_two_threads() {
    check_batched_equals_alone(2);
}

/// The comparison can fail: the same prompt fed as one prompt step and as single-token
/// steps (the other product path) gives different bits, though the same greedy token.
#[test]
fn a_prompt_and_the_same_tokens_one_by_one_differ_in_bits() {
    let e = engine(1);
    let model = e.model();
    let prompt = &prompts(&e)[0];
    let whole = alone(model, prompt, 0).remove(0);
    let mut caches = vec![model.new_cache()];
    let mut logits = Vec::new();
    for &token in prompt {
        logits = step(model, &mut caches, &[vec![token]], &[0]).remove(0);
    }
    assert_ne!(bits(&logits), whole);
    let whole: Vec<f32> = whole.into_iter().map(f32::from_bits).collect();
    assert_eq!(argmax(&logits), argmax(&whole));
    assert!(model.backend().name().starts_with("cpu"));
}
