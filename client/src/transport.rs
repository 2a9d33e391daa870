//! Reaching the shim: plain HTTP(S) for evidence, a WebSocket for sealed sessions.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

/// Largest evidence answer read (a report, a few certificates, keys).
const MAX_EVIDENCE_ANSWER: usize = 256 * 1024;

/// Longest total wait for evidence refused with `429 Too Many Requests`.
pub const EVIDENCE_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// The wait a `429` asks for: its `Retry-After` in whole seconds (1 to 30), else 1 s.
fn retry_after(resp: &reqwest::Response) -> std::time::Duration {
    let secs = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, 30);
    std::time::Duration::from_secs(secs)
}

/// Names a protocol-version mismatch with the enclave from a frame of another version:
/// both versions, what to do, and the enclave's own words when it sent an error.
pub fn version_mismatch(foreign: &chrysalis_protocol::ForeignFrame) -> String {
    let ours = chrysalis_protocol::PROTOCOL_VERSION;
    let theirs = foreign.version;
    let advice = if theirs < ours {
        format!("the enclave must be upgraded, or use a client that speaks v{theirs}")
    } else {
        "upgrade the client".to_owned()
    };
    let said = match &foreign.error {
        Some(e) => format!(" (the enclave said: {})", e.message),
        None => String::new(),
    };
    format!("enclave speaks protocol v{theirs}, this client speaks v{ours}: {advice}{said}")
}

/// A byte stream to the shim, TLS or not.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A WebSocket to the shim's session route.
pub type SessionSocket = WebSocketStream<Box<dyn Stream>>;

/// The shim's base URL and how to trust it.
#[derive(Clone)]
pub struct Endpoint {
    base: reqwest::Url,
    http: reqwest::Client,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// An endpoint for `url` (`http://` or `https://`). With `ca_cert`, HTTPS trusts
    /// only the certificates in that PEM file; otherwise the system's roots.
    pub fn new(url: &str, ca_cert: Option<&Path>) -> Result<Self, String> {
        let base = reqwest::Url::parse(url).map_err(|e| format!("bad --url {url:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(format!(
                "bad --url {url:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        let mut tls = None;
        if base.scheme() == "https" {
            let roots = root_store(ca_cert)?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            http = http.tls_backend_preconfigured(config.clone());
            tls = Some(Arc::new(config));
        }
        let http = http.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { base, http, tls })
    }

    /// The base URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.base
    }

    /// `POST /v1/evidence` with an encoded evidence request frame.
    ///
    /// A `429` (the shim's per-source evidence limit) is retried after its
    /// `Retry-After`, for at most [`EVIDENCE_RETRY_BUDGET`] in all: a burst of
    /// sessions from one machine then opens a little later instead of failing.
    pub async fn post_evidence(&self, frame: Vec<u8>) -> Result<Vec<u8>, String> {
        let url = self.base.join("/v1/evidence").map_err(|e| e.to_string())?;
        let mut waited = std::time::Duration::ZERO;
        loop {
            let resp = self
                .http
                .post(url.clone())
                .body(frame.clone())
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let retry_after = retry_after(&resp);
            let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            if body.len() > MAX_EVIDENCE_ANSWER {
                return Err(format!(
                    "{url}: answer of {} bytes, more than the {MAX_EVIDENCE_ANSWER} allowed",
                    body.len()
                ));
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS
                && waited + retry_after <= EVIDENCE_RETRY_BUDGET
            {
                tokio::time::sleep(retry_after).await;
                waited += retry_after;
                continue;
            }
            if !status.is_success() {
                return Err(format!(
                    "{url}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            return Ok(body.to_vec());
        }
    }

    /// Opens the WebSocket of `GET /v1/session`.
    pub async fn open_socket(&self) -> Result<SessionSocket, String> {
        let host = self.base.host_str().unwrap_or("localhost").to_owned();
        let port = self.base.port_or_known_default().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (stream, scheme): (Box<dyn Stream>, &str) = match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("server name {host:?}: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
                (Box::new(tls), "wss")
            }
            None => (Box::new(tcp), "ws"),
        };
        let url = format!("{scheme}://{host}:{port}/v1/session");
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(chrysalis_protocol::MAX_FRAME_LEN))
            .max_frame_size(Some(chrysalis_protocol::MAX_FRAME_LEN));
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .map_err(|e| describe_ws_error(&url, e))?;
        Ok(socket)
    }
}

fn describe_ws_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("{url}: {}: {}", resp.status(), body.trim())
        }
        other => format!("{url}: {other}"),
    }
}

fn root_store(ca_cert: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}
