//! `chrysalis pay`: build the payment-channel messages a client sends on TON.
//!
//! Each subcommand writes a BOC file. Without `--wallet-key` it is the message body,
//! and the command prints what a wallet needs beside it (destination, value, state
//! init), so any wallet can send it (for example through TON Connect). With
//! `--wallet-key` the file is a complete external message for a wallet v5r1 signed
//! with that key, ready for any TON API's `sendBoc`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use chrysalis_protocol::ton::{
    self, Cell, ChannelConfig, SignedCharge, StateInit, TonAddress, WalletV5, MIN_MESSAGE_FEE,
};
use clap::{Args as ClapArgs, Subcommand};
use ed25519_dalek::SigningKey;

/// Nanotons attached to control messages for fees; what is not used stays in the
/// channel's gas reserve and returns to the client at close.
const FEE_VALUE: u128 = 50_000_000;

/// Build payment-channel messages (deploy, top up, withdraw, close) as BOC files.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Deploy a channel with the enclave's key (from verified evidence) and deposit.
    Deploy(DeployArgs),
    /// Add to the deposit of an open channel.
    TopUp(AmountArgs),
    /// Take back what exceeds the settled amount plus the minimum stake.
    Withdraw(AmountArgs),
    /// Start a close (refund after the delay), finish one, or close cooperatively.
    Close(CloseArgs),
}

/// Options every subcommand shares.
#[derive(Debug, ClapArgs)]
struct Output {
    /// Where to write the BOC.
    #[arg(long)]
    out: PathBuf,
    /// File holding the wallet's 32-byte Ed25519 seed as hex: sign as a wallet v5r1
    /// external message instead of writing a bare body.
    #[arg(long)]
    wallet_key: Option<PathBuf>,
    /// The wallet's current seqno (0 also deploys the wallet).
    #[arg(long, default_value_t = 0)]
    seqno: u32,
    /// Unix time after which the wallet refuses the message (default: now + 10 min).
    #[arg(long)]
    valid_until: Option<u32>,
    /// Query id carried in the message body.
    #[arg(long, default_value_t = 0)]
    query_id: u64,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
struct DeployArgs {
    /// The client's wallet address (refunds go there; withdraw and close come from it).
    #[arg(long)]
    client: String,
    /// Where settled charges are paid.
    #[arg(long)]
    provider: String,
    /// The enclave's Ed25519 public key, hex, as bound in its attestation.
    #[arg(long)]
    enclave_key: String,
    /// Distinguishes channels between the same parties.
    #[arg(long, default_value_t = 0)]
    channel_id: u64,
    /// Seconds between requesting and finishing a close.
    #[arg(long, default_value_t = 86_400)]
    close_delay: u32,
    /// TON the client cannot withdraw while the channel is open, e.g. "1.5".
    #[arg(long, default_value = "0")]
    min_stake: String,
    /// TON to deposit, e.g. "10".
    #[arg(long)]
    deposit: String,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, ClapArgs)]
struct AmountArgs {
    /// The channel's address.
    #[arg(long)]
    channel: String,
    /// TON, e.g. "2.5".
    #[arg(long)]
    amount: String,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, ClapArgs)]
struct CloseArgs {
    /// The channel's address.
    #[arg(long)]
    channel: String,
    /// Finish a requested close after its delay (anyone may send this).
    #[arg(long, conflicts_with = "cooperative")]
    finish: bool,
    /// Close at once with the enclave's final signed charge (a BOC file).
    #[arg(long)]
    cooperative: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

/// One message to the channel, before it is written out.
struct Planned {
    kind: &'static str,
    to: TonAddress,
    value: u128,
    init: Option<StateInit>,
    body: Cell,
}

/// Parses a decimal TON amount ("1", "0.25", "1.000000001") into nanotons, exactly.
pub fn parse_ton(text: &str) -> Result<u128> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits_ok = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() || !digits_ok(whole) || !digits_ok(frac) {
        bail!("amount {text:?} is not a decimal number of TON, expected e.g. \"1.5\"");
    }
    if frac.len() > 9 {
        bail!(
            "amount {text:?} has {} decimals, at most 9 (nanotons) expected",
            frac.len()
        );
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().context("whole TON")?
    };
    let frac_nanos: u128 = format!("{frac:0<9}").parse().context("fraction")?;
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .with_context(|| format!("amount {text:?} is too large"))
}

fn parse_address(text: &str, what: &str) -> Result<TonAddress> {
    TonAddress::from_str(text).map_err(|e| {
        anyhow::anyhow!("{what} {text:?} is not a TON address (raw 0:hex or base64 expected): {e}")
    })
}

fn parse_key(text: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).context("enclave key is not hex")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("enclave key is {} bytes, 32 expected", b.len()))
}

fn plan(action: &Action) -> Result<Planned> {
    match action {
        Action::Deploy(a) => plan_deploy(a),
        Action::TopUp(a) => {
            let amount = parse_ton(&a.amount)?;
            Ok(Planned {
                kind: "top-up",
                to: parse_address(&a.channel, "channel")?,
                value: amount + MIN_MESSAGE_FEE + FEE_VALUE,
                init: None,
                body: ton::top_up_body(a.output.query_id, amount)?,
            })
        }
        Action::Withdraw(a) => Ok(Planned {
            kind: "withdraw",
            to: parse_address(&a.channel, "channel")?,
            value: FEE_VALUE,
            init: None,
            body: ton::withdraw_body(a.output.query_id, parse_ton(&a.amount)?)?,
        }),
        Action::Close(a) => plan_close(a),
    }
}

