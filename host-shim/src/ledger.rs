//! The billing ledger: signed charges in SQLite, settled on TON in batches.
//!
//! Three tables (WAL journal, `synchronous = FULL`, so a committed transaction survives
//! a power cut):
//!
//! - `charges`: every signed cumulative charge the enclave produced, in order (the
//!   receipt log). [`Ledger::record_charge`] commits a charge before it returns; the
//!   shim releases the matching receipt to the client only after that.
//! - `latest`: per channel, the newest charge and how much of it is queued for
//!   settlement.
//! - `outbox`: settlement messages (external `settle` BOCs) with their state:
//!   `pending` (built, not sent), `sent` (handed to the TON endpoint; outcome unknown
//!   until the chain shows it), `confirmed`, or `superseded` by a newer one.
//!
//! Settling is idempotent: before and after each send, [`Settler`] reads what the
//! contract has paid; a row whose amount the chain already covers is confirmed, not
//! resent. Resending after a crash is harmless anyway: the contract refuses a charge
//! that does not grow, so nothing is paid twice.

use std::path::Path;
use std::time::Duration;

use chrysalis_protocol::ton::{self, ChannelConfig, SignedCharge, TonAddress, TonError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Errors of the ledger and of settlement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed.
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A charge or message could not be built, parsed or verified.
    #[error("charge: {0}")]
    Ton(#[from] TonError),
    /// A charge names a channel that was never registered.
    #[error("unknown channel {0}: register it before recording charges")]
    UnknownChannel(String),
    /// A charge is older than the latest one recorded.
    #[error("charge seqno {found} for {channel} is not after the latest recorded seqno {latest}")]
    StaleCharge {
        /// The channel.
        channel: String,
        /// Seqno received.
        found: u64,
        /// Latest seqno recorded.
        latest: u64,
    },
    /// A newer charge asks for less than an older one.
    #[error("charge of {found} nanotons for {channel} is below the recorded {latest}")]
    DecreasingCharge {
        /// The channel.
        channel: String,
        /// Cumulative amount received.
        found: u128,
        /// Latest cumulative amount recorded.
        latest: u128,
    },
    /// Two different charges carry the same seqno.
    #[error("a different charge with seqno {seqno} is already recorded for {channel}")]
    ConflictingCharge {
        /// The channel.
        channel: String,
        /// The repeated seqno.
        seqno: u64,
    },
    /// An amount does not fit the database's 63-bit integers.
    #[error("amount {0} nanotons exceeds the ledger's limit of {max}", max = i64::MAX)]
    AmountTooLarge(u128),
    /// The TON endpoint failed or answered something unexpected.
    #[error("TON endpoint {endpoint}: {message}")]
    Endpoint {
        /// Base URL.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
}

type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// When to settle a channel: once the unsettled amount reaches `min_amount`, or once
/// the oldest unsettled charge is `max_age` old, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettlementPolicy {
    /// Nanotons owed before a settlement is worth its fee.
    pub min_amount: u128,
    /// Longest an unsettled charge waits.
    pub max_age: Duration,
}

/// What [`Ledger::record_charge`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Newly committed.
    New,
    /// The same charge was already recorded (a retry); nothing changed.
    Duplicate,
}

/// State of an outbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxState {
    /// Built, not yet handed to the endpoint.
    Pending,
    /// Handed to the endpoint at least once; outcome not yet seen on chain.
    Sent,
    /// The chain has paid at least this amount.
    Confirmed,
    /// A newer settlement for the channel replaced it before it was confirmed.
    Superseded,
}

impl OutboxState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Confirmed => "confirmed",
            Self::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Sent, Self::Confirmed, Self::Superseded]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// One settlement message in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// Channel address (raw form `0:hex`).
    pub channel: String,
    /// Seqno of the charge it settles.
    pub seqno: u64,
    /// Cumulative amount it settles.
    pub cumulative: u128,
    /// The external message, as a BOC.
    pub boc: Vec<u8>,
    /// Where it stands.
    pub state: OutboxState,
}

