//! Crash safety of billing through the real shim: the shim process is killed with
//! SIGKILL at random moments while a client streams paid requests and while its
//! settlement loop sends settle messages, then restarted on the same SQLite ledger.
//!
//! After the last round a fresh shim serves one more request and settles. The
//! emulator must then show the channel's `paid` equal to the cumulative charge of the
//! last bill the client received (nothing lost: cumulative charges cover every
//! earlier response, including ones whose charge died with a shim), and the provider's
//! balance grown by exactly that (nothing paid twice, although rows were resent after
//! crashes).
//!
//! Needs node >= 20 with `npm ci --prefix contracts` and the model. Build the binaries
//! first (`cargo build -p chrysalis-enclave -p chrysalis-shim`), then
//! `cargo test -p chrysalis-client --test billing_crash` (`CRASH_ROUNDS=N`, default 4:
//! each round costs about 40 s of CI's 30 minutes; the ledger's own 50-kill test is
//! `host-shim/tests/ledger_crash.rs`).

mod common;
mod ton_emulator;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chrysalis_client::session::Session;
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::ton::{self, ChannelConfig, TonAddress, WalletV5};
use common::{binary, chat_request, insecure_trust, model_dir, start, Proc};
use ed25519_dalek::SigningKey;
use ton_emulator::api;

const NOW: u64 = 1_800_000_000;
const WALLET_SEED: [u8; 32] = [0x43; 32];
const PROVIDER: [u8; 32] = [0x9c; 32];
const DEPOSIT: u128 = 1_000_000_000;

async fn provider_balance(ton: &str) -> u128 {
    let addr = TonAddress::new(0, PROVIDER.into()).to_hex();
    let url = format!("{ton}/api/v2/getAddressBalance?address={addr}");
    api(url, None)
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("balance")
}

async fn paid(ton: &str, channel: &TonAddress) -> u128 {
    let body =
        serde_json::json!({ "address": channel.to_hex(), "method": "channel_state", "stack": [] });
    let r = api(format!("{ton}/api/v2/runGetMethod"), Some(body)).await;
    let hex = r["stack"][1][1].as_str().expect("paid");
    u128::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
}

/// Deploys the channel with a wallet v5r1 message built by the library.
async fn deploy(ton: &str, wallet: &WalletV5, cfg: &ChannelConfig) {
    let body = ton::top_up_body(0, DEPOSIT).expect("body");
    let value = DEPOSIT + ton::MIN_MESSAGE_FEE + 40_000_000;
    let init = cfg.state_init().expect("init");
    let channel = cfg.address(0).expect("address");
    let msg = ton::internal_message(&channel, value, false, Some(&init), &body).expect("msg");
    let ext = wallet
        .transfer(0, (NOW + 600) as u32, &[msg], true)
        .expect("transfer");
    let boc = base64::engine::general_purpose::STANDARD.encode(ton::to_boc(&ext).expect("boc"));
    let r = api(
        format!("{ton}/api/v2/sendBoc"),
        Some(serde_json::json!({ "boc": boc })),
    )
    .await;
    assert_eq!(r["failed"], serde_json::json!([]), "deploy: {r}");
}

fn shim(enclave_addr: &str, ledger: &Path, ton: &str) -> (Proc, String) {
    let mut cmd = common::shim_command(enclave_addr, None);
    ton_emulator::with_billing(&mut cmd, ledger, ton);
    start(cmd)
}

/// A small xorshift generator seeded from the clock: random kill times, printed so
/// a failing run can be read back.
struct Jitter(u64);

impl Jitter {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max
    }
}

/// Opens a bound session through the shim at `url` and runs requests until the shim
/// dies; returns the cumulative charge of the last bill received.
async fn requests_until_killed(url: &str, cfg: &ChannelConfig, key: &SigningKey) -> Option<u128> {
    let endpoint = Endpoint::new(url, None).expect("endpoint");
    let mut session = Session::open(&endpoint, &insecure_trust()).await.ok()?;
    session.bind_channel(cfg, key).await.ok()?;
    let mut last = None;
    while let Ok(done) = session
        .request(&chat_request("Count to five.", 12), |_| {})
        .await
    {
        last = Some(done.bill.expect("a bill").charge.cumulative);
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_shims_lose_no_charge_and_pay_none_twice() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(1);
    eprintln!("kill-time seed {seed}");
    let mut jitter = Jitter(seed);
    let dir = tempfile::tempdir().expect("tmp");
    let ledger = dir.path().join("ledger.sqlite");
    let emu = ton_emulator::emulator(NOW);
    let ton = emu.1.clone();
    let mut enclave_cmd = Command::new(binary("chrysalis-enclave"));
    enclave_cmd
        .args(["serve", "--listen", "tcp:127.0.0.1:0", "--dev", "--model"])
        .arg(model_dir())
        .args(["--price-prompt", "1000", "--price-completion", "3000"]);
    let (_enclave, enclave_addr) = start(enclave_cmd);

    let wallet_key = SigningKey::from_bytes(&WALLET_SEED);
    let wallet = WalletV5::new(&wallet_key).expect("wallet");
    let fund = serde_json::json!({ "address": wallet.address().to_hex(), "amount": "3000000000" });
    api(format!("{ton}/local/fund"), Some(fund)).await;
    let (probe, probe_url) = shim(&enclave_addr, &ledger, &ton);
    let endpoint = Endpoint::new(&probe_url, None).expect("endpoint");
    let enclave_key = Session::open(&endpoint, &insecure_trust())
        .await
        .expect("open")
        .verdict()
        .evidence
        .ed25519_pub;
    drop(probe);
    let cfg = ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, PROVIDER.into()),
        enclave_key,
        channel_id: 2,
        close_delay: 3600,
        min_stake: 0,
    };
    let channel = cfg.address(0).expect("channel");
    deploy(&ton, &wallet, &cfg).await;
    let provider_before = provider_balance(&ton).await;

    let mut last_seen = 0u128;
    for round in 0..rounds {
        let (mut shim_proc, url) = shim(&enclave_addr, &ledger, &ton);
        let delay = 500 + jitter.next_ms(4_000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            shim_proc.kill(); // SIGKILL
        });
        if let Some(cumulative) = requests_until_killed(&url, &cfg, &wallet_key).await {
            assert!(cumulative > last_seen, "cumulative charges only grow");
            last_seen = cumulative;
        }
        killer.join().expect("killer");
        eprintln!("round {round}: shim killed after {delay} ms, last bill {last_seen}");
    }

    // One more request through a surviving shim, then let it settle.
    let (_shim, url) = shim(&enclave_addr, &ledger, &ton);
    let endpoint = Endpoint::new(&url, None).expect("endpoint");
    let mut session = Session::open(&endpoint, &insecure_trust())
        .await
        .expect("open");
    session.bind_channel(&cfg, &wallet_key).await.expect("bind");
    let done = session
        .request(&chat_request("Say yes.", 4), |_| {})
        .await
        .expect("final request");
    let final_cumulative = done.bill.expect("bill").charge.cumulative;
    assert!(final_cumulative > last_seen);
    let mut settled = 0;
    for _ in 0..60 {
        settled = paid(&ton, &channel).await;
        if settled == final_cumulative {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(settled, final_cumulative, "no charge lost");
    assert_eq!(
        provider_balance(&ton).await - provider_before,
        final_cumulative,
        "nothing paid twice"
    );
}
