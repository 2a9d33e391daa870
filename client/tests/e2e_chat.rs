//! End to end on one machine, with the real model: enclave (dev mode) and shim as
//! processes, the client library and CLI in front of them.
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`. The enclave and shim
//! binaries are built on demand in the same profile as this test.

mod common;

use std::process::Command;

use chrysalis_client::session::{Session, SessionError};
use chrysalis_client::transport::Endpoint;
use common::{
    binary, chat_request, insecure_trust, model_dir, Stack, StackOptions, PARIS, QUESTION,
};

fn stack(extra: &[&str]) -> Stack {
    Stack::start(StackOptions {
        enclave_args: extra,
        ..StackOptions::default()
    })
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
