//! The official `openai` Python package against `chrysalis serve`, the OpenAI-compatible
//! gateway, in front of the real shim and enclave: `models.list()`, a non-streaming and
//! a streaming chat completion (`client/tests/openai_client.py`), content and usage
//! checked here.
//!
//! Needs the model (`cargo xtask fetch-model smollm2-135m`) and the package
//! (`python3 -m pip install -r .ci/requirements.txt`, which pins openai==3.57.0).

mod common;

use std::path::Path;
use std::process::Command;

use common::{binary, start_until, Stack, StackOptions, PARIS, PARIS_TEXT};

/// Fails with the install command when Python or the package is missing.
fn require_openai_package() {
    let found = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the `openai` Python package is not importable by python3: install it with \
         `python3 -m pip install -r .ci/requirements.txt` (openai==3.57.0)"
    );
}

#[test]
fn official_openai_client_chats_through_the_gateway() {
    require_openai_package();
    let stack = Stack::start(StackOptions::default());
    let mut gateway = Command::new(binary("chrysalis"));
    gateway.args([
        "serve",
        "--url",
        &stack.url,
        "--listen",
        "127.0.0.1:0",
        "--allow-simulated",
    ]);
    let (_gateway, base_url) = start_until(gateway, "OpenAI-compatible API on ", None);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&base_url)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "openai_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("script output");
    assert!(
        v["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|id| id == "chrysalis")),
        "{v}"
    );

    let c = &v["completion"];
    assert_eq!(c["content"], PARIS_TEXT, "{v}");
    assert_eq!(c["role"], "assistant");
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["system_fingerprint"], "INSECURE-simulated-evidence");
    assert_eq!(c["insecure_header"], "true");
    let usage = &c["usage"];
    assert_eq!(usage["completion_tokens"], PARIS.len(), "{v}");
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt > 0, "{v}");
    assert_eq!(usage["total_tokens"], prompt + PARIS.len() as u64);

    // The same greedy question streamed: same text, same metered usage, several chunks.
    let s = &v["stream"];
    assert_eq!(s["content"], PARIS_TEXT, "{v}");
    assert_eq!(s["finish_reason"], "stop");
    assert!(s["chunks"].as_u64().is_some_and(|n| n >= 3), "{v}");
    assert_eq!(
        s["usage"]["completion_tokens"], usage["completion_tokens"],
        "{v}"
    );
    assert_eq!(s["usage"]["prompt_tokens"], usage["prompt_tokens"], "{v}");
}