/// The latest charge of a channel, as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelBalance {
    /// Seqno of the newest charge.
    pub seqno: u64,
    /// Cumulative amount of the newest charge.
    pub cumulative: u128,
    /// Highest amount the chain has confirmed as paid.
    pub confirmed: u128,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    channel     TEXT PRIMARY KEY,
    enclave_key BLOB NOT NULL,
    channel_id  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    channel           TEXT NOT NULL REFERENCES channels(channel),
    seqno             INTEGER NOT NULL,
    cumulative        INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    signed_boc        BLOB NOT NULL,
    recorded_at       INTEGER NOT NULL,
    PRIMARY KEY (channel, seqno)
);
CREATE TABLE IF NOT EXISTS latest (
    channel            TEXT PRIMARY KEY REFERENCES channels(channel),
    seqno              INTEGER NOT NULL,
    cumulative         INTEGER NOT NULL,
    enqueued           INTEGER NOT NULL DEFAULT 0,
    confirmed          INTEGER NOT NULL DEFAULT 0,
    unsettled_since    INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL REFERENCES channels(channel),
    seqno       INTEGER NOT NULL,
    cumulative  INTEGER NOT NULL,
    boc         BLOB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'confirmed', 'superseded')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox(state) WHERE state IN ('pending', 'sent');
";

fn to_db(amount: u128) -> Result<i64> {
    i64::try_from(amount).map_err(|_| LedgerError::AmountTooLarge(amount))
}

fn from_db(value: i64) -> u128 {
    // Only non-negative values are ever written (see `to_db`).
    value.max(0) as u128
}

fn seqno_to_db(seqno: u64) -> Result<i64> {
    i64::try_from(seqno).map_err(|_| LedgerError::AmountTooLarge(u128::from(seqno)))
}

fn key(addr: &TonAddress) -> String {
    addr.to_hex()
}

