//! `cargo xtask demo --billing`: deposit, usage and settlement on the TON emulator.
//!
//! Starts the local TON endpoint (`contracts/server.js`, real TVM through
//! `@ton/sandbox`), funds a client wallet v5r1, deploys a payment channel with a
//! deposit through a signed wallet message, records a few enclave-signed cumulative
//! charges in the shim's SQLite ledger, settles them, and prints the balances the
//! emulator reports at each step.
//!
//! Stand-in, named so: the enclave's metering is not wired to the ledger yet, so the
//! charges here are signed by a demo Ed25519 key in place of the enclave's, for token
//! counts this program picks. Everything after the signature (ledger, settlement
//! messages, contract, balances) is the real path.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use chrysalis_protocol::ton::{self, ChannelConfig, Charge, TonAddress, WalletV5};
use chrysalis_shim::ledger::{Ledger, SettlementPolicy, Settler, TonCenter};
use ed25519_dalek::SigningKey;

use crate::util::workspace_root;

const NANO: u128 = 1_000_000_000;
const DEPOSIT: u128 = 5 * NANO;
/// Demo prices, nanotons per token.
const PROMPT_PRICE: u128 = 20_000;
const COMPLETION_PRICE: u128 = 60_000;
const EMULATOR_NOW: u64 = 1_800_000_000;

struct Endpoint {
    child: Child,
    url: String,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_endpoint(contracts: &Path) -> Result<Endpoint> {
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
    Ok(Endpoint { child, url })
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
    let endpoint = start_endpoint(&workspace_root().join("contracts"))?;
    eprintln!("local TON endpoint (emulator) at {}", endpoint.url);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(demo(&endpoint.url))
}

async fn demo(base: &str) -> Result<()> {
    let wallet = WalletV5::new(&SigningKey::from_bytes(&[0x51; 32]))?;
    let enclave = SigningKey::from_bytes(&[0xe7; 32]); // stand-in for the enclave's key
    let cfg = ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, [0x9a; 32].into()),
        enclave_key: enclave.verifying_key().to_bytes(),
        channel_id: 1,
        close_delay: 3600,
        min_stake: NANO / 10,
    };
    let channel = cfg.address(0)?;
    let fund = serde_json::json!({ "address": wallet.address().to_hex(), "amount": (10 * NANO).to_string() });
    api(format!("{base}/local/fund"), Some(fund)).await?;
    println!(
        "client wallet {}: {}",
        wallet.address(),
        ton_text(balance(base, wallet.address()).await?)
    );

    deploy(base, &wallet, &cfg).await?;
    let (deposited, _) = TonCenter::new(base)
        .channel_amounts(&channel.to_hex())
        .await?;
    println!("channel {channel}: deposited {}", ton_text(deposited));
    let provider_before = balance(base, &cfg.provider).await?;
    println!("provider {}: {}", cfg.provider, ton_text(provider_before));

    let dir = std::env::temp_dir().join(format!("chrysalis-billing-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut ledger = Ledger::open(&dir.join("ledger.sqlite"))?;
    ledger.register_channel(&channel, &cfg)?;
    let total = record_usage(&mut ledger, &channel, &cfg, &enclave)?;

    let policy = SettlementPolicy {
        min_amount: 1,
        max_age: Duration::from_secs(0),
    };
    let report = Settler::new(TonCenter::new(base), policy)
        .round(&mut ledger, EMULATOR_NOW)
        .await?;
    println!(
        "settlement: {} message(s) sent, {} confirmed",
        report.sent, report.confirmed
    );
    let (_, paid) = TonCenter::new(base)
        .channel_amounts(&channel.to_hex())
        .await?;
    let provider_after = balance(base, &cfg.provider).await?;
    println!("channel paid so far: {}", ton_text(paid));
    println!(
        "provider balance: {} (+{})",
        ton_text(provider_after),
        ton_text(provider_after - provider_before)
    );
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        paid == total && provider_after - provider_before == total,
        "settled amounts disagree with the metered total"
    );
    println!(
        "OK: the provider received exactly the metered {}",
        ton_text(total)
    );
    Ok(())
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

/// Signs and records one cumulative charge per simulated request; returns the total.
fn record_usage(
    ledger: &mut Ledger,
    channel: &TonAddress,
    cfg: &ChannelConfig,
    enclave: &SigningKey,
) -> Result<u128> {
    let requests = [(42u64, 120u64), (310, 256), (18, 64)];
    let (mut prompt, mut completion, mut total) = (0u64, 0u64, 0u128);
    println!("usage (charges signed by a demo key in place of the enclave's metering):");
    for (i, (p, c)) in requests.iter().enumerate() {
        prompt += p;
        completion += c;
        total += u128::from(*p) * PROMPT_PRICE + u128::from(*c) * COMPLETION_PRICE;
        let signed = Charge {
            channel: channel.clone(),
            channel_id: cfg.channel_id,
            seqno: i as u64 + 1,
            cumulative: total,
            prompt_tokens: prompt,
            completion_tokens: completion,
            final_charge: false,
        }
        .sign(enclave)?;
        ledger.record_charge(&signed, EMULATOR_NOW)?;
        println!(
            "  request {}: {p} prompt + {c} completion tokens, cumulative {}",
            i + 1,
            ton_text(total)
        );
    }
    Ok(total)
}
