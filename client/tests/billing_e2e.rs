//! Billing end to end on one machine: the TON emulator (`node contracts/server.js`,
//! real TVM), the enclave in dev mode with prices, the shim with its SQLite ledger and
//! settlement loop, and the client library and `chrysalis pay` CLI.
//!
//! The client funds a wallet v5r1, deploys its channel with a deposit through a
//! `chrysalis pay deploy` message signed by that wallet, binds a session to the
//! channel, and chats. Every response's bill is checked by the client (signature,
//! prices times tokens, the chain, the charge inside). The shim settles; the test then
//! reads the emulator: the channel's `paid` and the provider's balance grow by exactly
//! the sum of the bills. Requests beyond the deposit and unbound sessions are refused.
//!
//! Needs node >= 20 with `npm ci --prefix contracts`, and the model
//! (`cargo xtask fetch-model smollm2-135m`). Build the binaries first
//! (`cargo build -p chrysalis-enclave -p chrysalis-shim`), then
//! `cargo test -p chrysalis-client --test billing_e2e`.

mod common;
mod ton_emulator;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use chrysalis_client::session::{Session, SessionError};
use chrysalis_protocol::ton::{ChannelConfig, TonAddress, WalletV5};
use chrysalis_protocol::ErrorCode;
use common::{binary, chat_request, insecure_trust, model_dir, start, Proc};
use ed25519_dalek::SigningKey;
use ton_emulator::api;

const NOW: u64 = 1_800_000_000;
const WALLET_SEED: [u8; 32] = [0x42; 32];
const PROVIDER: [u8; 32] = [0x9b; 32];
/// Nanotons per prompt and per completion token.
const PRICE_PROMPT: u64 = 10_000;
const PRICE_COMPLETION: u64 = 30_000;
/// 0.03 TON: covers small requests (worst case 512 * 10k + 16 * 30k = 5.6M), not one
/// that may generate 1024 tokens (35.8M).
const DEPOSIT: &str = "0.03";
const DEPOSIT_NANO: u128 = 30_000_000;

async fn balance(ton: &str, addr: &TonAddress) -> u128 {
    let url = format!("{ton}/api/v2/getAddressBalance?address={}", addr.to_hex());
    api(url, None)
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("balance")
}

/// `(deposited, paid)` from the contract's getter.
async fn channel_state(ton: &str, channel: &TonAddress) -> (u128, u128) {
    let body =
        serde_json::json!({ "address": channel.to_hex(), "method": "channel_state", "stack": [] });
    let r = api(format!("{ton}/api/v2/runGetMethod"), Some(body)).await;
    let num = |i: usize| {
        let hex = r["stack"][i][1].as_str().expect("num");
        u128::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
    };
    (num(0), num(1))
}

/// `chrysalis pay deploy`, signed by the wallet, sent to the emulator.
async fn deploy(ton: &str, dir: &Path, cfg: &ChannelConfig) {
    let key_file = dir.join("wallet.key");
    std::fs::write(&key_file, hex::encode(WALLET_SEED)).expect("key file");
    let out = dir.join("deploy.boc");
    let status = Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(["pay", "deploy", "--client", &cfg.client.to_hex()])
        .args(["--provider", &cfg.provider.to_hex()])
        .args(["--enclave-key", &hex::encode(cfg.enclave_key)])
        .args(["--channel-id", &cfg.channel_id.to_string()])
        .args(["--close-delay", &cfg.close_delay.to_string()])
        .args(["--min-stake", "0", "--deposit", DEPOSIT, "--seqno", "0"])
        .args(["--valid-until", &(NOW + 600).to_string(), "--json"])
        .arg("--wallet-key")
        .arg(&key_file)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("chrysalis pay");
    assert!(status.success(), "chrysalis pay deploy failed");
    let boc = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&out).expect("boc"));
    let r = api(
        format!("{ton}/api/v2/sendBoc"),
        Some(serde_json::json!({ "boc": boc })),
    )
    .await;
    assert_eq!(r["failed"], serde_json::json!([]), "deploy failed: {r}");
}

