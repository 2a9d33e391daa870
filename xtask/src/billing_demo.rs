//! `cargo xtask demo --billing`: deposit, usage and settlement on the TON emulator.
//!
//! Starts the local TON endpoint (`contracts/server.js`, real TVM through
//! `@ton/sandbox`), the enclave in dev mode with prices, and the shim with its SQLite
//! ledger and settlement loop pointed at the endpoint. Then, as a client: funds a
//! wallet v5r1, deploys a payment channel for the enclave's key (from the evidence it
//! verified) with a deposit through a signed wallet message, binds a sealed session
//! to the channel, chats, checks every bill, and waits for the shim to settle. Every
//! balance printed is read from the emulator.
//!
//! Stand-in, named so: the enclave runs in dev mode (simulated evidence, random keys;
//! no SEV hardware here). Metering, signatures, ledger, messages and contract are the
//! real path.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use chrysalis_client::attest::TrustOptions;
use chrysalis_client::session::Session;
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::ton::{self, ChannelConfig, TonAddress, WalletV5};
use chrysalis_protocol::{ChatMessage, InferenceRequest, Prompt, Role, SamplingParams};
use chrysalis_shim::ledger::TonCenter;
use ed25519_dalek::SigningKey;

use crate::stack::{build_release, ensure_model, Stack};
use crate::util::workspace_root;

const NANO: u128 = 1_000_000_000;
const DEPOSIT: u128 = NANO;
/// Demo prices, nanotons per token.
const PROMPT_PRICE: u64 = 20_000;
const COMPLETION_PRICE: u64 = 60_000;
const MODEL: &str = "smollm2-135m";
const QUESTIONS: [&str; 3] = [
    "What is the capital of France?",
    "Name three colors.",
    "What is 2 + 2?",
];
const EMULATOR_NOW: u64 = 1_800_000_000;

struct TonEndpoint {
    child: Child,
    url: String,
}

impl Drop for TonEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_endpoint(contracts: &Path) -> Result<TonEndpoint> {
    if !contracts.join("node_modules/@ton/sandbox").exists() {
        bail!("contracts/node_modules is missing: run `npm ci --prefix contracts` (node >= 20)");
    }
    let mut child = Command::new("node")
        .args(["server.js", "--now", &EMULATOR_NOW.to_string()])
        .current_dir(contracts)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node (is node >= 20 on PATH?)")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("endpoint stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("endpoint printed {line:?}, expected JSON with its url"))?;
    let url = v["url"].as_str().context("endpoint url")?.to_string();
    Ok(TonEndpoint { child, url })
}

async fn api(url: String, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
    let http = reqwest::Client::new();
    let req = match body {
        Some(b) => http.post(&url).json(&b),
        None => http.get(&url),
    };
    let v: serde_json::Value = req.send().await?.json().await?;
    ensure!(v["ok"] == true, "{url}: {v}");
    Ok(v["result"].clone())
}

async fn balance(base: &str, addr: &TonAddress) -> Result<u128> {
    let r = api(
        format!("{base}/api/v2/getAddressBalance?address={}", addr.to_hex()),
        None,
    )
    .await?;
    r.as_str()
        .and_then(|s| s.parse().ok())
        .context("balance is not a number")
}

fn ton_text(nanotons: u128) -> String {
    format!("{}.{:09} TON", nanotons / NANO, nanotons % NANO)
}

