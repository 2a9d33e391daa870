//! Billing in the relay, and the settlement loop.
//!
//! The relay hands this module the frames it moves:
//!
//! - a client's plain [`ChannelBind`] goes on to the enclave, followed by a plain
//!   [`ChannelStatus`]: the deposit and paid amount read with `runGetMethod`, and the
//!   newest charge the ledger holds for the channel;
//! - an enclave's plain [`PlainMessage::Charge`] is verified and committed to the
//!   ledger (fsync'd) before the relay reads the next frame, so the bill and the
//!   receipt that follow reach the client only once the charge is durable. Charges are
//!   never forwarded to the client (it gets the same charge inside its sealed bill).
//!
//! The settlement loop opens its own connection to the ledger and, every
//! `--settle-interval-secs`, queues channels that cross the policy (amount or age)
//! and submits or confirms their settle messages ([`crate::ledger::Settler`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_protocol::billing::{ChannelBind, ChannelStatus, CHANNEL_WORKCHAIN};
use chrysalis_protocol::ton::SignedCharge;
use chrysalis_protocol::{ChargeBoc, Frame, FrameKind, PlainMessage, WireMessage};

use crate::ledger::{Ledger, LedgerError, Recorded, SettlementPolicy, Settler, TonCenter};

/// Billing options of `chrysalis-shim serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct BillingArgs {
    /// SQLite ledger of the enclave's signed charges (created if missing). With
    /// --ton-api, enables billing: channel deposits are reported to the enclave and
    /// charges are settled on TON.
    #[arg(long, value_name = "FILE", requires = "ton_api")]
    pub ledger: Option<PathBuf>,
    /// TON HTTP API in toncenter's v2 shape (sendBoc, runGetMethod), for example
    /// https://toncenter.com or the local emulator `node contracts/server.js`.
    #[arg(long, value_name = "URL", requires = "ledger")]
    pub ton_api: Option<String>,
    /// Settle a channel once this many nanotons are unsettled.
    #[arg(long, value_name = "NANOTON", default_value_t = 1_000_000_000)]
    pub settle_min_amount: u64,
    /// ... or once its oldest unsettled charge is this old.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub settle_max_age_secs: u64,
    /// Seconds between settlement rounds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub settle_interval_secs: u64,
}

/// The relay's billing state: the ledger and the TON endpoint.
pub struct Billing {
    ledger: Arc<Mutex<Ledger>>,
    path: PathBuf,
    api: TonCenter,
    policy: SettlementPolicy,
    interval: Duration,
}

/// What the relay does with an enclave frame.
#[derive(Debug, PartialEq, Eq)]
pub enum EnclaveFrame {
    /// Relay it to the client.
    Forward,
    /// A charge, committed (or covered by a newer one): do not relay it.
    Recorded,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The plain message in `bytes`, if it is one whole plain frame that decodes.
fn plain_message(bytes: &[u8]) -> Option<PlainMessage> {
    let (header, body) = Frame::parse_exact(bytes).ok()?;
    if header.kind != FrameKind::Plain {
        return None;
    }
    PlainMessage::from_wire(body).ok()
}

impl Billing {
    /// Opens the ledger when billing is configured; `None` when it is not.
    pub fn open(args: &BillingArgs) -> Result<Option<Self>, LedgerError> {
        let (Some(path), Some(url)) = (&args.ledger, &args.ton_api) else {
            return Ok(None);
        };
        Ok(Some(Self {
            ledger: Arc::new(Mutex::new(Ledger::open(path)?)),
            path: path.clone(),
            api: TonCenter::new(url),
            policy: SettlementPolicy {
                min_amount: u128::from(args.settle_min_amount),
                max_age: Duration::from_secs(args.settle_max_age_secs),
            },
            interval: Duration::from_secs(args.settle_interval_secs.max(1)),
        }))
    }

