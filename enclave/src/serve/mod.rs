//! `chrysalis-enclave serve`: evidence, sealed sessions and continuous batching.
//!
//! One tokio task per connection from the shim ([`session`]); one OS thread runs the
//! engine ([`scheduler`]). Plaintext exists only inside this process: logs carry
//! session ids, token counts and timings, never text.

mod billing;
mod engine;
#[allow(unsafe_code)] // AF_VSOCK through libc; every block has a SAFETY note.
mod listen;
mod llama_engine;
mod scheduler;
mod session;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrysalis_protocol::{ErrorCode, Evidence, SealedChannel, SessionAccept, SessionOpen, Usage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::attest::{self, CertOffer, EvidenceProvider, Identity, ProviderKind};
pub use listen::ListenAddr;
use scheduler::{Limits, SchedulerHandle};
use session::ConnError;

/// Options of `chrysalis-enclave serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the shim connects: tcp:HOST:PORT (development) or vsock:PORT (in a VM).
    /// Port 0 picks a free port; the bound address is printed on stdout.
    #[arg(long, value_name = "ADDR")]
    pub listen: ListenAddr,
    /// Model to serve: a model directory, or a name under $CHRYSALIS_HOME/models
    /// (for example smollm2-135m, installed by `cargo xtask fetch-model`).
    #[arg(long, value_name = "NAME_OR_DIR")]
    pub model: String,
    /// Refuse to serve unless the model's Merkle root is this one (64 hex digits). The
    /// guest's `/init` passes the root from the measured kernel command line.
    #[arg(long, value_name = "HEX", value_parser = parse_root)]
    pub model_root: Option<[u8; 32]>,
    /// Development mode: random keys and SIMULATED evidence. INSECURE: the evidence
    /// proves nothing; clients refuse it unless told --allow-simulated. Refused on
    /// SEV-SNP hardware, where the enclave always serves real evidence.
    #[arg(long)]
    pub dev: bool,
    /// Most sealed sessions open at once; more are refused with "overloaded".
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,
    /// Most prompt tokens per request (after the chat template).
    #[arg(long, default_value_t = 2048)]
    pub max_prompt_tokens: usize,
    /// Most tokens one request may generate.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: u32,
    /// Most sequences in one forward pass.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Seconds a connection may stay silent before it is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Prices, part of the measured configuration.
    #[command(flatten)]
    pub prices: billing::PriceArgs,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the kernels run: `cpu`, or `cuda[:N]` for NVIDIA GPU N (fails with "no
    /// CUDA driver" on a machine without one).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: chrysalis_kernels::cuda::DeviceSpec,
}

/// Settings every connection reads.
pub struct ServeConfig {
    /// Most sealed sessions at once.
    pub max_sessions: usize,
    /// Silence allowed before a connection is closed.
    pub idle_timeout: Duration,
}

/// Evidence handed out recently, by hash; a session may be opened once under each.
///
/// Bounded, and never evicting: when [`Self::CAPACITY`] unexpired entries are pending,
/// new evidence requests are refused (`Overloaded`) instead of pushing out evidence that
/// other clients are about to use, so a flood of evidence requests can delay new
/// clients but cannot burn pending ones. Each entry expires after [`Self::TTL`].
/// Producing evidence costs a signature (an SNP report from the secure processor), so
/// a token bucket also caps how fast any number of connections can ask for it.
/// Per-source limits belong to the shim, which alone sees client addresses
/// (`docs/protocol.md`, rate limits).
struct IssuedEvidence {
    entries: VecDeque<([u8; 32], Instant)>,
    /// Slots admitted whose report is still being produced (outside the lock).
    reserved: usize,
    /// Evidence requests allowed now (fractional tokens), refilled at [`Self::RATE`].
    tokens: f64,
    refilled: Instant,
}

/// Why evidence was not issued.
#[derive(Debug, PartialEq)]
enum EvidenceRefusal {
    /// Every slot holds unexpired evidence; the oldest expires after this long.
    Full(Duration),
    /// The issuing rate is exhausted; a token is back after this long.
    Rate(Duration),
}

impl std::fmt::Display for EvidenceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full(wait) => write!(
                f,
                "{} evidence requests are pending (each valid {} s); retry in {} s",
                IssuedEvidence::CAPACITY,
                IssuedEvidence::TTL.as_secs(),
                wait.as_secs().max(1)
            ),
            Self::Rate(wait) => write!(
                f,
                "evidence is issued at most {} per second (bursts of {}); retry in {} ms",
                IssuedEvidence::RATE,
                IssuedEvidence::BURST,
                wait.as_millis().max(1)
            ),
        }
    }
}

