//! Services start in any order: `chrysalis serve` started while the enclave behind the
//! shim is down waits, says what it is waiting for, and serves once the enclave is up;
//! a refusal (simulated evidence without the flag) is not retried.
//!
//! Needs the model (`cargo xtask fetch-model smollm2-135m`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{binary, Proc, Stack, StackOptions};

/// Starts `chrysalis serve` against `url`; its stdout and stderr lines arrive on the
/// returned channel, in order per stream.
fn start_gateway(url: &str, extra: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = Command::new(binary("chrysalis"));
    cmd.args(["serve", "--url", url, "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chrysalis serve");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx_err.send(line);
        }
    });
    (Proc(child), rx)
}

/// Waits up to `limit` for a line containing `needle`; returns every line seen.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw: {seen:#?}");
}

#[test]
fn gateway_started_before_the_enclave_waits_for_it_then_serves() {
    let mut stack = Stack::start(StackOptions::default());
    stack.kill_enclave();
    let (mut gateway, lines) = start_gateway(&stack.url, &["--allow-simulated", "--wait", "120"]);
    let waiting = wait_for_line(&lines, "waiting for the enclave", Duration::from_secs(30));
    assert!(
        waiting.last().unwrap().contains(&stack.url),
        "the wait names the shim: {waiting:?}"
    );
    stack.restart_enclave();
    wait_for_line(
        &lines,
        "OpenAI-compatible API on ",
        Duration::from_secs(120),
    );
    assert!(
        gateway.0.try_wait().expect("poll").is_none(),
        "gateway exited"
    );
}

#[test]
fn a_refusal_is_not_retried() {
    let stack = Stack::start(StackOptions::default());
    let (mut gateway, _lines) = start_gateway(&stack.url, &["--wait", "120"]);
    // Simulated evidence without --allow-simulated: refused at once, not waited on.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = gateway.0.try_wait().expect("poll") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "chrysalis serve kept retrying a refusal"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
}
