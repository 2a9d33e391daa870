//! `chrysalis-shim serve`: the public HTTP API in front of the enclave.
//!
//! # HTTP API
//!
//! | route | what it does |
//! |---|---|
//! | `POST /v1/evidence` | body: an encoded evidence request (it carries the client's nonce); answer: the enclave's encoded evidence, `application/octet-stream`; `429` with `Retry-After` when the client's source is over its evidence limit |
//! | `GET /v1/session` | WebSocket upgrade; then every binary message from the client is one protocol frame for the enclave, and every frame from the enclave is one binary message back |
//! | `GET /healthz` | `200 ok` when the enclave accepts a connection, `503` naming the address otherwise |
//! | `GET /metrics` | Prometheus text: sessions, frames, bytes, evidence requests, errors, enclave reachability |
//!
//! Each evidence request and each session gets its own connection to the enclave, so a
//! restarted enclave is picked up by the next request without any state to repair: a
//! session that was open when the enclave went away is closed with WebSocket code 1011
//! and a reason that says the enclave is unreachable (the shim checks when the enclave
//! side ends a session, and logs it), and `/healthz` says 503 until it is back.
//!
//! Evidence requests are limited per client source ([`chrysalis_shim::limit`]): on
//! `POST /v1/evidence`, and on a session's WebSocket, where a plain evidence request is
//! answered by the enclave just the same (over the limit, the session is closed with
//! code 1013, "try again later"). A refusal is logged with the source, never the
//! request.
//!
//! The shim holds no key and parses nothing but frame lengths and plain messages:
//! confidentiality does not depend on it, and its logs and metrics carry sizes,
//! counts and client sources only.

mod enclave_link;
mod metrics;
mod tls;
mod vsock;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Router;
use chrysalis_shim::limit::{is_evidence_request, EvidenceLimiter, Limits, Refusal, Source};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;

pub use enclave_link::EnclaveAddr;
use enclave_link::{check_frame, read_frame, write_frame, Link};
use metrics::Metrics;

/// Largest evidence request body accepted (a request holds a version and a nonce).
const MAX_EVIDENCE_REQUEST: usize = 4096;
/// How long the enclave may take to produce evidence.
const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a liveness probe's connection must stay open for the enclave to count as up.
const LIVENESS_WINDOW: Duration = Duration::from_millis(250);

/// Options of `chrysalis-shim serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the enclave listens: tcp:HOST:PORT (dev mode) or vsock:CID:PORT (a VM).
    #[arg(long, value_name = "ADDR")]
    pub enclave: EnclaveAddr,
    /// Address of the public HTTP API.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain: serve HTTPS (rustls) instead of plain HTTP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Billing: ledger, TON endpoint, settlement policy.
    #[command(flatten)]
    pub billing: chrysalis_shim::settle::BillingArgs,
    /// SEV-SNP: the VCEK handed to the enclave (file, or AMD's KDS with a disk cache).
    #[command(flatten)]
    pub vcek: chrysalis_shim::vcek::VcekArgs,
    /// Evidence requests per client source.
    #[command(flatten)]
    pub evidence_limits: chrysalis_shim::limit::EvidenceLimitArgs,
}

/// Shared state of every handler.
struct Shim {
    enclave: EnclaveAddr,
    metrics: Metrics,
    /// Ledger and TON endpoint, when billing is configured.
    billing: Option<chrysalis_shim::settle::Billing>,
    /// The VCEK bundle sent to the enclave ahead of each evidence request.
    certs: chrysalis_shim::vcek::CertSource,
    /// Evidence token buckets per client source. A plain mutex: held for a map
    /// lookup (a scan of the table at most once per refill when it is full), never
    /// across an await.
    evidence_limiter: Mutex<EvidenceLimiter>,
}