impl IssuedEvidence {
    /// Most outstanding evidence hashes kept.
    const CAPACITY: usize = 4096;
    /// How long a client has between fetching evidence and opening a session.
    const TTL: Duration = Duration::from_secs(120);
    /// Evidence issued per second, sustained.
    const RATE: f64 = 50.0;
    /// Evidence issued in a burst.
    const BURST: f64 = 200.0;

    fn new(now: Instant) -> Self {
        Self {
            entries: VecDeque::new(),
            reserved: 0,
            tokens: Self::BURST,
            refilled: now,
        }
    }

    /// Reserves room for one piece of evidence, or says why not and for how long.
    fn admit(&mut self, now: Instant) -> Result<(), EvidenceRefusal> {
        self.entries
            .retain(|(_, t)| now.duration_since(*t) < Self::TTL);
        if self.entries.len() + self.reserved >= Self::CAPACITY {
            let oldest = self.entries.front().map_or(now, |(_, t)| *t);
            return Err(EvidenceRefusal::Full(
                (oldest + Self::TTL).saturating_duration_since(now),
            ));
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * Self::RATE).min(Self::BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(EvidenceRefusal::Rate(Duration::from_secs_f64(
                (1.0 - self.tokens) / Self::RATE,
            )));
        }
        self.tokens -= 1.0;
        self.reserved += 1;
        Ok(())
    }

    /// Records evidence handed out at `now`, filling a slot [`Self::admit`] reserved.
    fn insert(&mut self, hash: [u8; 32], now: Instant) {
        self.reserved = self.reserved.saturating_sub(1);
        self.entries.push_back((hash, now));
    }

    /// Gives back a slot [`Self::admit`] reserved when no evidence came of it.
    fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Takes the entry for `hash` if it is pending and unexpired.
    fn take(&mut self, hash: &[u8; 32], now: Instant) -> bool {
        let found = self
            .entries
            .iter()
            .position(|(h, t)| h == hash && now.duration_since(*t) < Self::TTL);
        found.and_then(|i| self.entries.remove(i)).is_some()
    }
}

