//! Where the enclave listens: TCP in development, AF_VSOCK inside a confidential VM.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};

/// A `--listen` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// `vsock:PORT` (any CID: the host reaches the guest through its own CID).
    Vsock(u32),
}

/// A `--listen` value that is neither `tcp:HOST:PORT` nor `vsock:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("listen address {found:?}: expected tcp:HOST:PORT or vsock:PORT")]
pub struct BadListenAddr {
    found: String,
}

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadListenAddr {
            found: s.to_owned(),
        };
        if let Some(hostport) = s.strip_prefix("tcp:") {
            let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(Self::Tcp(hostport.to_owned()))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            Ok(Self::Vsock(port.parse().map_err(|_| bad())?))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(hostport) => write!(f, "tcp:{hostport}"),
            Self::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// A connection from the shim.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// A bound listener of either kind.
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// AF_VSOCK, driven through tokio's readiness API.
    Vsock(AsyncFd<OwnedFd>),
}

impl Listener {
    /// Binds the address.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Self> {
        match addr {
            ListenAddr::Tcp(hostport) => {
                Ok(Self::Tcp(tokio::net::TcpListener::bind(hostport).await?))
            }
            ListenAddr::Vsock(port) => {
                let fd = vsock_listen(*port)?;
                // SAFETY: `fd` is an owned, open, non-blocking socket; AsyncFd takes
                // ownership and it stays open for as long as it is registered.
                let registered = unsafe { AsyncFd::register(fd) };
                Ok(Self::Vsock(
                    registered.map_err(|e| std::io::Error::other(e.to_string()))?,
                ))
            }
        }
    }

    /// The bound address in `--listen` syntax (with the real port when 0 was asked).
    pub fn local_addr(&self, asked: &ListenAddr) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| asked.to_string(), |a| format!("tcp:{a}")),
            Self::Vsock(_) => asked.to_string(),
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> std::io::Result<Box<dyn Conn>> {
        match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Self::Vsock(fd) => Ok(Box::new(vsock_accept(fd).await?)),
        }
    }
}

fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, flags, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: `addr` is an initialised sockaddr_vm and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

async fn vsock_accept(listener: &AsyncFd<OwnedFd>) -> std::io::Result<tokio::net::TcpStream> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|fd| {
            let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
            // SAFETY: accept4(2) on a listening descriptor we own; the peer address is
            // not needed, so both pointers are null as the man page allows.
            let raw = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    flags,
                )
            };
            if raw < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            }
        });
        if let Ok(result) = accepted {
            // A connected vsock is a stream socket: tokio's TCP stream drives it with the
            // same read/write/epoll calls (peer_addr and the like are never used on it).
            return tokio::net::TcpStream::from_std(std::net::TcpStream::from(result?));
        }
    }
}