fn plan_deploy(a: &DeployArgs) -> Result<Planned> {
    let config = ChannelConfig {
        client: parse_address(&a.client, "client")?,
        provider: parse_address(&a.provider, "provider")?,
        enclave_key: parse_key(&a.enclave_key)?,
        channel_id: a.channel_id,
        close_delay: a.close_delay,
        min_stake: parse_ton(&a.min_stake)?,
    };
    let deposit = parse_ton(&a.deposit)?;
    Ok(Planned {
        kind: "deploy",
        to: config.address(0)?,
        value: deposit + MIN_MESSAGE_FEE + FEE_VALUE,
        init: Some(config.state_init()?),
        body: ton::top_up_body(a.output.query_id, deposit)?,
    })
}

fn plan_close(a: &CloseArgs) -> Result<Planned> {
    let to = parse_address(&a.channel, "channel")?;
    let q = a.output.query_id;
    let (kind, body) = match (&a.cooperative, a.finish) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the final charge {}", path.display()))?;
            let signed = SignedCharge::from_boc(&bytes).context("final charge")?;
            if signed.charge.channel != to {
                bail!(
                    "final charge is for channel {}, expected {}",
                    signed.charge.channel,
                    to
                );
            }
            if !signed.charge.final_charge {
                bail!("the charge's final bit is clear: the channel would refuse it (exit 110)");
            }
            (
                "cooperative-close",
                ton::cooperative_close_body(q, &signed)?,
            )
        }
        (None, true) => ("finish-close", ton::finish_close_body(q)?),
        (None, false) => ("request-close", ton::request_close_body(q)?),
    };
    Ok(Planned {
        kind,
        to,
        value: FEE_VALUE,
        init: None,
        body,
    })
}

fn output_of(action: &Action) -> &Output {
    match action {
        Action::Deploy(a) => &a.output,
        Action::TopUp(a) | Action::Withdraw(a) => &a.output,
        Action::Close(a) => &a.output,
    }
}

fn load_wallet(path: &PathBuf) -> Result<WalletV5> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading wallet key {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .context("wallet key file must hold a 32-byte seed as hex")?
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("wallet key is {} bytes, 32 expected", b.len()))?;
    Ok(WalletV5::new(&SigningKey::from_bytes(&seed))?)
}

fn now_plus_ten_minutes() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(now + 600).unwrap_or(u32::MAX)
}

/// Writes the BOC and returns the JSON summary.
fn write(planned: &Planned, out: &Output) -> Result<serde_json::Value> {
    let mut summary = serde_json::json!({
        "kind": planned.kind,
        "to": planned.to.to_base64_url(),
        "to_raw": planned.to.to_hex(),
        "value_nanotons": planned.value.to_string(),
        "body_boc_hex": hex::encode(ton::to_boc(&planned.body)?),
        "state_init_boc_hex": match &planned.init {
            Some(init) => serde_json::Value::String(hex::encode(ton::to_boc(&ton::state_init_cell(init)?)?)),
            None => serde_json::Value::Null,
        },
        "out": out.out.display().to_string(),
    });
    let bytes = match &out.wallet_key {
        None => ton::to_boc(&planned.body)?,
        Some(path) => {
            let wallet = load_wallet(path)?;
            let bounce = planned.init.is_none();
            let msg = ton::internal_message(
                &planned.to,
                planned.value,
                bounce,
                planned.init.as_ref(),
                &planned.body,
            )?;
            let valid_until = out.valid_until.unwrap_or_else(now_plus_ten_minutes);
            let ext = wallet.transfer(out.seqno, valid_until, &[msg], out.seqno == 0)?;
            summary["wallet"] = wallet.address().to_base64_url().into();
            summary["wallet_raw"] = wallet.address().to_hex().into();
            ton::to_boc(&ext)?
        }
    };
    std::fs::write(&out.out, &bytes).with_context(|| format!("writing {}", out.out.display()))?;
    Ok(summary)
}

fn print(summary: &serde_json::Value, json: bool) {
    if json {
        println!("{summary}");
        return;
    }
    let field = |k: &str| summary[k].as_str().unwrap_or("").to_string();
    println!("{}: wrote {}", field("kind"), field("out"));
    match summary.get("wallet").and_then(|w| w.as_str()) {
        Some(wallet) => println!(
            "  external message from wallet v5r1 {wallet}: submit it with any TON API's sendBoc"
        ),
        None => {
            println!("  message body for a wallet to send:");
            println!("  to    {}", field("to"));
            println!("  value {} nanotons", field("value_nanotons"));
            if let Some(init) = summary["state_init_boc_hex"].as_str() {
                println!("  state init (hex BOC) {init}");
            }
        }
    }
}

/// Runs `chrysalis pay`.
pub fn run(args: Args) -> ExitCode {
    let result = plan(&args.action).and_then(|p| write(&p, output_of(&args.action)));
    match result {
        Ok(summary) => {
            print(&summary, output_of(&args.action).json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chrysalis pay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ton;

    #[test]
    fn ton_amounts_parse_exactly() {
        assert_eq!(parse_ton("1").unwrap(), 1_000_000_000);
        assert_eq!(parse_ton("0.25").unwrap(), 250_000_000);
        assert_eq!(parse_ton(".5").unwrap(), 500_000_000);
        assert_eq!(parse_ton("1.000000001").unwrap(), 1_000_000_001);
        for bad in ["", ".", "1.0000000001", "-1", "1e9", "abc", "1.2.3"] {
            assert!(parse_ton(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
