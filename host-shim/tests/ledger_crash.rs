//! Crash safety of the ledger and settlement, against the TON emulator.
//!
//! The parent starts the local TON endpoint (`contracts/server.js`), deploys a channel
//! through a wallet v5r1 message, then 50 times starts a child (this same binary with
//! `--child`) that records charges and settles them, and kills it with SIGKILL after a
//! random delay. The child prints `recorded SEQNO` only after `record_charge`
//! returned, which is when the shim would release the receipt. After each restart the
//! parent checks that every acknowledged charge is in the ledger and that seqnos have
//! no gaps; at the end it settles what is left and checks that the ledger, the
//! contract's `paid`, and the provider's balance all equal the last cumulative charge,
//! so nothing was lost and nothing paid twice.
//!
//! The child signs charges with a test Ed25519 key in place of the enclave (no SEV
//! hardware here); the signatures, the SQLite file and the TVM are real.
//!
//! Needs node >= 20 and `npm ci --prefix contracts`. Run:
//! `cargo test -p chrysalis-shim --test ledger_crash` (`CRASH_ROUNDS=N` to change 50).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_protocol::ton::{self, ChannelConfig, Charge, TonAddress, WalletV5};
use chrysalis_shim::ledger::{Ledger, OutboxState, SettlementPolicy, Settler, TonCenter};
use ed25519_dalek::SigningKey;

