//! Connecting to the enclave over AF_VSOCK (the confidential VM's virtio socket).
//!
//! tokio has no vsock type, so the socket is made with libc and handed to tokio as a
//! stream socket: reads and writes on a connected vsock are plain `recv`/`send`, which
//! is all the relay uses. Not testable on hosts without `/dev/vhost-vsock`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Connects to `cid:port` and returns a tokio stream over the socket.
pub async fn connect(cid: u32, port: u32) -> std::io::Result<tokio::net::TcpStream> {
    let fd = tokio::task::spawn_blocking(move || connect_blocking(cid, port))
        .await
        .map_err(std::io::Error::other)??;
    let std_stream = std::net::TcpStream::from(fd);
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}

fn connect_blocking(cid: u32, port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a properly initialised sockaddr_vm and the length matches it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}