/// Everything connections share.
pub struct Server {
    identity: Identity,
    evidence: Box<dyn EvidenceProvider>,
    issued: Mutex<IssuedEvidence>,
    scheduler: SchedulerHandle,
    billing: billing::Billing,
    sessions: Arc<Semaphore>,
    config: ServeConfig,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Server {
    /// Evidence for `nonce`, recorded so one session may open under it; refused with
    /// `Overloaded` when too much evidence is pending or asked for too fast.
    fn evidence_for(&self, nonce: &[u8; 32]) -> Result<Evidence, (ErrorCode, String)> {
        let internal = |why: String| (ErrorCode::Internal, why);
        let store = || {
            self.issued
                .lock()
                .map_err(|_| internal("evidence store poisoned".to_owned()))
        };
        store()?
            .admit(Instant::now())
            .map_err(|why| (ErrorCode::Overloaded, why.to_string()))?;
        // The report takes the secure processor a while: produce it with the store
        // unlocked, so concurrent requests and session-opens do not queue behind it.
        let produced = self.identity.evidence(self.evidence.as_ref(), nonce);
        let mut issued = store()?;
        match produced {
            Ok(evidence) => {
                issued.insert(evidence.hash(), Instant::now());
                Ok(evidence)
            }
            Err(e) => {
                issued.release();
                Err(internal(e.to_string()))
            }
        }
    }

    /// A certificate bundle from the shim: kept only if it verifies our own report.
    fn offer_certificates(&self, certs: Vec<Vec<u8>>) {
        match self.evidence.offer_certificates(certs) {
            Ok(CertOffer::Kept) => tracing::info!(
                "certificates from the shim verified; attached to evidence from now on"
            ),
            Ok(CertOffer::Unchanged | CertOffer::Ignored) => {}
            Err(e) => tracing::warn!(error = %e, "certificates from the shim refused"),
        }
    }

    /// Answers a session-open under evidence this enclave issued (each evidence opens
    /// one session): a fresh ephemeral X25519 share and ML-KEM-768 encapsulation,
    /// signed over the transcript. The ephemeral secrets die inside this call.
    fn accept_session(
        &self,
        open: &SessionOpen,
        session_id: [u8; 16],
    ) -> Result<(SealedChannel, SessionAccept), String> {
        let known = self
            .issued
            .lock()
            .map(|mut issued| issued.take(&open.evidence_hash, Instant::now()))
            .unwrap_or(false);
        if !known {
            return Err("the session names evidence this enclave did not issue, or already used; fetch fresh evidence".to_owned());
        }
        SealedChannel::server(
            &mut rand_core::OsRng,
            &self.identity.keys,
            open,
            &open.evidence_hash,
            session_id,
        )
        .map_err(|e| e.to_string())
    }

    fn try_session_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sessions).try_acquire_owned().ok()
    }

    /// A fresh random session id: unique across reboots and not guessable, unlike the
    /// per-boot counter it replaces (which restarted at zero and told an observer how
    /// many sessions came before).
    fn next_session_id() -> [u8; 16] {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        id
    }

    /// Metering hook: every finished request's usage passes here. Billing (signed
    /// cumulative charges per channel) plugs in at this point.
    fn record_usage(&self, usage: Usage) {
        self.prompt_tokens
            .fetch_add(u64::from(usage.prompt_tokens), Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(u64::from(usage.completion_tokens), Ordering::Relaxed);
    }

    async fn read_idle<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, ConnError>>,
    ) -> Result<T, ConnError> {
        tokio::time::timeout(self.config.idle_timeout, read)
            .await
            .unwrap_or(Err(ConnError::Idle(self.config.idle_timeout.as_secs())))
    }
}

/// Parses `--model-root`: exactly 64 hex digits.
fn parse_root(text: &str) -> Result<[u8; 32], String> {
    let mut root = [0u8; 32];
    hex::decode_to_slice(text, &mut root).map_err(|e| {
        format!("expected 64 hex digits (a SHA-256 Merkle root), got {text:?}: {e}")
    })?;
    Ok(root)
}

/// Loads the model, starts the engine thread and serves until killed.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let provider = attest::select(args.dev, Vec::new())?;
    match provider.kind() {
        ProviderKind::Simulated => eprintln!(
            "chrysalis-enclave: DEV MODE: simulated evidence, random keys. INSECURE: nothing here is attested."
        ),
        ProviderKind::SevSnp => eprintln!(
            "chrysalis-enclave: SEV-SNP evidence; keys derived from the firmware's measurement-bound key"
        ),
    }
    let engine =
        llama_engine::LlamaEngine::load(&args.model, args.model_root, args.device, args.threads)?;
    let model_root = engine.model_root();
    let limits = Limits {
        max_prompt_tokens: args.max_prompt_tokens,
        max_new_tokens: args.max_new_tokens,
        max_batch: args.max_batch,
        ..Limits::default()
    };
    let scheduler =
        scheduler::spawn(engine, limits).context("could not start the engine thread")?;
    let server = Arc::new(Server {
        identity: Identity::from_provider(provider.as_ref(), model_root)?,
        evidence: provider,
        issued: Mutex::new(IssuedEvidence::new(Instant::now())),
        scheduler,
        billing: billing::Billing::new(
            args.prices.prices(),
            args.max_prompt_tokens,
            args.max_new_tokens,
        ),
        sessions: Arc::new(Semaphore::new(args.max_sessions)),
        config: ServeConfig {
            max_sessions: args.max_sessions,
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        },
        prompt_tokens: AtomicU64::new(0),
        completion_tokens: AtomicU64::new(0),
    });
    tokio::runtime::Runtime::new()?.block_on(accept_loop(server, &args.listen))
}

