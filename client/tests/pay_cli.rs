//! `chrysalis pay` end to end: the CLI's BOC files equal the library's cells, and its
//! wallet-signed messages deploy, top up, withdraw from and close a real channel in
//! the TON emulator behind the local endpoint (`contracts/server.js`).
//!
//! The emulator part needs node >= 20 and `npm ci --prefix contracts`.

use std::path::PathBuf;
use std::process::{Command, Output};

mod ton_emulator;

use chrysalis_protocol::ton::{self, ChannelConfig, TonAddress, WalletV5};
use ed25519_dalek::SigningKey;
use ton_emulator::{emulator, Emulator};

const WALLET_SEED: [u8; 32] = [0x11; 32];
const NOW: u64 = 1_800_000_000;

fn chrysalis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(args)
        .output()
        .expect("run chrysalis")
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "chrysalis failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn enclave_hex() -> String {
    hex::encode(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes())
}

fn config(client: &TonAddress) -> ChannelConfig {
    ChannelConfig {
        client: client.clone(),
        provider: TonAddress::new(0, [0xcd; 32].into()),
        enclave_key: SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes(),
        channel_id: 3,
        close_delay: 60,
        min_stake: 1_000_000_000,
    }
}

fn deploy_args<'a>(client: &'a str, provider: &'a str, key: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "pay",
        "deploy",
        "--client",
        client,
        "--provider",
        provider,
        "--enclave-key",
        key,
        "--channel-id",
        "3",
        "--close-delay",
        "60",
        "--min-stake",
        "1",
        "--deposit",
        "5",
        "--out",
        out,
        "--json",
    ]
}

#[test]
fn bare_deploy_body_and_address_match_the_library() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("deploy.boc");
    let client = TonAddress::new(0, [0x22; 32].into());
    let cfg = config(&client);
    let s = summary(&chrysalis(&deploy_args(
        &client.to_hex(),
        &cfg.provider.to_hex(),
        &enclave_hex(),
        out.to_str().expect("utf-8"),
    )));
    assert_eq!(s["to_raw"], cfg.address(0).expect("address").to_hex());
    let body = ton::to_boc(&ton::top_up_body(0, 5_000_000_000).expect("body")).expect("boc");
    assert_eq!(std::fs::read(&out).expect("read"), body);
    let init = ton::state_init_cell(&cfg.state_init().expect("init")).expect("cell");
    assert_eq!(
        s["state_init_boc_hex"],
        hex::encode(ton::to_boc(&init).expect("boc"))
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("x.boc");
    let out = out.to_str().expect("utf-8");
    let chan = TonAddress::new(0, [1; 32].into()).to_hex();
    let r = chrysalis(&[
        "pay",
        "top-up",
        "--channel",
        &chan,
        "--amount",
        "1.0000000001",
        "--out",
        out,
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("at most 9"),
        "{r:?}"
    );
    let r = chrysalis(&[
        "pay",
        "withdraw",
        "--channel",
        "nonsense",
        "--amount",
        "1",
        "--out",
        out,
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not a TON address"),
        "{r:?}"
    );
    let r = chrysalis(&deploy_args(&chan, &chan, "abcd", out));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("2 bytes, 32 expected"),
        "{r:?}"
    );
}

fn call(
    rt: &tokio::runtime::Runtime,
    url: String,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let req = match body {
            Some(b) => http.post(url).json(&b),
            None => http.get(url),
        };
        req.send().await.expect("send").json().await.expect("json")
    })
}

struct Session {
    rt: tokio::runtime::Runtime,
    emu: Emulator,
    dir: tempfile::TempDir,
    key_file: PathBuf,
    seqno: u32,
}

impl Session {
    /// Runs a pay subcommand signed by the wallet and submits the BOC.
    fn send(&mut self, mut args: Vec<String>) -> serde_json::Value {
        let out = self.dir.path().join(format!("msg{}.boc", self.seqno));
        args.extend([
            "--out".into(),
            out.display().to_string(),
            "--wallet-key".into(),
            self.key_file.display().to_string(),
            "--seqno".into(),
            self.seqno.to_string(),
            "--valid-until".into(),
            (NOW + 600).to_string(),
            "--json".into(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        summary(&chrysalis(&argv));
        self.seqno += 1;
        use base64::Engine as _;
        let boc =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(&out).expect("boc"));
        let r = call(
            &self.rt,
            format!("{}/api/v2/sendBoc", self.emu.1),
            Some(serde_json::json!({ "boc": boc })),
        );
        assert_eq!(r["ok"], true, "{r}");
        r["result"].clone()
    }

    fn state(&self, channel: &str) -> Vec<u128> {
        let body =
            serde_json::json!({ "address": channel, "method": "channel_state", "stack": [] });
        let r = call(
            &self.rt,
            format!("{}/api/v2/runGetMethod", self.emu.1),
            Some(body),
        );
        r["result"]["stack"]
            .as_array()
            .expect("stack")
            .iter()
            .map(|e| {
                u128::from_str_radix(e[1].as_str().expect("num").trim_start_matches("0x"), 16)
                    .expect("hex")
            })
            .collect()
    }
}

#[test]
fn wallet_signed_messages_drive_a_channel_in_the_emulator() {
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("wallet.key");
    std::fs::write(&key_file, hex::encode(WALLET_SEED)).expect("key");
    let wallet = WalletV5::new(&SigningKey::from_bytes(&WALLET_SEED)).expect("wallet");
    let mut s = Session {
        rt: tokio::runtime::Runtime::new().expect("rt"),
        emu: emulator(NOW),
        dir,
        key_file,
        seqno: 0,
    };
    let fund = serde_json::json!({ "address": wallet.address().to_hex(), "amount": "20000000000" });
    assert_eq!(
        call(&s.rt, format!("{}/local/fund", s.emu.1), Some(fund))["ok"],
        true
    );

    let cfg = config(wallet.address());
    let channel = cfg.address(0).expect("address").to_hex();
    let (client, provider, key) = (
        wallet.address().to_hex(),
        cfg.provider.to_hex(),
        enclave_hex(),
    );
    let deploy: Vec<String> = deploy_args(&client, &provider, &key, "unused")[..16]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let r = s.send(deploy);
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    assert_eq!(s.state(&channel)[..2], [5_000_000_000, 0]);

    let top_up = ["pay", "top-up", "--channel", &channel, "--amount", "2.5"];
    s.send(top_up.iter().map(|a| a.to_string()).collect());
    assert_eq!(s.state(&channel)[0], 7_500_000_000);

    let withdraw = ["pay", "withdraw", "--channel", &channel, "--amount", "6"];
    s.send(withdraw.iter().map(|a| a.to_string()).collect());
    assert_eq!(s.state(&channel)[0], 1_500_000_000);

    // Above deposit - stake: the channel refuses with exit 109, visible in `failed`.
    let too_much = ["pay", "withdraw", "--channel", &channel, "--amount", "1"];
    let r = s.send(too_much.iter().map(|a| a.to_string()).collect());
    assert_eq!(r["failed"][0]["exit_code"], 109, "{r}");

    let close = ["pay", "close", "--channel", &channel];
    s.send(close.iter().map(|a| a.to_string()).collect());
    assert_eq!(s.state(&channel)[3], 1, "closing");
    call(
        &s.rt,
        format!("{}/local/time", s.emu.1),
        Some(serde_json::json!({ "advance": 61 })),
    );
    let finish = ["pay", "close", "--channel", &channel, "--finish"];
    s.send(finish.iter().map(|a| a.to_string()).collect());
    assert_eq!(s.state(&channel)[3], 2, "closed");
}