    /// Runs `f` on the ledger off the async threads (SQLite fsyncs block).
    async fn with_ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let ledger = Arc::clone(&self.ledger);
        tokio::task::spawn_blocking(move || {
            // A panic inside a ledger call leaves SQLite consistent (transactions
            // roll back), so a poisoned lock is still safe to use.
            let mut guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| LedgerError::Endpoint {
            endpoint: "ledger task".into(),
            message: e.to_string(),
        })?
    }

    /// Frames to send to the enclave right after a client's frame: a
    /// [`ChannelStatus`] after a [`ChannelBind`], nothing otherwise. A channel the
    /// endpoint cannot read is reported with a zero deposit (the enclave then refuses
    /// paid requests, saying so).
    pub async fn after_client_frame(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let Some(PlainMessage::ChannelBind(bind)) = plain_message(bytes) else {
            return Vec::new();
        };
        match self.status_for(&bind).await {
            Ok(status) => match PlainMessage::ChannelStatus(status).to_frame_bytes() {
                Ok(frame) => vec![frame],
                Err(e) => {
                    tracing::warn!(error = %e, "channel status could not be framed");
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "channel status unavailable");
                Vec::new()
            }
        }
    }

    async fn status_for(&self, bind: &ChannelBind) -> Result<ChannelStatus, LedgerError> {
        let config = bind.config()?;
        let address = config.address(CHANNEL_WORKCHAIN)?;
        let (deposited, paid) = self.api.channel_amounts(&address.to_hex()).await?;
        let (addr, cfg) = (address.clone(), config.clone());
        let latest = self
            .with_ledger(move |ledger| {
                ledger.register_channel(&addr, &cfg)?;
                ledger.latest_signed(&addr)
            })
            .await?;
        tracing::info!(channel = %address, deposited, paid, "channel status reported");
        Ok(ChannelStatus {
            channel: address.hash_part.into(),
            deposited,
            paid,
            latest_charge: latest.map(|boc| ChargeBoc { boc }),
        })
    }

    /// Commits a charge from the enclave; returns once it is on disk.
    async fn record(&self, charge: ChargeBoc) -> Result<(), LedgerError> {
        let signed = SignedCharge::from_boc(&charge.boc)?;
        let now = unix_now();
        let outcome = self
            .with_ledger(move |ledger| ledger.record_charge(&signed, now))
            .await;
        match outcome {
            Ok(Recorded::New | Recorded::Duplicate) => Ok(()),
            // A newer cumulative charge (from a concurrent session on the same
            // channel) already covers this one.
            Err(LedgerError::StaleCharge { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts the settlement loop on its own ledger connection.
    pub fn spawn_settler(&self) -> Result<tokio::task::JoinHandle<()>, LedgerError> {
        let mut ledger = Ledger::open(&self.path)?;
        let settler = Settler::new(self.api.clone(), self.policy);
        let interval = self.interval;
        Ok(tokio::spawn(async move {
            loop {
                match settler.round(&mut ledger, unix_now()).await {
                    Ok(r) if r.enqueued + r.sent + r.confirmed + r.failed > 0 => {
                        tracing::info!(
                            enqueued = r.enqueued,
                            sent = r.sent,
                            confirmed = r.confirmed,
                            failed = r.failed,
                            "settlement round"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "settlement round failed"),
                }
                tokio::time::sleep(interval).await;
            }
        }))
    }
}

/// Decides what to do with a frame from the enclave. Charges are committed when
/// billing is on and dropped with a warning when it is off; an error means the
/// charge could not be made durable, so the session must end before its receipt.
pub async fn enclave_frame(
    billing: Option<&Billing>,
    bytes: &[u8],
) -> Result<EnclaveFrame, LedgerError> {
    let Some(PlainMessage::Charge(charge)) = plain_message(bytes) else {
        return Ok(EnclaveFrame::Forward);
    };
    match billing {
        Some(billing) => billing.record(charge).await?,
        None => {
            tracing::warn!("the enclave sent a charge, but billing is off (--ledger, --ton-api)")
        }
    }
    Ok(EnclaveFrame::Recorded)
}
