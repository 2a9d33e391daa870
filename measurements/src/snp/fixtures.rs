//! The real SEV-SNP fixtures (copies of `shared/fixtures/snp` in this crate's
//! `tests/data`), for the tests of crates that handle SNP evidence. Compiled only with
//! the `fixtures` feature, which those crates turn on in their dev-dependencies.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The path of one fixture file.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

/// The bytes of one fixture file (panics with the path when it is missing: tests only).
pub fn read(name: &str) -> Vec<u8> {
    let path = path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The valid Milan report of virtee/sev (`report_milan.hex`), as raw bytes; signed by
/// `vcek_milan.der`, whose chain is `cert_chain_milan`.
pub fn milan_report() -> Vec<u8> {
    let text = String::from_utf8(read("report_milan.hex")).expect("report_milan.hex is text");
    hex::decode(text.trim()).expect("report_milan.hex is hex")
}

/// 2025-06-01T00:00:00Z: inside the validity of every fixture certificate.
pub fn mid_2025() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}