/// Runs the API until the process is stopped.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let limits = Limits::from_args(&args.evidence_limits)
        .context("evidence limits out of range (see --help)")?;
    let shim = Arc::new(Shim {
        enclave: args.enclave.clone(),
        metrics: Metrics::default(),
        billing: chrysalis_shim::settle::Billing::open(&args.billing)
            .context("could not open the billing ledger")?,
        certs: chrysalis_shim::vcek::CertSource::new(&args.vcek)
            .context("could not read the VCEK")?,
        evidence_limiter: Mutex::new(EvidenceLimiter::new(limits)),
    });
    tokio::spawn(provision_certs(Arc::clone(&shim)));
    if let Some(billing) = &shim.billing {
        billing.spawn_settler()?;
    }
    // Handlers need the peer's address for the per-source evidence limits.
    let app = router(shim).into_make_service_with_connect_info::<Peer>();
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let local = tcp.local_addr()?;
    tracing::info!(
        rate_per_s = limits.rate,
        burst = limits.burst,
        max_sources = limits.max_sources,
        "evidence limits per client source"
    );
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let listener = tls::TlsListener::new(tcp, cert, key)?;
            // Tests and scripts wait for this line.
            println!(
                "chrysalis-shim: listening on https://{local} (enclave {})",
                args.enclave
            );
            axum::serve(listener, app).await?;
        }
        _ => {
            println!(
                "chrysalis-shim: listening on http://{local} (enclave {})",
                args.enclave
            );
            axum::serve(tcp, app).await?;
        }
    }
    Ok(())
}

/// The client's address as the listener accepted it (plain TCP or after TLS): the
/// source the evidence limits charge. A type of our own because axum provides this
/// only for its own TCP listener, and the orphan rule forbids adding it to
/// `SocketAddr` for ours.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

fn router(shim: Arc<Shim>) -> Router {
    Router::new()
        .route(
            "/v1/evidence",
            post(evidence).layer(DefaultBodyLimit::max(MAX_EVIDENCE_REQUEST)),
        )
        .route("/v1/session", get(session))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(shim)
}

impl Shim {
    /// Connects to the enclave, recording whether it answered.
    async fn connect(&self) -> Result<Box<dyn Link>, Response> {
        match self.enclave.connect().await {
            Ok(link) => {
                self.metrics.enclave_reached(true);
                Ok(link)
            }
            Err(e) => {
                self.metrics.enclave_reached(false);
                tracing::warn!(enclave = %self.enclave, error = %e, "enclave unreachable");
                Err((
                    StatusCode::BAD_GATEWAY,
                    format!("enclave unreachable at {}: {e}\n", self.enclave),
                )
                    .into_response())
            }
        }
    }
}

impl Shim {
    /// Whether the enclave is alive: it accepts a connection and keeps it open for
    /// [`LIVENESS_WINDOW`]. An accepted connection alone proves little: a process being
    /// killed may close its sessions before its listening socket, which then still
    /// completes handshakes and resets them a moment later.
    async fn enclave_alive(&self) -> bool {
        let Ok(mut link) = self.connect().await else {
            return false;
        };
        let mut byte = [0u8; 1];
        let alive = match tokio::time::timeout(LIVENESS_WINDOW, link.read(&mut byte)).await {
            Err(_silent_and_open) => true,
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
        };
        if !alive {
            self.metrics.enclave_reached(false);
            tracing::warn!(enclave = %self.enclave, "enclave unreachable: it closed a probe connection (stopped or restarting)");
        }
        alive
    }
}

impl Shim {
    /// Charges one evidence request to `peer`'s source. Over the limit, counts and
    /// logs the refusal (the source and the wait, nothing of the request; a flood is
    /// logged once per run, the rest only counted) and returns it with its
    /// explanation for the client.
    fn admit_evidence(&self, peer: SocketAddr) -> Result<(), (Refusal, String)> {
        let source = Source::of(peer.ip());
        let mut limiter = self
            .evidence_limiter
            .lock()
            // The limiter's state is valid between any two statements: keep using it.
            .unwrap_or_else(PoisonError::into_inner);
        let Err(refusal) = limiter.admit(source, Instant::now()) else {
            return Ok(());
        };
        let why = refusal.explain(limiter.limits());
        drop(limiter);
        Metrics::inc(&self.metrics.evidence_refused_total);
        let retry_after_s = refusal.retry_after_secs();
        if refusal.is_first() {
            tracing::warn!(%source, retry_after_s, why = %why, "evidence request refused");
        } else {
            tracing::debug!(%source, retry_after_s, "evidence request refused");
        }
        Err((refusal, why))
    }
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds) and the explanation.
fn too_many_requests(refusal: &Refusal, why: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, refusal.retry_after_secs().to_string())],
        format!("{why}\n"),
    )
        .into_response()
}

