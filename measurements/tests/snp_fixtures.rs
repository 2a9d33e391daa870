//! Every real SNP fixture gives its documented verdict (see
//! `shared/fixtures/README.md`; copies live in `tests/data/`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_measurements::snp::{
    certs::{self, CaChain},
    AllowedMeasurement, CertRole, ChipBinding, EndorsementKey, MinTcb, Policy, Processor, Report,
    SigningKey, Verified, Verifier, VerifyError,
};

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// 2025-06-01T00:00:00Z: inside the validity of every fixture certificate.
fn mid_2025() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

fn vek(name: &str) -> EndorsementKey {
    EndorsementKey::parse(&data(name)).unwrap()
}

fn pinned() -> Verifier {
    Verifier::pinned().unwrap()
}

fn supplied_chain(pem: &[u8]) -> Result<Verifier, VerifyError> {
    pinned().with_supplied_chain(pem)
}

/// The virtee Milan report with its VCEK, at `mid_2025`, under `policy`.
fn verify_milan(report: &Report, policy: &Policy) -> Result<Verified, VerifyError> {
    pinned().verify(
        report.as_bytes(),
        &vek("vcek_milan.der"),
        policy,
        mid_2025(),
    )
}

fn milan_report() -> Vec<u8> {
    Report::parse_binary_or_hex(&data("report_milan.hex"))
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// Accepts whatever VMPL the fixture was taken at; everything else strict.
fn lenient_vmpl() -> Policy {
    Policy {
        allowed_vmpls: vec![0, 1, 2, 3],
        ..Policy::default()
    }
}

#[test]
fn virtee_milan_report_is_valid() {
    let verifier = Verifier::pinned().unwrap();
    let v = verifier
        .verify(
            &milan_report(),
            &vek("vcek_milan.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap();
    assert_eq!(v.authentic.processor, Processor::Milan);
    assert_eq!(v.authentic.report.version(), 2);
    assert_eq!(v.authentic.signed_by, CertRole::Vcek);
    assert_eq!(v.authentic.chip, ChipBinding::Matched);
    assert!(v.skipped.measurement && v.skipped.report_data);
}

#[test]
fn virtee_milan_report_verifies_with_the_supplied_kds_chain() {
    let verifier = supplied_chain(&data("cert_chain_milan")).unwrap();
    verifier
        .verify(
            &milan_report(),
            &vek("vcek_milan.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap();
}

#[test]
fn trustee_milan_report_is_valid() {
    let v = pinned()
        .verify(
            &data("trustee_milan_report.bin"),
            &vek("trustee_milan_vcek.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap();
    assert_eq!(v.authentic.report.version(), 2);
    assert_eq!(v.authentic.processor, Processor::Milan);
}

#[test]
fn trustee_vlek_report_with_masked_chip_id_is_valid() {
    let report = Report::parse(&data("trustee_milan_vlek_report.bin")).unwrap();
    assert_eq!(report.version(), 3);
    assert!(report.chip_id_masked());
    assert_eq!(report.signing_key(), SigningKey::Vlek);
    let verifier = supplied_chain(&data("ask_ark_milan_vlek.pem")).unwrap();
    let v = verifier
        .verify(
            report.as_bytes(),
            &vek("trustee_milan_vlek.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap();
    assert_eq!(v.authentic.signed_by, CertRole::Vlek);
    assert_eq!(v.authentic.chip, ChipBinding::NotChipBound);
    // The pinned ASVK gives the same verdict without the supplied chain.
    pinned()
        .verify(
            report.as_bytes(),
            &vek("trustee_milan_vlek.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap();
}

#[test]
fn the_vlek_has_expired_by_2026() {
    let at_2026 = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
    let err = pinned()
        .verify(
            &data("trustee_milan_vlek_report.bin"),
            &vek("trustee_milan_vlek.der"),
            &lenient_vmpl(),
            at_2026,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::CertificateValidity {
                role: CertRole::Vlek,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("2025-12-10"), "{err}");
}

#[test]
fn debug_report_has_a_valid_signature_but_the_default_policy_refuses_it() {
    let report = data("gosevguest_milan_debug_report.bin");
    let key = vek("gosevguest_milan_vcek.der");
    let verifier = Verifier::pinned().unwrap();
    let parsed = Report::parse(&report).unwrap();
    assert_eq!(parsed.policy().0, 0xb0000);
    verifier
        .authenticate(parsed.clone(), &key, mid_2025())
        .expect("signature and chain are genuine");
    let err = verifier
        .verify(&report, &key, &lenient_vmpl(), mid_2025())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::DebugAllowed { policy: 0xb0000 }),
        "{err}"
    );
    assert!(err.to_string().contains("DEBUG bit (19)"), "{err}");
    assert_eq!(err.check(), "debug");
    let allow = Policy {
        allow_debug: true,
        ..lenient_vmpl()
    };
    verifier.verify(&report, &key, &allow, mid_2025()).unwrap();
}

#[test]
fn invalid_vceks_fail_chain_verification() {
    for name in [
        "snp_test-vcek-invalid-legacy.der",
        "snp_test-vcek-invalid-new.der",
    ] {
        let chain = CaChain::pinned(Processor::Milan, CertRole::Ask).unwrap();
        let err = match EndorsementKey::parse(&data(name)) {
            Ok(key) => chain
                .check_endorsement_key(&key.cert, key.role)
                .unwrap_err(),
            Err(e) => e,
        };
        assert!(
            matches!(
                err,
                VerifyError::ChainSignature { .. } | VerifyError::CertificateParse { .. }
            ),
            "{name}: {err}"
        );
        // And a report verified with it is refused.
        if let Ok(key) = EndorsementKey::parse(&data(name)) {
            let err = pinned()
                .verify(&milan_report(), &key, &lenient_vmpl(), mid_2025())
                .unwrap_err();
            assert!(
                matches!(err, VerifyError::ChainSignature { .. }),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn turin_vcek_does_not_verify_under_the_milan_ask() {
    let turin = vek("vcek_turin.der");
    assert_eq!(turin.processor, Processor::Turin);
    let milan = CaChain::pinned(Processor::Milan, CertRole::Ask).unwrap();
    let err = milan
        .check_endorsement_key(&turin.cert, turin.role)
        .unwrap_err();
    assert!(matches!(err, VerifyError::ChainSignature { .. }), "{err}");
    // It does verify under its own (pinned Turin) chain.
    let own = CaChain::pinned(Processor::Turin, CertRole::Ask).unwrap();
    own.check_endorsement_key(&turin.cert, turin.role).unwrap();
}

#[test]
fn a_report_checked_against_the_wrong_vcek_is_refused() {
    let err = pinned()
        .verify(
            &milan_report(),
            &vek("trustee_milan_vcek.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::ReportSignature { .. }), "{err}");
}

#[test]
fn a_turin_vcek_with_a_milan_report_is_refused() {
    let err = pinned()
        .verify(
            &milan_report(),
            &vek("vcek_turin.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap_err();
    // The v2 report carries no CPUID, so the generation comes from the certificate;
    // the Turin VCEK then fails on the signature.
    assert!(matches!(err, VerifyError::ReportSignature { .. }), "{err}");
}

#[test]
fn measurement_allow_list_and_report_data_accept_the_true_values() {
    let report = Report::parse(&milan_report()).unwrap();
    let policy = Policy {
        measurements: Some(vec![AllowedMeasurement {
            digest: report.measurement(),
            vcpus: Some(1),
            cpu: Some("milan".into()),
        }]),
        report_data: Some(report.report_data()),
        min_tcb: MinTcb::parse("bootloader=0,tee=0,snp=0,microcode=0").unwrap(),
        ..lenient_vmpl()
    };
    let v = verify_milan(&report, &policy).unwrap();
    assert!(!v.skipped.measurement && !v.skipped.report_data);
}

#[test]
fn minimum_tcb_above_the_report_is_refused() {
    let report = Report::parse(&milan_report()).unwrap();
    let tcb = report.reported_tcb(Processor::Milan);
    let policy = Policy {
        min_tcb: MinTcb {
            snp: Some(tcb.snp + 1),
            ..MinTcb::default()
        },
        ..lenient_vmpl()
    };
    let err = verify_milan(&report, &policy).unwrap_err();
    assert!(
        matches!(err, VerifyError::TcbBelowMinimum { found, minimum, .. } if found == tcb.snp && minimum == tcb.snp + 1),
        "{err}"
    );
}

#[test]
fn the_default_vmpl_policy_names_the_vmpl() {
    let report = Report::parse(&milan_report()).unwrap();
    let policy = Policy {
        allowed_vmpls: vec![report.vmpl() + 1],
        ..Policy::default()
    };
    let err = verify_milan(&report, &policy).unwrap_err();
    assert!(
        matches!(err, VerifyError::VmplNotAllowed { found, .. } if found == report.vmpl()),
        "{err}"
    );
}

fn pem_blocks(name: &str) -> Vec<String> {
    let text = String::from_utf8(data(name)).unwrap();
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| b.trim_start().to_string() + "\n")
        .collect()
}

#[test]
fn a_supplied_chain_must_end_in_the_pinned_root() {
    let [ask, ark] = <[String; 2]>::try_from(pem_blocks("cert_chain_milan")).unwrap();
    // Same subject as AMD's ARK, different bytes: one base64 digit changed inside the
    // signature, near the end of the PEM.
    let mut forged = ark.clone().into_bytes();
    let at = (forged.len() - 300..)
        .find(|&i| forged[i].is_ascii_alphabetic())
        .unwrap();
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let err = supplied_chain(format!("{ask}{forged}").as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::RootNotPinned {
                expected: Processor::Milan,
                ..
            }
        ),
        "{err}"
    );
    // Pinned Turin root with the Milan ASK: the root did not sign it.
    let turin_ark = String::from_utf8(certs::pinned_ark(Processor::Turin).unwrap().der().to_vec());
    assert!(turin_ark.is_err(), "DER is binary");
    let turin_pem = sev_turin_ark_pem();
    let err = supplied_chain(format!("{ask}{turin_pem}").as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::ChainSignature {
                signer: CertRole::Ark,
                processor: Processor::Turin,
                ..
            }
        ),
        "{err}"
    );
    // A chain of three certificates is refused by shape.
    let err = supplied_chain(format!("{ask}{ark}{ark}").as_bytes()).unwrap_err();
    assert!(matches!(err, VerifyError::ChainShape { found: 3 }), "{err}");
}

fn sev_turin_ark_pem() -> String {
    String::from_utf8(sev::certs::snp::builtin::turin::ARK.to_vec()).unwrap()
}

#[test]
fn the_endorsement_cache_remembers_only_the_exact_certificate() {
    let verifier = pinned();
    let report = milan_report();
    for _ in 0..2 {
        verifier
            .verify(&report, &vek("vcek_milan.der"), &lenient_vmpl(), mid_2025())
            .unwrap();
    }
    let err = verifier
        .verify(
            &report,
            &vek("snp_test-vcek-invalid-new.der"),
            &lenient_vmpl(),
            mid_2025(),
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::ChainSignature { .. }), "{err}");
    // Dates are still checked for a cached certificate.
    let after_expiry = UNIX_EPOCH + Duration::from_secs(2_000_000_000); // 2033-05
    let err = verifier
        .verify(
            &report,
            &vek("vcek_milan.der"),
            &lenient_vmpl(),
            after_expiry,
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::CertificateValidity { .. }),
        "{err}"
    );
}
