//! Certificates as they arrive with evidence: leaf first, the CA chain bundled (KDS
//! PEM) or separate (the extended report's DER table), and the simulated throwaway key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_measurements::snp::{
    authenticate_with_certs,
    certs::Cert,
    extract::check_simulated_signature,
    report::{offset, REPORT_LEN, SIGNED_LEN},
    verify_with_certs, CertRole, Policy, Report, VerifyError,
};
use p384::ecdsa::{signature::Signer, Signature, SigningKey};

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn mid_2025() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

fn milan_report() -> Vec<u8> {
    Report::parse_binary_or_hex(&data("report_milan.hex"))
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// ASK and ARK of the KDS chain as separate DER certificates.
fn chain_as_der() -> Vec<Vec<u8>> {
    let text = String::from_utf8(data("cert_chain_milan")).unwrap();
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|block| block.contains("BEGIN"))
        .map(|pem| Cert::parse(pem.trim_start().as_bytes(), CertRole::Ask).unwrap())
        .map(|cert| cert.der().to_vec())
        .collect()
}

fn any_vmpl() -> Policy {
    Policy {
        allowed_vmpls: vec![0, 1, 2, 3],
        ..Policy::default()
    }
}

#[test]
fn the_chain_may_come_bundled_separate_or_not_at_all() {
    let report = milan_report();
    let vcek = data("vcek_milan.der");
    let [ask, ark] = <[Vec<u8>; 2]>::try_from(chain_as_der()).unwrap();
    for certs in [
        vec![vcek.clone()],
        vec![vcek.clone(), data("cert_chain_milan")],
        vec![vcek.clone(), ask.clone(), ark.clone()],
    ] {
        let verified = verify_with_certs(&report, &certs, &any_vmpl(), mid_2025())
            .unwrap_or_else(|e| panic!("{} certificates: {e}", certs.len()));
        assert_eq!(verified.authentic.signed_by, CertRole::Vcek);
    }
    // Policy aside, the same certificates authenticate the report.
    authenticate_with_certs(&report, &[vcek, ask, ark], mid_2025()).unwrap();
}

#[test]
fn malformed_certificate_lists_name_what_is_wrong() {
    let report = milan_report();
    let vcek = data("vcek_milan.der");
    let [ask, ark] = <[Vec<u8>; 2]>::try_from(chain_as_der()).unwrap();
    let err = verify_with_certs(&report, &[], &any_vmpl(), mid_2025()).unwrap_err();
    assert!(err.to_string().contains("no certificate came"), "{err}");
    // The ASK posing as the root.
    let err = verify_with_certs(
        &report,
        &[vcek.clone(), ask.clone(), ask.clone()],
        &any_vmpl(),
        mid_2025(),
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownProcessor { .. }), "{err}");
    let err = verify_with_certs(
        &report,
        &[vcek.clone(), ask, ark.clone(), ark],
        &any_vmpl(),
        mid_2025(),
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::ChainShape { found: 3 }), "{err}");
    // A genuine Turin VCEK (it chains to the pinned Turin root) did not sign this
    // version 2 Milan report, which names no generation of its own.
    let err =
        verify_with_certs(&report, &[data("vcek_turin.der")], &any_vmpl(), mid_2025()).unwrap_err();
    assert!(matches!(err, VerifyError::ReportSignature { .. }), "{err}");
}

/// A report in the SNP layout signed by `key`, as the enclave's dev mode makes them.
fn simulated_report(key: &SigningKey) -> Report {
    let mut bytes = vec![0u8; REPORT_LEN];
    bytes[offset::VERSION] = 2;
    bytes[offset::SIGNATURE_ALGO] = 1;
    bytes[offset::REPORT_DATA..offset::REPORT_DATA + 64].fill(0x42);
    let signature: Signature = key.sign(&bytes[..SIGNED_LEN]);
    let (r, s) = signature.split_bytes();
    for (field, scalar) in [(offset::SIGNATURE_R, r), (offset::SIGNATURE_S, s)] {
        for (i, b) in scalar.iter().rev().enumerate() {
            bytes[field + i] = *b;
        }
    }
    Report::parse(&bytes).unwrap()
}

#[test]
fn simulated_reports_verify_only_under_their_own_key() {
    let key = SigningKey::from_slice(&[7u8; 48]).unwrap();
    let sec1 = key
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let report = simulated_report(&key);
    check_simulated_signature(&report, &sec1).unwrap();

    let mut tampered = report.as_bytes().to_vec();
    tampered[offset::REPORT_DATA] ^= 1;
    let err = check_simulated_signature(&Report::parse(&tampered).unwrap(), &sec1).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::ReportSignature {
                role: CertRole::Simulated,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("simulated throwaway key"), "{err}");

    let other = SigningKey::from_slice(&[9u8; 48]).unwrap();
    let other_sec1 = other
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    assert!(check_simulated_signature(&report, &other_sec1).is_err());
    let err = check_simulated_signature(&report, &[4u8; 10]).unwrap_err();
    assert!(matches!(err, VerifyError::EndorsementKey { .. }), "{err}");
}
