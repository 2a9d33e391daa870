//! `chrysalis-enclave serve --model-root`: in the guest, `/init` passes the root from the
//! measured kernel command line, so a model disk the host swapped must be refused before
//! the server listens. Needs the real model (`cargo xtask fetch-model smollm2-135m`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

const MODEL: &str = "smollm2-135m";

fn installed_root() -> String {
    let home = std::env::var_os("CHRYSALIS_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/chrysalis"),
        PathBuf::from,
    );
    let manifest = home.join("models").join(MODEL).join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{} unreadable ({e}): run `cargo xtask fetch-model {MODEL}` first",
            manifest.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    json["root"]
        .as_str()
        .expect("manifest has a root")
        .to_owned()
}

fn serve(model_root: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis-enclave"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "tcp:127.0.0.1:0",
            "--model",
            MODEL,
        ])
        .args(["--model-root", model_root])
        .stdin(Stdio::null())
        .output()
        .expect("chrysalis-enclave runs")
}

#[test]
fn a_model_whose_root_differs_from_the_measured_one_is_refused() {
    let mut other = installed_root().into_bytes();
    // Change one hex digit: the root of some other model.
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    let out = serve(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "served a model with the wrong root: {stdout}"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains(&other),
        "the error names the expected root: {stderr}"
    );
}

#[test]
fn a_model_root_that_is_not_64_hex_digits_is_a_usage_error() {
    let out = serve("abc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("64 hex digits"), "{stderr}");
}