async fn evidence(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    body: Bytes,
) -> Response {
    Metrics::inc(&shim.metrics.evidence_requests_total);
    // Before anything else: a refused request costs the shim a map lookup and the
    // enclave nothing, whatever its body.
    if let Err((refusal, why)) = shim.admit_evidence(peer) {
        return too_many_requests(&refusal, &why);
    }
    if let Err(e) = check_frame(&body) {
        Metrics::inc(&shim.metrics.client_errors_total);
        return (
            StatusCode::BAD_REQUEST,
            format!("evidence request is not one frame: {e}\n"),
        )
            .into_response();
    }
    let mut link = match shim.connect().await {
        Ok(link) => link,
        Err(resp) => return resp,
    };
    let exchange = async {
        if let Some(bundle) = shim.certs.frame() {
            write_frame(&mut link, &bundle).await?;
        }
        write_frame(&mut link, &body).await?;
        read_frame(&mut link).await
    };
    match tokio::time::timeout(EVIDENCE_TIMEOUT, exchange).await {
        Ok(Ok(Some(answer))) => {
            if let Some(report) = shim.certs.report_needing_certs(&answer) {
                let shim = Arc::clone(&shim);
                tokio::spawn(async move { shim.certs.learn(&report).await });
            }
            tracing::info!(
                request_bytes = body.len(),
                answer_bytes = answer.len(),
                "evidence relayed"
            );
            ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
        }
        Ok(Ok(None)) => bad_gateway(&shim, "enclave closed the connection without answering"),
        Ok(Err(e)) => bad_gateway(&shim, &format!("enclave link failed: {e}")),
        Err(_) => bad_gateway(&shim, "enclave did not answer within 30 s"),
    }
}

/// Asks the enclave for evidence once at start, so that on SNP the VCEK bundle for its
/// chip and TCB is ready before the first client asks (later answers retry).
async fn provision_certs(shim: Arc<Shim>) {
    let request =
        chrysalis_protocol::PlainMessage::EvidenceRequest(chrysalis_protocol::EvidenceRequest {
            nonce: [0; 32],
        });
    let (Ok(request), Ok(mut link)) = (request.to_frame_bytes(), shim.enclave.connect().await)
    else {
        return;
    };
    let exchange = async {
        write_frame(&mut link, &request).await?;
        read_frame(&mut link).await
    };
    if let Ok(Ok(Some(answer))) = tokio::time::timeout(EVIDENCE_TIMEOUT, exchange).await {
        if let Some(report) = shim.certs.report_needing_certs(&answer) {
            shim.certs.learn(&report).await;
        }
    }
}

fn bad_gateway(shim: &Shim, why: &str) -> Response {
    Metrics::inc(&shim.metrics.enclave_disconnects_total);
    tracing::warn!(why, "evidence request failed");
    (StatusCode::BAD_GATEWAY, format!("{why}\n")).into_response()
}

async fn session(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Connect before upgrading, so an unreachable enclave is a plain 502 the client can read.
    let link = match shim.connect().await {
        Ok(link) => link,
        Err(resp) => return resp,
    };
    let max = chrysalis_protocol::MAX_FRAME_LEN;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| relay(shim, ws, link, peer))
}