/// Runs the billing demo.
pub fn run() -> Result<()> {
    ensure_model(MODEL)?;
    let bins = build_release()?;
    let endpoint = start_endpoint(&workspace_root().join("contracts"))?;
    eprintln!("local TON endpoint (emulator) at {}", endpoint.url);
    let dir = std::env::temp_dir().join(format!("chrysalis-billing-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ledger = dir.join("ledger.sqlite");
    let prices = [
        "--price-prompt",
        &PROMPT_PRICE.to_string(),
        "--price-completion",
        &COMPLETION_PRICE.to_string(),
    ]
    .map(str::to_owned);
    let shim_args = [
        "--ledger",
        &ledger.display().to_string(),
        "--ton-api",
        &endpoint.url,
        "--settle-min-amount",
        "1",
        "--settle-max-age-secs",
        "0",
        "--settle-interval-secs",
        "1",
    ]
    .map(str::to_owned);
    // Keep the services' logs to warnings, so the demo's lines stand out.
    std::env::set_var("RUST_LOG", "warn");
    let stack = Stack::start_with(
        &bins,
        MODEL,
        &prices.each_ref().map(String::as_str),
        &shim_args.each_ref().map(String::as_str),
    )?;
    eprintln!(
        "enclave (dev mode, INSECURE) on {}, shim on {} with ledger {}",
        stack.enclave_addr,
        stack.url,
        ledger.display()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = rt.block_on(demo(&endpoint.url, &stack.url));
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn demo(base: &str, shim_url: &str) -> Result<()> {
    let wallet_key = SigningKey::from_bytes(&[0x51; 32]);
    let wallet = WalletV5::new(&wallet_key)?;
    let fund = serde_json::json!({ "address": wallet.address().to_hex(), "amount": (10 * NANO).to_string() });
    api(format!("{base}/local/fund"), Some(fund)).await?;
    println!(
        "client wallet {}: {}",
        wallet.address(),
        ton_text(balance(base, wallet.address()).await?)
    );

    let endpoint = Endpoint::new(shim_url, None).map_err(anyhow::Error::msg)?;
    let trust = TrustOptions {
        allow_simulated: true,
        ..TrustOptions::default()
    };
    let mut session = Session::open(&endpoint, &trust).await?;
    let enclave_key = session.verdict().evidence.ed25519_pub;
    println!(
        "enclave key {} (from SIMULATED evidence: INSECURE, dev mode)",
        hex::encode(enclave_key)
    );
    let cfg = ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, [0x9a; 32].into()),
        enclave_key,
        channel_id: 1,
        close_delay: 3600,
        min_stake: NANO / 10,
    };
    let channel = cfg.address(0)?;
    deploy(base, &wallet, &cfg).await?;
    let api_client = TonCenter::new(base);
    let (deposited, _) = api_client.channel_amounts(&channel.to_hex()).await?;
    println!("channel {channel}: deposited {}", ton_text(deposited));
    let provider_before = balance(base, &cfg.provider).await?;
    println!("provider {}: {}", cfg.provider, ton_text(provider_before));

    session.bind_channel(&cfg, &wallet_key).await?;
    println!(
        "usage (metered and signed by the enclave at {PROMPT_PRICE} nanotons per prompt \
         token, {COMPLETION_PRICE} per completion token; every bill checked):"
    );
    let mut total = 0u128;
    for (i, question) in QUESTIONS.iter().enumerate() {
        let done = session
            .request(&request(i as u64, question), |_| {})
            .await?;
        let bill = done.bill.context("a paid response came without a bill")?;
        total += bill.bill.amount;
        println!(
            "  {question:?} -> {:?}\n    {} prompt + {} completion tokens = {}, cumulative {} (charge #{})",
            done.text.trim(),
            done.usage.prompt_tokens,
            done.usage.completion_tokens,
            ton_text(bill.bill.amount),
            ton_text(bill.charge.cumulative),
            bill.charge.seqno
        );
    }
    session.close().await;

    let paid = wait_for_settlement(&api_client, &channel, total).await?;
    let provider_after = balance(base, &cfg.provider).await?;
    println!("channel paid so far: {}", ton_text(paid));
    println!(
        "provider balance: {} (+{})",
        ton_text(provider_after),
        ton_text(provider_after - provider_before)
    );
    ensure!(
        paid == total && provider_after - provider_before == total,
        "settled amounts disagree with the bills: paid {paid}, provider +{}, bills {total}",
        provider_after - provider_before
    );
    println!(
        "OK: the provider received exactly the metered {}, the sum of the client's bills",
        ton_text(total)
    );
    Ok(())
}

fn request(id: u64, question: &str) -> InferenceRequest {
    InferenceRequest {
        request_id: id,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: question.to_owned(),
        }]),
        max_tokens: 48,
        sampling: SamplingParams::GREEDY,
        stream: true,
    }
}

/// Polls the contract until the shim's settlement shows `total` paid (or gives up).
async fn wait_for_settlement(api: &TonCenter, channel: &TonAddress, total: u128) -> Result<u128> {
    let mut paid = 0;
    for _ in 0..120 {
        paid = api.channel_amounts(&channel.to_hex()).await?.1;
        if paid == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(paid)
}

async fn deploy(base: &str, wallet: &WalletV5, cfg: &ChannelConfig) -> Result<()> {
    let channel = cfg.address(0)?;
    let body = ton::top_up_body(0, DEPOSIT)?;
    let value = DEPOSIT + ton::MIN_MESSAGE_FEE + 40_000_000;
    let msg = ton::internal_message(&channel, value, false, Some(&cfg.state_init()?), &body)?;
    let ext = wallet.transfer(0, (EMULATOR_NOW + 600) as u32, &[msg], true)?;
    let boc = base64::engine::general_purpose::STANDARD.encode(ton::to_boc(&ext)?);
    let r = api(
        format!("{base}/api/v2/sendBoc"),
        Some(serde_json::json!({ "boc": boc })),
    )
    .await?;
    ensure!(r["failed"] == serde_json::json!([]), "deploy failed: {r}");
    Ok(())
}
