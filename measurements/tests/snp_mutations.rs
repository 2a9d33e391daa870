//! One-bit mutations of a valid real report, one field region at a time.
//!
//! Every signed field is covered by the signature, so the full verifier refuses each
//! mutation at the signature check. Each mutation is also run through the check that
//! owns its field (as if an attacker could re-sign), which must name that field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_measurements::snp::{
    compare::compare, report::offset, AllowedMeasurement, AuthenticReport, ChipBinding,
    EndorsementKey, Policy, Processor, Report, Verifier, VerifyError,
};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn mid_2025() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

struct Case {
    original: Report,
    vek: EndorsementKey,
    policy: Policy,
}

fn case() -> Case {
    let original = Report::parse_binary_or_hex(&data("report_milan.hex")).unwrap();
    let policy = Policy {
        allowed_vmpls: vec![original.vmpl()],
        measurements: Some(vec![AllowedMeasurement {
            digest: original.measurement(),
            vcpus: None,
            cpu: None,
        }]),
        report_data: Some(original.report_data()),
        ..Policy::default()
    };
    Case {
        original,
        vek: EndorsementKey::parse(&data("vcek_milan.der")).unwrap(),
        policy,
    }
}

fn flip(report: &Report, byte: usize, bit: u8) -> Report {
    let mut bytes = report.as_bytes().to_vec();
    bytes[byte] ^= 1 << bit;
    Report::parse(&bytes).unwrap()
}

/// The full verifier must refuse the mutated report at the signature check.
fn assert_signature_refuses(c: &Case, mutated: &Report) {
    let err = Verifier::pinned()
        .unwrap()
        .verify(mutated.as_bytes(), &c.vek, &c.policy, mid_2025())
        .unwrap_err();
    assert!(matches!(err, VerifyError::ReportSignature { .. }), "{err}");
}

/// Runs the policy comparison as if the mutated report had been genuinely signed.
fn compare_as_if_signed(c: &Case, mutated: Report) -> Result<(), VerifyError> {
    let authentic = AuthenticReport {
        reported_tcb: mutated.reported_tcb(Processor::Milan),
        report: mutated,
        processor: Processor::Milan,
        signed_by: c.vek.role,
        chip: ChipBinding::Matched,
    };
    compare(&authentic, &c.policy).map(|_| ())
}

#[test]
fn the_unmutated_report_passes_the_strict_policy() {
    let c = case();
    Verifier::pinned()
        .unwrap()
        .verify(c.original.as_bytes(), &c.vek, &c.policy, mid_2025())
        .unwrap();
}

#[test]
fn measurement_bit_flip() {
    let c = case();
    for byte in [offset::MEASUREMENT, offset::MEASUREMENT + 47] {
        let m = flip(&c.original, byte, 3);
        assert_signature_refuses(&c, &m);
        let err = compare_as_if_signed(&c, m).unwrap_err();
        assert!(
            matches!(err, VerifyError::MeasurementNotAllowed { .. }),
            "{err}"
        );
        assert_eq!(err.check(), "measurement");
    }
}

#[test]
fn policy_debug_bit_flip() {
    let c = case();
    let m = flip(&c.original, offset::POLICY + 2, 3); // bit 19
    assert!(m.policy().debug_allowed());
    assert_signature_refuses(&c, &m);
    let err = compare_as_if_signed(&c, m).unwrap_err();
    assert!(matches!(err, VerifyError::DebugAllowed { .. }), "{err}");
}

#[test]
fn policy_migration_agent_bit_flip() {
    let c = case();
    let m = flip(&c.original, offset::POLICY + 2, 2); // bit 18
    assert_signature_refuses(&c, &m);
    let err = compare_as_if_signed(&c, m).unwrap_err();
    assert!(
        matches!(err, VerifyError::MigrationAgentAllowed { .. }),
        "{err}"
    );
}

#[test]
fn report_data_bit_flip() {
    let c = case();
    for byte in [offset::REPORT_DATA, offset::REPORT_DATA + 63] {
        let m = flip(&c.original, byte, 0);
        assert_signature_refuses(&c, &m);
        let err = compare_as_if_signed(&c, m).unwrap_err();
        assert!(
            matches!(err, VerifyError::ReportDataMismatch { .. }),
            "{err}"
        );
    }
}

#[test]
fn vmpl_bit_flip() {
    let c = case();
    let m = flip(&c.original, offset::VMPL, 1);
    assert_signature_refuses(&c, &m);
    let err = compare_as_if_signed(&c, m).unwrap_err();
    assert!(matches!(err, VerifyError::VmplNotAllowed { .. }), "{err}");
}

#[test]
fn reported_tcb_bit_flip() {
    let c = case();
    // Byte 6 is the SNP SVN on Milan, byte 7 the microcode, byte 0 the boot loader.
    for byte in [0, 1, 6, 7] {
        let m = flip(&c.original, offset::REPORTED_TCB + byte, 0);
        assert_signature_refuses(&c, &m);
        let err = c.vek.check_tcb(&m, Processor::Milan).unwrap_err();
        assert!(
            matches!(err, VerifyError::TcbMismatch { .. }),
            "byte {byte}: {err}"
        );
    }
}

#[test]
fn chip_id_bit_flip() {
    let c = case();
    for byte in [offset::CHIP_ID, offset::CHIP_ID + 63] {
        let m = flip(&c.original, byte, 7);
        assert_signature_refuses(&c, &m);
        let err = c.vek.check_chip_id(&m).unwrap_err();
        assert!(matches!(err, VerifyError::ChipIdMismatch { .. }), "{err}");
        assert_eq!(err.check(), "chip-id");
    }
}

#[test]
fn signature_bit_flip() {
    let c = case();
    for byte in [
        offset::SIGNATURE_R,
        offset::SIGNATURE_R + 47,
        offset::SIGNATURE_S + 10,
    ] {
        let m = flip(&c.original, byte, 4);
        assert_signature_refuses(&c, &m);
        let err = c.vek.check_report_signature(&m).unwrap_err();
        assert!(matches!(err, VerifyError::ReportSignature { .. }), "{err}");
    }
}

#[test]
fn signature_padding_must_be_zero() {
    let c = case();
    let m = flip(&c.original, offset::SIGNATURE_R + 60, 0);
    let err = c.vek.check_report_signature(&m).unwrap_err();
    assert!(
        err.to_string().contains("non-zero bytes beyond 48"),
        "{err}"
    );
}

#[test]
fn unsigned_tail_is_not_signed_but_does_not_matter() {
    // Bytes after the signature components are reserved and outside the signed range:
    // changing them must not make a genuine report fail.
    let c = case();
    let m = flip(&c.original, 0x4A0 - 1, 0);
    Verifier::pinned()
        .unwrap()
        .verify(m.as_bytes(), &c.vek, &c.policy, mid_2025())
        .unwrap();
}