const ENCLAVE_SEED: [u8; 32] = [7; 32];
const WALLET_SEED: [u8; 32] = [5; 32];
const PROVIDER: [u8; 32] = [0xab; 32];
const DEPOSIT: u128 = 1_000_000_000_000;
const EMULATOR_NOW: u64 = 1_800_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let db = PathBuf::from(&args[i + 1]);
        child(&db, &args[i + 2]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list` asks harness-less tests what they contain.
        println!("ledger_crash: test");
        return;
    }
    parent();
}

fn channel_config() -> ChannelConfig {
    let wallet = WalletV5::new(&SigningKey::from_bytes(&WALLET_SEED)).expect("wallet");
    ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, PROVIDER.into()),
        enclave_key: SigningKey::from_bytes(&ENCLAVE_SEED)
            .verifying_key()
            .to_bytes(),
        channel_id: 7,
        close_delay: 3600,
        min_stake: 0,
    }
}

/// Deterministic charge amounts, so the parent can recompute any cumulative total.
fn increment(seqno: u64) -> u128 {
    1_000 + u128::from((seqno * 7919) % 50_000)
}

fn cumulative_at(seqno: u64) -> u128 {
    (1..=seqno).map(increment).sum()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The child: plays the enclave (signs the next charge) and the shim (records it,
/// settles every few charges) until it is killed.
fn child(db: &Path, endpoint: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = channel_config();
    let channel = cfg.address(0).expect("address");
    let enclave = SigningKey::from_bytes(&ENCLAVE_SEED);
    let mut ledger = Ledger::open(db).expect("open ledger");
    ledger.register_channel(&channel, &cfg).expect("register");
    let policy = SettlementPolicy {
        min_amount: 20_000,
        max_age: Duration::from_secs(1),
    };
    let settler = Settler::new(TonCenter::new(endpoint), policy);
    loop {
        let last = ledger
            .balance(&channel)
            .expect("balance")
            .map_or(0, |b| b.seqno);
        let seqno = last + 1;
        let signed = Charge {
            channel: channel.clone(),
            channel_id: cfg.channel_id,
            seqno,
            cumulative: cumulative_at(seqno),
            prompt_tokens: seqno * 3,
            completion_tokens: seqno * 5,
            final_charge: false,
        }
        .sign(&enclave)
        .expect("sign");
        ledger.record_charge(&signed, unix_now()).expect("record");
        println!("recorded {seqno}");
        if seqno.is_multiple_of(3) {
            if let Err(e) = rt.block_on(settler.round(&mut ledger, unix_now())) {
                eprintln!("round failed: {e}");
            }
        }
    }
}

/// The local endpoint, killed on drop.
struct LocalTon {
    child: Child,
    url: String,
}

impl LocalTon {
    fn start(contracts: &Path) -> Self {
        assert!(
            contracts.join("node_modules/@ton/sandbox").exists(),
            "contracts/node_modules is missing: run `npm ci --prefix contracts` (node >= 20)"
        );
        let mut child = Command::new("node")
            .arg("server.js")
            .args(["--now", &EMULATOR_NOW.to_string()])
            .current_dir(contracts)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node (is node >= 20 on PATH?)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read url");
        let v: serde_json::Value = serde_json::from_str(&line).expect("server prints JSON");
        let url = v["url"].as_str().expect("url").to_string();
        Self { child, url }
    }
}

impl Drop for LocalTon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(url: &str, body: serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

async fn deploy_channel(endpoint: &str, cfg: &ChannelConfig) {
    use base64::Engine as _;
    let wallet = WalletV5::new(&SigningKey::from_bytes(&WALLET_SEED)).expect("wallet");
    let fund = post(
        &format!("{endpoint}/local/fund"),
        serde_json::json!({ "address": wallet.address().to_hex(), "amount": (DEPOSIT + 10_000_000_000).to_string() }),
    )
    .await;
    assert_eq!(fund["ok"], true, "{fund}");
    let channel = cfg.address(0).expect("address");
    let body = ton::top_up_body(0, DEPOSIT).expect("top up");
    let init = cfg.state_init().expect("init");
    let msg = ton::internal_message(&channel, DEPOSIT + 100_000_000, false, Some(&init), &body)
        .expect("internal");
    let ext = wallet
        .transfer(0, (EMULATOR_NOW + 600) as u32, &[msg], true)
        .expect("transfer");
    let boc = base64::engine::general_purpose::STANDARD.encode(ton::to_boc(&ext).expect("boc"));
    let sent = post(
        &format!("{endpoint}/api/v2/sendBoc"),
        serde_json::json!({ "boc": boc }),
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(sent["result"]["failed"], serde_json::json!([]), "{sent}");
}

/// xorshift64: the delays need only be unpredictable to the child, not secure.
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        30 + self.0 % 600
    }
}

/// Runs a child for a random time, kills it, and returns the seqnos it acknowledged.
fn run_and_kill(db: &Path, endpoint: &str, delay: Duration) -> Vec<u64> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(db)
        .arg(endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line
                .strip_prefix("recorded ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let _ = tx.send(n);
            }
        }
    });
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    let _ = reader.join();
    rx.try_iter().collect()
}

fn check_ledger(db: &Path, channel: &TonAddress, acknowledged: &[u64]) -> u64 {
    let ledger = Ledger::open(db).expect("reopen after kill");
    let charges = ledger.charges(channel).expect("charges");
    for (i, (seqno, cumulative)) in charges.iter().enumerate() {
        assert_eq!(*seqno, i as u64 + 1, "seqnos have a gap");
        assert_eq!(*cumulative, cumulative_at(*seqno), "charge {seqno} amount");
    }
    let max = charges.last().map_or(0, |c| c.0);
    let in_flight = ledger.outbox_count(OutboxState::Sent).expect("count");
    if in_flight > 0 {
        println!("  killed with {in_flight} settlement(s) sent but unconfirmed");
    }
    if let Some(lost) = acknowledged.iter().find(|s| **s > max) {
        panic!("charge {lost} was acknowledged but is not in the ledger (max {max})");
    }
    max
}

fn parent() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    let ton = LocalTon::start(&contracts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = channel_config();
    let channel = cfg.address(0).expect("address");
    rt.block_on(deploy_channel(&ton.url, &cfg));

    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.sqlite");
    let seed = unix_now() | 1;
    println!("ledger_crash: {rounds} kills, delay seed {seed}");
    let mut delays = Delays(seed);
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        acknowledged.extend(run_and_kill(
            &db,
            &ton.url,
            Duration::from_millis(delays.next_ms()),
        ));
        let max = check_ledger(&db, &channel, &acknowledged);
        println!(
            "round {round}: {max} charges recorded, {} acknowledged",
            acknowledged.len()
        );
    }
    let last = check_ledger(&db, &channel, &acknowledged);
    assert!(last > 0, "no charge was ever recorded");
    rt.block_on(drain_and_compare(&db, &ton.url, &channel, last));
    println!(
        "ledger_crash: ok ({last} charges, {} acknowledged)",
        acknowledged.len()
    );
}

async fn drain_and_compare(db: &Path, endpoint: &str, channel: &TonAddress, last: u64) {
    let mut ledger = Ledger::open(db).expect("open");
    let policy = SettlementPolicy {
        min_amount: 1,
        max_age: Duration::from_secs(0),
    };
    let api = TonCenter::new(endpoint);
    let settler = Settler::new(api.clone(), policy);
    for _ in 0..5 {
        settler.round(&mut ledger, unix_now()).await.expect("round");
        if ledger.open_outbox().expect("outbox").is_empty() {
            break;
        }
    }
    assert!(
        ledger.open_outbox().expect("outbox").is_empty(),
        "outbox drained"
    );
    let expected = cumulative_at(last);
    let bal = ledger.balance(channel).expect("balance").expect("present");
    assert_eq!(bal.cumulative, expected, "ledger's latest charge");
    assert_eq!(bal.confirmed, expected, "ledger's confirmed amount");
    let (_, paid) = api.channel_amounts(&channel.to_hex()).await.expect("state");
    assert_eq!(paid, expected, "contract's paid");
    let provider = TonAddress::new(0, PROVIDER.into()).to_hex();
    let balance_url = format!("{endpoint}/api/v2/getAddressBalance?address={provider}");
    let v: serde_json::Value = reqwest::get(&balance_url)
        .await
        .expect("balance")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["result"].as_str(),
        Some(expected.to_string().as_str()),
        "provider balance"
    );
    let confirmed = ledger.outbox_count(OutboxState::Confirmed).expect("count");
    println!("settlements confirmed: {confirmed}");
}
