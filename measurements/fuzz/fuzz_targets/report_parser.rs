//! Fuzz the SNP report parser and the certificate decoders (VCEK/VLEK, and the ASK/ARK
//! chain as evidence or the KDS hands it over) with arbitrary bytes: none may panic,
//! and a parsed report's getters must not either.
//!
//! Run: `cd measurements/fuzz && cargo +nightly fuzz run report_parser corpus/report_parser`
//! (recorded runs: docs/attestation.md).
#![no_main]

use chrysalis_measurements::snp::{certs, EndorsementKey, Processor, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = Report::parse_binary_or_hex(data) {
        let _ = (report.policy(), report.signing_key(), report.cpuid());
        let _ = (
            report.chip_id_masked(),
            report.mitigation_vectors(),
            report.signature_le(),
        );
        for p in Processor::ALL {
            let _ = report.reported_tcb(p).components();
        }
    }
    let _ = EndorsementKey::parse(data);
    let _ = certs::chain_from_pem(data);
    let (left, right) = data.split_at(data.len() / 2);
    let _ = certs::chain_from_parts(&[left.to_vec(), right.to_vec()]);
});