/// The SQLite ledger.
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` with WAL and `synchronous = FULL`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Registers a channel so its charges can be verified. Idempotent.
    pub fn register_channel(&mut self, channel: &TonAddress, config: &ChannelConfig) -> Result<()> {
        self.conn.execute(
            "INSERT INTO channels (channel, enclave_key, channel_id) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel) DO NOTHING",
            params![
                key(channel),
                config.enclave_key.as_slice(),
                seqno_to_db(config.channel_id)?
            ],
        )?;
        Ok(())
    }

    fn channel_config(&self, channel: &str) -> Result<([u8; 32], u64)> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT enclave_key, channel_id FROM channels WHERE channel = ?1",
                [channel],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (key_bytes, id) = row.ok_or_else(|| LedgerError::UnknownChannel(channel.into()))?;
        let enclave_key: [u8; 32] = key_bytes
            .try_into()
            .map_err(|_| LedgerError::UnknownChannel(channel.into()))?;
        Ok((enclave_key, id as u64))
    }

    /// Verifies `signed` and commits it durably. Returns once the transaction is on
    /// disk: only then may the receipt go to the client. A retry of the same charge
    /// is a [`Recorded::Duplicate`]; an older or smaller one is refused.
    pub fn record_charge(&mut self, signed: &SignedCharge, now: u64) -> Result<Recorded> {
        let c = &signed.charge;
        let channel = key(&c.channel);
        let (enclave_key, channel_id) = self.channel_config(&channel)?;
        let config_view = ChannelConfig {
            client: TonAddress::NULL,
            provider: TonAddress::NULL,
            enclave_key,
            channel_id,
            close_delay: 0,
            min_stake: 0,
        };
        signed.verify_for(&c.channel, &config_view)?;
        let boc = signed.to_boc()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(outcome) = check_against_latest(&tx, &channel, signed, &boc)? {
            return Ok(outcome);
        }
        tx.execute(
            "INSERT INTO charges (channel, seqno, cumulative, prompt_tokens, completion_tokens, signed_boc, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                channel,
                seqno_to_db(c.seqno)?,
                to_db(c.cumulative)?,
                seqno_to_db(c.prompt_tokens)?,
                seqno_to_db(c.completion_tokens)?,
                boc,
                now as i64
            ],
        )?;
        tx.execute(
            "INSERT INTO latest (channel, seqno, cumulative, unsettled_since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(channel) DO UPDATE SET seqno = excluded.seqno, cumulative = excluded.cumulative,
                 unsettled_since = CASE WHEN latest.cumulative = latest.enqueued
                                        THEN excluded.unsettled_since ELSE latest.unsettled_since END",
            params![
                channel,
                seqno_to_db(c.seqno)?,
                to_db(c.cumulative)?,
                now as i64
            ],
        )?;
        tx.commit()?;
        Ok(Recorded::New)
    }

    /// Queues an external `settle` for every channel the policy says is due, and
    /// supersedes older unconfirmed rows for those channels. Returns the new rows.
    pub fn enqueue_due(&mut self, policy: &SettlementPolicy, now: u64) -> Result<Vec<OutboxEntry>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due = due_channels(&tx, policy, now)?;
        let mut created = Vec::with_capacity(due.len());
        for (channel, seqno) in due {
            let signed_boc: Vec<u8> = tx.query_row(
                "SELECT signed_boc FROM charges WHERE channel = ?1 AND seqno = ?2",
                params![channel, seqno_to_db(seqno)?],
                |r| r.get(0),
            )?;
            let signed = SignedCharge::from_boc(&signed_boc)?;
            let body = ton::settle_body(seqno, &signed)?;
            let boc = ton::to_boc(&ton::external_message(&signed.charge.channel, &body)?)?;
            let cumulative = to_db(signed.charge.cumulative)?;
            tx.execute(
                "UPDATE outbox SET state = 'superseded' WHERE channel = ?1 AND state IN ('pending', 'sent')",
                [&channel],
            )?;
            tx.execute(
                "INSERT INTO outbox (channel, seqno, cumulative, boc, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                params![channel, seqno_to_db(seqno)?, cumulative, boc, now as i64],
            )?;
            created.push(OutboxEntry {
                id: tx.last_insert_rowid(),
                channel: channel.clone(),
                seqno,
                cumulative: signed.charge.cumulative,
                boc,
                state: OutboxState::Pending,
            });
            tx.execute(
                "UPDATE latest SET enqueued = ?2, unsettled_since = NULL WHERE channel = ?1",
                params![channel, cumulative],
            )?;
        }
        tx.commit()?;
        Ok(created)
    }

    /// Rows still to be sent or confirmed, oldest first.
    pub fn open_outbox(&self) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, channel, seqno, cumulative, boc, state FROM outbox
             WHERE state IN ('pending', 'sent') ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let state: String = r.get(5)?;
            Ok(OutboxEntry {
                id: r.get(0)?,
                channel: r.get(1)?,
                seqno: r.get::<_, i64>(2)? as u64,
                cumulative: from_db(r.get(3)?),
                boc: r.get(4)?,
                state: OutboxState::parse(&state).unwrap_or(OutboxState::Pending),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Durably notes that a row is about to be handed to the endpoint.
    pub fn mark_sent(&mut self, id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1 WHERE id = ?1 AND state IN ('pending', 'sent')",
            [id],
        )?;
        Ok(())
    }

    /// Records that the chain has paid `paid` on the row's channel, which covers it.
    pub fn confirm(&mut self, id: i64, channel: &str, paid: u128) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE outbox SET state = 'confirmed', last_error = NULL WHERE id = ?1",
            [id],
        )?;
        tx.execute(
            "UPDATE latest SET confirmed = MAX(confirmed, ?2) WHERE channel = ?1",
            params![channel, to_db(paid)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps the last send error on a row for operators.
    pub fn note_error(&mut self, id: i64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    /// The newest charge of a channel, if any.
    pub fn balance(&self, channel: &TonAddress) -> Result<Option<ChannelBalance>> {
        Ok(self
            .conn
            .query_row(
                "SELECT seqno, cumulative, confirmed FROM latest WHERE channel = ?1",
                [key(channel)],
                |r| {
                    Ok(ChannelBalance {
                        seqno: r.get::<_, i64>(0)? as u64,
                        cumulative: from_db(r.get(1)?),
                        confirmed: from_db(r.get(2)?),
                    })
                },
            )
            .optional()?)
    }

    /// The newest signed charge of a channel as its BOC, if any (what the enclave
    /// resumes its count from after a restart).
    pub fn latest_signed(&self, channel: &TonAddress) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT c.signed_boc FROM latest l JOIN charges c
                     ON c.channel = l.channel AND c.seqno = l.seqno
                 WHERE l.channel = ?1",
                [key(channel)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every recorded charge of a channel as `(seqno, cumulative)`, in seqno order.
    pub fn charges(&self, channel: &TonAddress) -> Result<Vec<(u64, u128)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seqno, cumulative FROM charges WHERE channel = ?1 ORDER BY seqno")?;
        let rows = stmt.query_map([key(channel)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, from_db(r.get(1)?)))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// How many outbox rows are in `state`.
    pub fn outbox_count(&self, state: OutboxState) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1",
            [state.as_str()],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// Compares a new charge with the channel's latest. `Some` ends the recording early
/// (a duplicate); errors name what was found and what was expected.
fn check_against_latest(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    signed: &SignedCharge,
    boc: &[u8],
) -> Result<Option<Recorded>> {
    let c = &signed.charge;
    let existing: Option<Vec<u8>> = tx
        .query_row(
            "SELECT signed_boc FROM charges WHERE channel = ?1 AND seqno = ?2",
            params![channel, seqno_to_db(c.seqno)?],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(existing) = existing {
        if existing == boc {
            return Ok(Some(Recorded::Duplicate));
        }
        return Err(LedgerError::ConflictingCharge {
            channel: channel.into(),
            seqno: c.seqno,
        });
    }
    let latest: Option<(i64, i64)> = tx
        .query_row(
            "SELECT seqno, cumulative FROM latest WHERE channel = ?1",
            [channel],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((seqno, cumulative)) = latest {
        if c.seqno <= seqno as u64 {
            return Err(LedgerError::StaleCharge {
                channel: channel.into(),
                found: c.seqno,
                latest: seqno as u64,
            });
        }
        if c.cumulative < from_db(cumulative) {
            return Err(LedgerError::DecreasingCharge {
                channel: channel.into(),
                found: c.cumulative,
                latest: from_db(cumulative),
            });
        }
    }
    Ok(None)
}

/// Channels whose unsettled amount or age crosses the policy: `(channel, seqno)`.
fn due_channels(
    tx: &rusqlite::Transaction<'_>,
    policy: &SettlementPolicy,
    now: u64,
) -> Result<Vec<(String, u64)>> {
    let oldest_allowed = now.saturating_sub(policy.max_age.as_secs()) as i64;
    let mut stmt = tx.prepare(
        "SELECT channel, seqno FROM latest
         WHERE cumulative > enqueued
           AND (cumulative - enqueued >= ?1 OR unsettled_since <= ?2)
         ORDER BY channel",
    )?;
    let rows = stmt.query_map(
        params![
            to_db(policy.min_amount.min(i64::MAX as u128))?,
            oldest_allowed
        ],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A TON HTTP API endpoint in toncenter's v2 shape (`sendBoc`, `runGetMethod`).
#[derive(Clone, Debug)]
pub struct TonCenter {
    base: String,
    http: reqwest::Client,
}

impl TonCenter {
    /// An endpoint at `base` (for example `http://127.0.0.1:8081`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap_or_default(),
        }
    }

    fn error(&self, message: impl Into<String>) -> LedgerError {
        LedgerError::Endpoint {
            endpoint: self.base.clone(),
            message: message.into(),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.error(format!("{path}: {e}")))?;
        let value: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| self.error(format!("{path}: response is not JSON: {e}")))?;
        if value["ok"] != serde_json::Value::Bool(true) {
            let err = value["error"].as_str().unwrap_or("no error text");
            return Err(self.error(format!("{path} refused: {err}")));
        }
        Ok(value["result"].clone())
    }

    /// Submits a BOC; an error means the endpoint refused or did not answer.
    pub async fn send_boc(&self, boc: &[u8]) -> Result<()> {
        use base64::Engine as _;
        let boc = base64::engine::general_purpose::STANDARD.encode(boc);
        self.post("/api/v2/sendBoc", serde_json::json!({ "boc": boc }))
            .await
            .map(|_| ())
    }

    /// The channel's `channel_state` getter: `(deposited, paid)` in nanotons.
    pub async fn channel_amounts(&self, channel: &str) -> Result<(u128, u128)> {
        let result = self
            .post(
                "/api/v2/runGetMethod",
                serde_json::json!({ "address": channel, "method": "channel_state", "stack": [] }),
            )
            .await?;
        if result["exit_code"].as_i64() != Some(0) {
            return Err(self.error(format!(
                "channel_state on {channel} exited with {}, expected 0",
                result["exit_code"]
            )));
        }
        let num = |i: usize| -> Result<u128> {
            let hex = result["stack"][i][1]
                .as_str()
                .and_then(|s| s.strip_prefix("0x"))
                .ok_or_else(|| self.error(format!("stack entry {i} is not a number")))?;
            u128::from_str_radix(hex, 16)
                .map_err(|_| self.error(format!("stack entry {i} is not a u128: {hex}")))
        };
        Ok((num(0)?, num(1)?))
    }
}

