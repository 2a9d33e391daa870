//! Fuzz the SNP report parser and the certificate decoder with arbitrary bytes:
//! neither may panic, and a parsed report's getters must not either.
//!
//! Run: `cd measurements/fuzz && cargo +nightly fuzz run report_parser corpus/report_parser`
#![no_main]

use chrysalis_measurements::snp::{EndorsementKey, Processor, Report};
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
});
