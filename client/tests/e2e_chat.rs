//! End to end on one machine, with the real model: enclave (dev mode) and shim as
//! processes, the client library and CLI in front of them.
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`. The enclave and shim
//! binaries are built on demand in the same profile as this test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrysalis_client::attest::TrustOptions;
use chrysalis_client::session::{Session, SessionError};
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::{ChatMessage, InferenceRequest, Prompt, Role, SamplingParams};

const MODEL: &str = "smollm2-135m";
const QUESTION: &str = "What is the capital of France?";
/// Greedy ids of "The capital of France is Paris.<|im_end|>" (shared fixture).
const PARIS: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target profile directory")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "chrysalis-enclave",
                "-p",
                "chrysalis-shim",
                "-p",
                "chrysalis-client",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    }
    path
}

fn model_dir() -> PathBuf {
    let home = std::env::var_os("CHRYSALIS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/chrysalis")
        });
    let dir = home.join("models").join(MODEL);
    assert!(
        dir.join("manifest.json").is_file(),
        "model missing at {}: run `cargo xtask fetch-model {MODEL}`",
        dir.display()
    );
    dir
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a command and waits for "listening on ADDR" on its stdout.
fn start(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("listening on ") {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("service ready line");
    (Proc(child), addr)
}

struct Stack {
    _shim: Proc,
    _enclave: Proc,
    url: String,
}

fn stack(extra: &[&str]) -> Stack {
    let model = model_dir();
    let mut enclave = Command::new(binary("chrysalis-enclave"));
    enclave
        .args(["serve", "--listen", "tcp:127.0.0.1:0", "--dev", "--model"])
        .arg(&model)
        .args(extra);
    let (enclave, enclave_addr) = start(enclave);
    let mut shim = Command::new(binary("chrysalis-shim"));
    shim.args([
        "serve",
        "--enclave",
        &enclave_addr,
        "--listen",
        "127.0.0.1:0",
    ]);
    let (shim, url) = start(shim);
    Stack {
        _shim: shim,
        _enclave: enclave,
        url,
    }
}

fn chat_request(question: &str, max_tokens: u32) -> InferenceRequest {
    InferenceRequest {
        request_id: 7,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: question.to_owned(),
        }]),
        max_tokens,
        sampling: SamplingParams::GREEDY,
        stream: true,
    }
}

fn insecure_trust() -> TrustOptions {
    TrustOptions {
        allow_simulated: true,
        manifests: None,
    }
}

#[test]
fn capital_of_france_through_shim_equals_generate() {
    let stack = stack(&[]);
    // The CLI, as a user runs it.
    let out = Command::new(binary("chrysalis"))
        .args([
            "chat",
            "--url",
            &stack.url,
            "--allow-simulated",
            "--json",
            QUESTION,
        ])
        .output()
        .expect("run chrysalis chat");
    assert!(
        out.status.success(),
        "chat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("chat --json output");
    let ids: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).expect("token ids");
    assert_eq!(ids, PARIS, "sealed path: {v}");
    assert_eq!(v["insecure"], true);
    assert_eq!(v["usage"]["completion_tokens"], PARIS.len());

    // The same question through `chrysalis-enclave generate` on the same machine.
    let gen = Command::new(binary("chrysalis-enclave"))
        .args([
            "generate",
            "--greedy",
            "--max-tokens",
            "32",
            "--json",
            "--chat",
            QUESTION,
            "--model",
        ])
        .arg(model_dir())
        .output()
        .expect("run generate");
    assert!(
        gen.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&gen.stdout).expect("generate --json output");
    let gen_ids: Vec<u32> =
        serde_json::from_value(g["token_ids"].clone()).expect("generate token ids");
    assert_eq!(ids, gen_ids);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        g["prompt_token_ids"].as_array().map(Vec::len).unwrap_or(0)
    );
}

#[test]
fn simulated_evidence_is_refused_without_the_flag() {
    let stack = stack(&[]);
    let out = Command::new(binary("chrysalis"))
        .args(["verify", "--url", &stack.url])
        .output()
        .expect("run chrysalis verify");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIMULATED") && err.contains("--allow-simulated"),
        "{err}"
    );
    let ok = Command::new(binary("chrysalis"))
        .args(["verify", "--url", &stack.url, "--allow-simulated", "--json"])
        .output()
        .expect("run chrysalis verify");
    assert!(ok.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("verify --json");
    assert_eq!(v["insecure"], true);
    assert_eq!(v["kind"], "simulated");
}

#[test]
fn concurrent_sessions_match_single_stream() {
    let stack = stack(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = Endpoint::new(&stack.url, None).expect("endpoint");
    let questions: Vec<String> = (0..32)
        .map(|i| match i % 4 {
            0 => QUESTION.to_owned(),
            1 => format!("Count from {i} to {}.", i + 3),
            2 => format!("Name a colour that rhymes with number {i}."),
            _ => format!("Say hello to person {i}."),
        })
        .collect();
    let max_tokens = 12;
    rt.block_on(async {
        // Single stream, one after the other: the reference for every question.
        let mut single = Vec::new();
        for q in &questions {
            let mut s = Session::open(&endpoint, &insecure_trust())
                .await
                .expect("session");
            single.push(
                s.request(&chat_request(q, max_tokens), |_| {})
                    .await
                    .expect("request")
                    .token_ids,
            );
        }
        // All 32 at once: they share forward passes.
        let tasks: Vec<_> = questions
            .iter()
            .cloned()
            .map(|q| {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let mut s = Session::open(&endpoint, &insecure_trust()).await?;
                    s.request(&chat_request(&q, max_tokens), |_| {}).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let done = task.await.expect("join").expect("concurrent request");
            assert_eq!(
                done.token_ids, single[i],
                "sequence {i} changed under batching"
            );
        }
    });
}

#[test]
fn limits_and_replays_are_refused_clearly() {
    let stack = stack(&["--max-new-tokens", "16", "--max-sessions", "2"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = Endpoint::new(&stack.url, None).expect("endpoint");
    rt.block_on(async {
        let mut s = Session::open(&endpoint, &insecure_trust())
            .await
            .expect("session");
        let err = s
            .request(&chat_request(QUESTION, 17), |_| {})
            .await
            .expect_err("over the limit");
        assert!(
            err.to_string()
                .contains("max_tokens is 17, the limit is 16"),
            "{err}"
        );
        // The session survives a refused request.
        let ok = s
            .request(&chat_request(QUESTION, 16), |_| {})
            .await
            .expect("within the limit");
        assert_eq!(ok.token_ids, PARIS);
        // Evidence is accepted once: a second session under the same evidence fails.
        let verdict = s.verdict().clone();
        let _second = Session::open(&endpoint, &insecure_trust())
            .await
            .expect("second session");
        let replay = Session::open_verified(&endpoint, verdict)
            .await
            .expect_err("replayed evidence");
        assert!(matches!(replay, SessionError::Refused { .. }), "{replay}");
        // Max sessions: two are open, the third is refused as overloaded.
        let third = Session::open(&endpoint, &insecure_trust())
            .await
            .expect_err("third session");
        assert!(third.to_string().contains("at most 2 sessions"), "{third}");
    });
}