/// Moves frames both ways until either side ends; the other side is then closed. A
/// plain evidence request from the client is charged to `peer` like one on
/// `POST /v1/evidence`; over the limit, the session is closed with 1013.
async fn relay(shim: Arc<Shim>, ws: WebSocket, link: Box<dyn Link>, peer: SocketAddr) {
    let m = &shim.metrics;
    Metrics::inc(&m.sessions_total);
    m.sessions_active.fetch_add(1, Ordering::Relaxed);
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut from_enclave, mut to_enclave) = tokio::io::split(link);

    let (ended, close_code): (Cow<'static, str>, Option<u16>) = {
        let upstream = async {
            while let Some(Ok(msg)) = ws_rx.next().await {
                match msg {
                    Message::Binary(frame) => {
                        if let Err(e) = check_frame(&frame) {
                            Metrics::inc(&m.client_errors_total);
                            tracing::info!(error = %e, "client frame refused");
                            return (Cow::Borrowed("client sent a malformed frame"), Some(1008));
                        }
                        if is_evidence_request(&frame) {
                            if let Err((_, mut why)) = shim.admit_evidence(peer) {
                                // 1013: "try again later"; the reason names the wait,
                                // within the 123 bytes a close reason holds (ASCII).
                                why.truncate(123);
                                return (Cow::Owned(why), Some(1013));
                            }
                        }
                        Metrics::inc(&m.frames_to_enclave_total);
                        Metrics::add(&m.bytes_to_enclave_total, frame.len());
                        if write_frame(&mut to_enclave, &frame).await.is_err() {
                            return (Cow::Borrowed("enclave connection lost"), Some(1011));
                        }
                        if let Some(billing) = &shim.billing {
                            for extra in billing.after_client_frame(&frame).await {
                                if write_frame(&mut to_enclave, &extra).await.is_err() {
                                    return (Cow::Borrowed("enclave connection lost"), Some(1011));
                                }
                            }
                        }
                    }
                    Message::Close(_) => return (Cow::Borrowed("client closed"), None),
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Text(_) => {
                        Metrics::inc(&m.client_errors_total);
                        return (
                            Cow::Borrowed("client sent a text message; frames are binary"),
                            Some(1003),
                        );
                    }
                }
            }
            (Cow::Borrowed("client went away"), None)
        };
        let downstream = async {
            loop {
                match read_frame(&mut from_enclave).await {
                    Ok(Some(frame)) => {
                        // A charge is committed here, before the next frame (its bill
                        // and receipt) is read, and is not relayed.
                        use chrysalis_shim::settle::{enclave_frame, EnclaveFrame};
                        match enclave_frame(shim.billing.as_ref(), &frame).await {
                            Ok(EnclaveFrame::Forward) => {}
                            Ok(EnclaveFrame::Recorded) => continue,
                            Err(e) => {
                                tracing::error!(error = %e, "charge not recorded; session closed before its receipt");
                                return ("the provider could not record the charge", Some(1011));
                            }
                        }
                        Metrics::inc(&m.frames_to_client_total);
                        Metrics::add(&m.bytes_to_client_total, frame.len());
                        if ws_tx.send(Message::Binary(frame.into())).await.is_err() {
                            return ("client went away", None);
                        }
                    }
                    Ok(None) => return ("enclave closed the session", Some(1000)),
                    Err(_) => return ("enclave connection lost", Some(1011)),
                }
            }
        };
        tokio::select! {
            ended = upstream => ended,
            (why, code) = downstream => (why.into(), code),
        }
    };
    let (ended, close_code) = explain_enclave_end(&shim, ended, close_code).await;
    if close_code == Some(1011) {
        Metrics::inc(&m.enclave_disconnects_total);
    }
    if let Some(code) = close_code {
        let frame = CloseFrame {
            code,
            reason: ended.as_ref().into(),
        };
        let _ = ws_tx.send(Message::Close(Some(frame))).await;
    }
    m.sessions_active.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(ended = %ended, "session relay finished");
}

/// When the enclave's side ended a session, checks whether the enclave is still
/// there: a session that ended because the enclave stopped or restarted is reported as
/// such (in the log, the metrics and the close reason the client reads), not as an
/// ordinary end. A close reason must fit in 123 bytes.
async fn explain_enclave_end(
    shim: &Shim,
    ended: Cow<'static, str>,
    close_code: Option<u16>,
) -> (Cow<'static, str>, Option<u16>) {
    let enclave_side = matches!(close_code, Some(1000 | 1011));
    if enclave_side && !shim.enclave_alive().await {
        (
            "enclave unreachable: it stopped or restarted; verify it again and open a new session"
                .into(),
            Some(1011),
        )
    } else {
        (ended, close_code)
    }
}

async fn healthz(State(shim): State<Arc<Shim>>) -> Response {
    match shim.connect().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("enclave unreachable at {}\n", shim.enclave),
        )
            .into_response(),
    }
}

async fn metrics_text(State(shim): State<Arc<Shim>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shim.metrics.render(),
    )
        .into_response()
}
