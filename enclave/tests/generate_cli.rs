//! `chrysalis-enclave generate` as a user runs it, on the real SmolLM2-135M-Instruct
//! model (`cargo xtask fetch-model smollm2-135m` first; `$CHRYSALIS_HOME` picks the
//! cache directory, default `~/.cache/chrysalis`).

use std::path::PathBuf;
use std::process::Command;

const MODEL: &str = "smollm2-135m";

/// The fixture's rendered prompt and greedy reference, shared with the models crate.
fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/data/capital_of_france.f32.json");
    serde_json::from_slice(&std::fs::read(&path).expect("fixture readable")).expect("JSON")
}

fn require_model() {
    let home = std::env::var_os("CHRYSALIS_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/chrysalis"),
        PathBuf::from,
    );
    let dir = home.join("models").join(MODEL);
    assert!(
        dir.is_dir(),
        "model directory {} is missing: run `cargo xtask fetch-model {MODEL}` first",
        dir.display()
    );
}

fn generate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis-enclave"))
        .arg("generate")
        .args(args)
        .output()
        .expect("chrysalis-enclave runs")
}

#[test]
fn json_output_of_a_greedy_run_on_the_fixture_prompt() {
    require_model();
    let fixture = fixture();
    let prompt_file = std::env::temp_dir().join(format!(
        "chrysalis-generate-prompt-{}.txt",
        std::process::id()
    ));
    std::fs::write(&prompt_file, fixture["prompt"].as_str().unwrap()).unwrap();
    let out = generate(&[
        "--model",
        MODEL,
        "--prompt-file",
        prompt_file.to_str().unwrap(),
        "--max-tokens",
        "32",
        "--greedy",
        "--threads",
        "1",
        "--json",
    ]);
    let _ = std::fs::remove_file(&prompt_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(report["prompt_token_ids"], fixture["prompt_token_ids"]);
    assert_eq!(report["token_ids"], fixture["greedy_token_ids"]);
    assert_eq!(report["text"], "The capital of France is Paris.");
    assert_eq!(report["stop_reason"], "stop_token");
    let top5 = report["first_step_top5"].as_array().unwrap();
    assert_eq!(top5.len(), 5);
    assert_eq!(top5[0]["id"], 504);
    assert_eq!(top5[0]["token"], "The");
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(report["timings"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(report["timings"]["decode_tokens"], 7);
}

#[test]
fn chat_streams_text_and_sampling_is_seeded() {
    require_model();
    let run = || {
        generate(&[
            "--model",
            MODEL,
            "--chat",
            "Name a colour.",
            "--max-tokens",
            "8",
            "--seed",
            "3",
            "--temperature",
            "1.0",
            "--threads",
            "1",
        ])
    };
    let (a, b) = (run(), run());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout, "same seed, same text");
    assert!(String::from_utf8_lossy(&a.stderr).contains("tokens/s"));
}

#[test]
fn a_missing_model_and_bad_flags_fail_with_a_hint() {
    let out = generate(&["--model", "no-such-model-here", "--chat", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cargo xtask fetch-model no-such-model-here"),
        "{err}"
    );
    let out = generate(&["--model", MODEL, "--chat", "hi", "--greedy", "--seed", "1"]);
    assert!(!out.status.success(), "--greedy conflicts with --seed");
    let out = generate(&["--model", MODEL]);
    assert!(!out.status.success(), "a prompt is required");
}

#[test]
fn device_flag_names_what_it_accepts_and_cuda_fails_cleanly_without_a_driver() {
    let out = generate(&["--model", MODEL, "--chat", "hi", "--device", "gpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected `cpu`, `cuda` or `cuda:N`"), "{err}");
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        return; // A GPU host: `cargo xtask gpu-check` covers the CUDA path.
    }
    let out = generate(&["--model", MODEL, "--chat", "hi", "--device", "cuda:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CUDA driver"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
