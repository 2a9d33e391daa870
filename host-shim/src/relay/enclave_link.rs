//! The shim's side of the link to the enclave: TCP in development, vsock in a VM.
//!
//! The shim opens one connection per evidence request and one per session, and moves
//! whole frames over it. It reads only the length prefix (bounded by the protocol's
//! maximum frame size before anything is allocated), never the contents.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrysalis_protocol::ProtocolError;
use chrysalis_protocol::{Envelope, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long connecting to the enclave may take before the shim reports it down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the enclave listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnclaveAddr {
    /// `tcp:HOST:PORT` (dev mode, or a VM with user networking).
    Tcp(String),
    /// `vsock:CID:PORT` (a confidential VM).
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The port the enclave listens on.
        port: u32,
    },
}

/// An `--enclave` value that is not `tcp:HOST:PORT` or `vsock:CID:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("enclave address {found:?}: expected tcp:HOST:PORT or vsock:CID:PORT")]
pub struct BadEnclaveAddr {
    found: String,
}

impl FromStr for EnclaveAddr {
    type Err = BadEnclaveAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEnclaveAddr {
            found: s.to_owned(),
        };
        if let Some(hostport) = s.strip_prefix("tcp:") {
            let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            return Ok(Self::Tcp(hostport.to_owned()));
        }
        if let Some(cidport) = s.strip_prefix("vsock:") {
            let (cid, port) = cidport.split_once(':').ok_or_else(bad)?;
            let cid = cid.parse().map_err(|_| bad())?;
            let port = port.parse().map_err(|_| bad())?;
            return Ok(Self::Vsock { cid, port });
        }
        Err(bad())
    }
}

impl fmt::Display for EnclaveAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(hostport) => write!(f, "tcp:{hostport}"),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// A byte stream to the enclave.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link for T {}

impl EnclaveAddr {
    /// Opens a connection, giving up after [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> std::io::Result<Box<dyn Link>> {
        let connecting = async {
            match self {
                Self::Tcp(hostport) => {
                    let s = tokio::net::TcpStream::connect(hostport).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Link>)
                }
                Self::Vsock { cid, port } => {
                    let s = super::vsock::connect(*cid, *port).await?;
                    Ok(Box::new(s) as Box<dyn Link>)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out")
            })?
    }
}

/// Checks that `bytes` is exactly one frame: a header whose length is under the
/// maximum and a body of exactly the announced length; a frame of the shim's protocol
/// version also gets the full header check (kind, flags, counter). A frame of another
/// version is relayed as it is, so the enclave can tell an old or new client which
/// versions differ, in a frame of the client's own version. The body is opaque to the
/// shim.
pub fn check_frame(bytes: &[u8]) -> Result<(), ProtocolError> {
    Envelope::check_exact(bytes).map(|_| ())
}

/// Writes one whole frame (already checked with [`check_frame`]).
pub async fn write_frame(
    link: &mut (impl AsyncWrite + Unpin),
    frame: &[u8],
) -> std::io::Result<()> {
    link.write_all(frame).await?;
    link.flush().await
}

/// Reads one whole frame, header included; `Ok(None)` when the enclave closed the
/// connection cleanly between frames. The length is bounded by the protocol's maximum
/// before the buffer is allocated.
pub async fn read_frame(link: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    match link.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    // Any version: the enclave answers a client of another version in that version.
    let parsed = Envelope::parse(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut frame = vec![0u8; parsed.frame_len()];
    frame[..HEADER_LEN].copy_from_slice(&header);
    link.read_exact(&mut frame[HEADER_LEN..]).await?;
    Ok(Some(frame))
}