async fn accept_loop(server: Arc<Server>, addr: &ListenAddr) -> anyhow::Result<()> {
    let listener = listen::Listener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr}"))?;
    // Tests, the demo and launch scripts wait for this line.
    println!(
        "chrysalis-enclave: listening on {} (model {})",
        listener.local_addr(addr),
        server.scheduler.model_name()
    );
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = session::serve_connection(server, conn).await {
                tracing::info!(error = %e, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the store at `now` without touching the rate limit.
    fn fill(store: &mut IssuedEvidence, n: usize, now: Instant) {
        for i in 0..n {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            store.entries.push_back((hash, now));
        }
    }

    #[test]
    fn a_full_store_refuses_new_evidence_and_keeps_what_is_pending() {
        let t0 = Instant::now();
        let mut store = IssuedEvidence::new(t0);
        fill(&mut store, IssuedEvidence::CAPACITY, t0);
        let later = t0 + Duration::from_secs(30);
        match store.admit(later) {
            Err(EvidenceRefusal::Full(wait)) => {
                assert_eq!(wait, IssuedEvidence::TTL - Duration::from_secs(30))
            }
            other => panic!("expected Full, got {other:?}"),
        }
        // The flood did not push out the first client's evidence.
        assert!(store.take(&[0; 32], later));
        assert!(
            !store.take(&[0; 32], later),
            "evidence opens one session only"
        );
        // One slot is free again.
        assert_eq!(store.admit(later), Ok(()));
    }

    #[test]
    fn evidence_in_production_holds_its_slot_until_inserted_or_released() {
        let t0 = Instant::now();
        let mut store = IssuedEvidence::new(t0);
        fill(&mut store, IssuedEvidence::CAPACITY - 1, t0);
        assert_eq!(store.admit(t0), Ok(()), "the last slot is reserved");
        assert!(
            matches!(store.admit(t0), Err(EvidenceRefusal::Full(_))),
            "a reserved slot counts as taken while the report is produced"
        );
        store.release();
        assert_eq!(
            store.admit(t0),
            Ok(()),
            "a failed report gives its slot back"
        );
        store.insert([9; 32], t0);
        assert_eq!(store.entries.len(), IssuedEvidence::CAPACITY);
        assert!(matches!(store.admit(t0), Err(EvidenceRefusal::Full(_))));
        assert!(store.take(&[9; 32], t0));
    }

    #[test]
    fn evidence_expires() {
        let t0 = Instant::now();
        let mut store = IssuedEvidence::new(t0);
        store.insert([7; 32], t0);
        assert!(!store.take(&[7; 32], t0 + IssuedEvidence::TTL));
        fill(&mut store, IssuedEvidence::CAPACITY, t0);
        // Once expired, the full store has room again.
        assert_eq!(store.admit(t0 + IssuedEvidence::TTL), Ok(()));
    }

    #[test]
    fn the_issuing_rate_is_capped_and_refills() {
        let t0 = Instant::now();
        let mut store = IssuedEvidence::new(t0);
        let burst = IssuedEvidence::BURST as usize;
        for _ in 0..burst {
            assert_eq!(store.admit(t0), Ok(()));
        }
        assert!(matches!(store.admit(t0), Err(EvidenceRefusal::Rate(_))));
        let one_token = Duration::from_secs_f64(1.0 / IssuedEvidence::RATE);
        assert_eq!(store.admit(t0 + one_token), Ok(()));
        assert!(matches!(
            store.admit(t0 + one_token),
            Err(EvidenceRefusal::Rate(_))
        ));
    }
}
