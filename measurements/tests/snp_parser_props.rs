//! Property tests: no byte string makes the report parser or the verifier panic.

use std::time::{Duration, UNIX_EPOCH};

use chrysalis_measurements::snp::{
    certs, report::REPORT_LEN, EndorsementKey, Policy, Processor, Report, Verifier,
};
use proptest::prelude::*;

fn exercise(report: &Report) {
    // Every getter on every generation: none may panic.
    let _ = (report.version(), report.guest_svn(), report.policy().abi());
    let _ = (report.family_id(), report.image_id(), report.vmpl());
    let _ = (
        report.platform_info(),
        report.mask_chip_key(),
        report.signing_key(),
    );
    let _ = (
        report.report_data(),
        report.measurement(),
        report.host_data(),
    );
    let _ = (
        report.id_key_digest(),
        report.report_id(),
        report.report_id_ma(),
    );
    let _ = (
        report.chip_id_masked(),
        report.cpuid(),
        report.processor_from_cpuid(),
    );
    let _ = (
        report.current_version(),
        report.mitigation_vectors(),
        report.signature_le(),
    );
    for p in Processor::ALL {
        let _ = report.reported_tcb(p).components();
        let _ = (
            report.current_tcb(p),
            report.committed_tcb(p),
            report.launch_tcb(p),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        if let Ok(report) = Report::parse(&bytes) {
            exercise(&report);
        }
        let _ = Report::parse_binary_or_hex(&bytes);
    }

    #[test]
    fn report_sized_bytes_with_a_valid_header_parse(
        mut bytes in proptest::collection::vec(any::<u8>(), REPORT_LEN),
        version in 2u32..=5,
    ) {
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        bytes[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        let report = Report::parse(&bytes).unwrap();
        exercise(&report);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_reports_are_refused_by_the_verifier_without_panicking(
        mut bytes in proptest::collection::vec(any::<u8>(), REPORT_LEN),
        version in 2u32..=5,
    ) {
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        bytes[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        let vek = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vcek_milan.der")).unwrap();
        let vek = EndorsementKey::parse(&vek).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_748_736_000);
        let result = Verifier::pinned().unwrap().verify(&bytes, &vek, &Policy::default(), now);
        prop_assert!(result.is_err());
    }

    #[test]
    fn certificate_garbage_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert!(EndorsementKey::parse(&bytes).is_err());
    }

    #[test]
    fn chain_garbage_is_an_error(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 0..4),
        pem_body in "[A-Za-z0-9+/=\n]{0,600}",
    ) {
        prop_assert!(certs::chain_from_parts(&parts).is_err());
        let pem = format!("-----BEGIN CERTIFICATE-----\n{pem_body}\n-----END CERTIFICATE-----\n");
        prop_assert!(certs::chain_from_parts(&[pem.clone().into_bytes(), pem.into_bytes()]).is_err());
    }
}