fn enclave() -> (Proc, String) {
    let mut cmd = Command::new(binary("chrysalis-enclave"));
    cmd.args(["serve", "--listen", "tcp:127.0.0.1:0", "--dev", "--model"])
        .arg(model_dir())
        .args(["--price-prompt", &PRICE_PROMPT.to_string()])
        .args(["--price-completion", &PRICE_COMPLETION.to_string()])
        .args(["--max-prompt-tokens", "512"]);
    start(cmd)
}

fn shim(enclave_addr: &str, ledger: &Path, ton: &str) -> (Proc, String) {
    let mut cmd = common::shim_command(enclave_addr, None);
    ton_emulator::with_billing(&mut cmd, ledger, ton);
    start(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn deposits_usage_and_settlement_agree_with_the_emulator() {
    let dir = tempfile::tempdir().expect("tmp");
    let emu = ton_emulator::emulator(NOW);
    let ton = emu.1.clone();
    let (_enclave, enclave_addr) = enclave();
    let (_shim, url) = shim(&enclave_addr, &dir.path().join("ledger.sqlite"), &ton);
    let endpoint = chrysalis_client::transport::Endpoint::new(&url, None).expect("endpoint");

    // An unbound session on a priced enclave is refused, naming the prices.
    let mut unbound = Session::open(&endpoint, &insecure_trust())
        .await
        .expect("open");
    match unbound.request(&chat_request("Hi", 4), |_| {}).await {
        Err(SessionError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::PaymentRequired);
            assert!(message.contains("bind a payment channel"), "{message}");
        }
        other => panic!("expected a payment refusal, got {other:?}"),
    }

    let wallet_key = SigningKey::from_bytes(&WALLET_SEED);
    let wallet = WalletV5::new(&wallet_key).expect("wallet");
    let fund = serde_json::json!({ "address": wallet.address().to_hex(), "amount": "2000000000" });
    api(format!("{ton}/local/fund"), Some(fund)).await;

    let mut session = Session::open(&endpoint, &insecure_trust())
        .await
        .expect("open");
    let cfg = ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, PROVIDER.into()),
        enclave_key: session.verdict().evidence.ed25519_pub,
        channel_id: 1,
        close_delay: 3600,
        min_stake: 0,
    };
    let channel = cfg.address(0).expect("channel address");
    deploy(&ton, dir.path(), &cfg).await;
    assert_eq!(channel_state(&ton, &channel).await, (DEPOSIT_NANO, 0));
    let provider_before = balance(&ton, &cfg.provider).await;

    session.bind_channel(&cfg, &wallet_key).await.expect("bind");
    let mut billed = 0u128;
    for question in ["What is 2+2?", "Name a color.", "Say hello."] {
        let done = session
            .request(&chat_request(question, 16), |_| {})
            .await
            .expect("paid request");
        let bill = done.bill.expect("a bill for a paid response");
        let usage = done.usage;
        let cost = u128::from(usage.prompt_tokens) * u128::from(PRICE_PROMPT)
            + u128::from(usage.completion_tokens) * u128::from(PRICE_COMPLETION);
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert_eq!(bill.bill.amount, cost);
        billed += bill.bill.amount;
        assert_eq!(bill.charge.cumulative, billed, "the charge sums the bills");
    }

    // Beyond the deposit: refused before anything runs, and the session lives on.
    match session
        .request(&chat_request("Tell a story.", 1024), |_| {})
        .await
    {
        Err(SessionError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::PaymentRequired);
            assert!(message.contains("top up the channel"), "{message}");
        }
        other => panic!("expected a deposit refusal, got {other:?}"),
    }

    // The shim settles within a few rounds; the chain then shows exactly the bills.
    let mut paid = 0;
    for _ in 0..60 {
        paid = channel_state(&ton, &channel).await.1;
        if paid == billed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(paid, billed, "the contract paid what the bills sum to");
    let provider_after = balance(&ton, &cfg.provider).await;
    assert_eq!(provider_after - provider_before, billed);
    session.close().await;
}
