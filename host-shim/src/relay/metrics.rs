//! The shim's counters, rendered as Prometheus text.
//!
//! Only sizes and counts: the shim never sees plaintext, and nothing here could carry
//! it (no labels come from request data).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters shared by every handler.
#[derive(Default)]
pub struct Metrics {
    /// Sessions opened since start.
    pub sessions_total: AtomicU64,
    /// Sessions relaying now.
    pub sessions_active: AtomicU64,
    /// Evidence requests relayed.
    pub evidence_requests_total: AtomicU64,
    /// Evidence requests refused by the per-source limits (HTTP and in sessions).
    pub evidence_refused_total: AtomicU64,
    /// Frames relayed client to enclave.
    pub frames_to_enclave_total: AtomicU64,
    /// Frames relayed enclave to client.
    pub frames_to_client_total: AtomicU64,
    /// Bytes relayed client to enclave.
    pub bytes_to_enclave_total: AtomicU64,
    /// Bytes relayed enclave to client.
    pub bytes_to_client_total: AtomicU64,
    /// Connections to the enclave that failed.
    pub enclave_connect_errors_total: AtomicU64,
    /// Enclave connections that ended while a session was relaying.
    pub enclave_disconnects_total: AtomicU64,
    /// Client input refused (oversized or non-binary frames, bad requests).
    pub client_errors_total: AtomicU64,
    /// Whether the last attempt to reach the enclave worked.
    pub enclave_up: AtomicBool,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records whether the enclave answered, and counts a failure.
    pub fn enclave_reached(&self, up: bool) {
        let was_up = self.enclave_up.swap(up, Ordering::Relaxed);
        if !up {
            Self::inc(&self.enclave_connect_errors_total);
        }
        if was_up != up {
            tracing::warn!(enclave_up = up, "enclave reachability changed");
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 12] = [
            (
                "chrysalis_shim_sessions_total",
                "counter",
                "sessions opened",
                load(&self.sessions_total),
            ),
            (
                "chrysalis_shim_sessions_active",
                "gauge",
                "sessions relaying now",
                load(&self.sessions_active),
            ),
            (
                "chrysalis_shim_evidence_requests_total",
                "counter",
                "evidence requests relayed",
                load(&self.evidence_requests_total),
            ),
            (
                "chrysalis_shim_evidence_refused_total",
                "counter",
                "evidence requests refused by the per-source limits",
                load(&self.evidence_refused_total),
            ),
            (
                "chrysalis_shim_frames_to_enclave_total",
                "counter",
                "frames relayed client to enclave",
                load(&self.frames_to_enclave_total),
            ),
            (
                "chrysalis_shim_frames_to_client_total",
                "counter",
                "frames relayed enclave to client",
                load(&self.frames_to_client_total),
            ),
            (
                "chrysalis_shim_bytes_to_enclave_total",
                "counter",
                "bytes relayed client to enclave",
                load(&self.bytes_to_enclave_total),
            ),
            (
                "chrysalis_shim_bytes_to_client_total",
                "counter",
                "bytes relayed enclave to client",
                load(&self.bytes_to_client_total),
            ),
            (
                "chrysalis_shim_enclave_connect_errors_total",
                "counter",
                "failed connections to the enclave",
                load(&self.enclave_connect_errors_total),
            ),
            (
                "chrysalis_shim_enclave_disconnects_total",
                "counter",
                "enclave connections lost mid-session",
                load(&self.enclave_disconnects_total),
            ),
            (
                "chrysalis_shim_client_errors_total",
                "counter",
                "client input refused",
                load(&self.client_errors_total),
            ),
            (
                "chrysalis_shim_enclave_up",
                "gauge",
                "1 if the enclave answered last time",
                u64::from(self.enclave_up.load(Ordering::Relaxed)),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
