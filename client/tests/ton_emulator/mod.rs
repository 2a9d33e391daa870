//! The local TON endpoint (`node contracts/server.js`, real TVM in `@ton/sandbox`)
//! for the billing tests; needs node >= 20 and `npm ci --prefix contracts`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// The endpoint's process and its base URL; killed on drop.
pub struct Emulator(pub std::process::Child, pub String);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the endpoint with its clock at `now` and waits for its URL line.
pub fn emulator(now: u64) -> Emulator {
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    assert!(
        contracts.join("node_modules/@ton/sandbox").exists(),
        "run `npm ci --prefix contracts` first (node >= 20)"
    );
    let mut child = Command::new("node")
        .args(["server.js", "--now", &now.to_string()])
        .current_dir(&contracts)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("url line");
    let url = serde_json::from_str::<serde_json::Value>(&first).expect("json")["url"]
        .as_str()
        .expect("url")
        .to_string();
    Emulator(child, url)
}

/// Calls the endpoint (POST with a JSON body, or GET) and returns `result`, asserting
/// `ok`.
pub async fn api(url: String, body: Option<serde_json::Value>) -> serde_json::Value {
    let http = reqwest::Client::new();
    let req = match body {
        Some(b) => http.post(url).json(&b),
        None => http.get(url),
    };
    let v: serde_json::Value = req.send().await.expect("send").json().await.expect("json");
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

/// Adds the shim's billing options: `ledger`, the endpoint at `ton`, and a policy
/// that settles every charge within about a second.
pub fn with_billing(cmd: &mut Command, ledger: &Path, ton: &str) {
    cmd.arg("--ledger")
        .arg(ledger)
        .args(["--ton-api", ton, "--settle-min-amount", "1"])
        .args(["--settle-max-age-secs", "0", "--settle-interval-secs", "1"]);
}
