//! The second, independent client (`client/interop/chrysalis_client.py`, Python with
//! only the `cryptography` package, written from `docs/protocol.md`) chats with the
//! real enclave (dev mode) through the real shim: evidence with a nonce, REPORT_DATA,
//! the v2 handshake, a streamed answer and a verified receipt.
//!
//! Needs the model (`cargo xtask fetch-model smollm2-135m`) and Python's
//! `cryptography` 50 or later (`python3 -m pip install -r .ci/requirements.txt`). The
//! interpreter is `python3`, or `$CHRYSALIS_PYTHON` when set. A missing interpreter or
//! package fails the test; it is never skipped.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Stack, StackOptions, PARIS, PARIS_TEXT, QUESTION};

fn python() -> String {
    std::env::var("CHRYSALIS_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails with the install command when Python or ML-KEM in `cryptography` is missing.
fn require_cryptography_with_mlkem() {
    let probe = Command::new(python())
        .args([
            "-c",
            "from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey; \
             MLKEM768PrivateKey.generate()",
        ])
        .output();
    let found = probe.as_ref().is_ok_and(|o| o.status.success());
    let why = match &probe {
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => format!("{} could not run: {e}", python()),
    };
    assert!(
        found,
        "{} cannot use ML-KEM-768 from the `cryptography` package (needs 50 or later): \
         install it with `python3 -m pip install -r .ci/requirements.txt`\n{why}",
        python()
    );
}

#[test]
fn python_client_chats_through_the_shim() {
    require_cryptography_with_mlkem();
    let stack = Stack::start(StackOptions::default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/chrysalis_client.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--url", &stack.url, "--allow-simulated", "--json"])
        .args(["--max-tokens", "16", QUESTION])
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chrysalis_client.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.starts_with("INSECURE: simulated evidence"),
        "simulated evidence must be flagged INSECURE first:\n{stdout}"
    );
    assert!(
        stdout.contains("(protocol v2, X25519 + ML-KEM-768)"),
        "{stdout}"
    );
    let summary = stdout.lines().last().expect("a JSON summary line");
    let v: serde_json::Value = serde_json::from_str(summary).expect("JSON summary");
    let answer = v["answer"].as_str().expect("an answer");
    assert!(!answer.is_empty(), "{v}");
    // Greedy decoding of the shared fixture question: the Rust client's answer.
    assert_eq!(answer, PARIS_TEXT, "{v}");
    let ids: Vec<u64> = v["token_ids"]
        .as_array()
        .expect("token ids")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(ids, PARIS.map(u64::from), "{v}");
    assert_eq!(v["receipt_verified"], true, "{v}");
    assert_eq!(v["insecure"], true, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], PARIS.len(), "{v}");
    assert_eq!(v["finish_reason"], "Stop", "{v}");
}