/// Drives the outbox against a TON endpoint.
pub struct Settler {
    api: TonCenter,
    policy: SettlementPolicy,
}

/// What one settlement round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Rows newly queued.
    pub enqueued: usize,
    /// Rows handed to the endpoint.
    pub sent: usize,
    /// Rows confirmed on chain.
    pub confirmed: usize,
    /// Rows that failed this round and stay open.
    pub failed: usize,
}

impl Settler {
    /// A settler for `api` with `policy`.
    pub fn new(api: TonCenter, policy: SettlementPolicy) -> Self {
        Self { api, policy }
    }

    /// Queues what is due, then sends or confirms every open row. Safe to run again
    /// after a crash at any point: rows the chain already covers are only confirmed.
    pub async fn round(&self, ledger: &mut Ledger, now: u64) -> Result<RoundReport> {
        let mut report = RoundReport {
            enqueued: ledger.enqueue_due(&self.policy, now)?.len(),
            ..RoundReport::default()
        };
        for row in ledger.open_outbox()? {
            if self.confirm_if_paid(ledger, &row).await? {
                report.confirmed += 1;
                continue;
            }
            ledger.mark_sent(row.id)?;
            report.sent += 1;
            let sent = self.api.send_boc(&row.boc).await;
            if self.confirm_if_paid(ledger, &row).await? {
                report.confirmed += 1;
            } else {
                report.failed += 1;
                let why = sent.err().map(|e| e.to_string());
                ledger.note_error(row.id, why.as_deref().unwrap_or("not yet on chain"))?;
            }
        }
        Ok(report)
    }

    async fn confirm_if_paid(&self, ledger: &mut Ledger, row: &OutboxEntry) -> Result<bool> {
        let (_, paid) = self.api.channel_amounts(&row.channel).await?;
        if paid >= row.cumulative {
            ledger.confirm(row.id, &row.channel, paid)?;
            return Ok(true);
        }
        Ok(false)
    }
}
