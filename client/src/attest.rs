//! Fetching evidence with a fresh nonce and deciding whether to trust it.
//!
//! SEV-SNP evidence goes through the same verifier as `chrysalis verify-report`
//! (`chrysalis_measurements::snp::Verifier`) with `REPORT_DATA` required to bind the
//! enclave's keys, the model root and this client's nonce. Simulated evidence (dev
//! mode) is refused unless the caller allows it; when allowed, the binding, the nonce
//! and the throwaway key's signature are still checked, and the verdict says INSECURE.

use std::path::PathBuf;
use std::time::SystemTime;

use chrysalis_measurements::snp::{extract, verify_with_certs, Policy, Report};
use chrysalis_protocol::{
    Evidence, EvidenceKind, EvidenceRequest, ForeignFrame, Frame, PlainMessage,
};
use rand_core::{OsRng, RngCore};

use crate::transport::Endpoint;

/// Why evidence was not accepted. Each variant names the failed check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The shim or enclave could not be reached, or answered with an error.
    #[error("fetching evidence: {0}")]
    Fetch(String),
    /// The enclave speaks another protocol version (both are named).
    #[error("{0}")]
    Version(String),
    /// The answer was not evidence.
    #[error("evidence answer malformed: {0}")]
    Malformed(String),
    /// The evidence is simulated and the caller did not allow it.
    #[error("the enclave presented SIMULATED evidence (dev mode): it proves nothing about the code or the machine; pass --allow-simulated to proceed INSECURELY")]
    SimulatedRefused,
    /// The report's REPORT_DATA does not bind these keys, this model and this nonce.
    #[error("report data mismatch: the report does not bind the enclave's keys, model root and our nonce (found {found}, expected {expected})")]
    ReportData {
        /// Hex of the REPORT_DATA found.
        found: String,
        /// Hex of the expected value.
        expected: String,
    },
    /// The simulated report is not well formed or its signature does not hold.
    #[error("simulated report invalid: {0}")]
    Simulated(String),
    /// The SEV-SNP verifier refused the report.
    #[error("SEV-SNP verification failed: {0}")]
    Snp(String),
}

/// What the client knows after verification.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The verified evidence.
    pub evidence: Evidence,
    /// The nonce this client sent.
    pub nonce: [u8; 32],
    /// True when the evidence is simulated: nothing is attested.
    pub insecure: bool,
    /// Launch measurement (hex) for SEV-SNP evidence.
    pub measurement: Option<String>,
    /// Human-readable checks that held.
    pub checks: Vec<String>,
}

impl Verdict {
    /// A JSON summary for `--json` output.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verified": true,
            "insecure": self.insecure,
            "kind": match self.evidence.kind { EvidenceKind::SevSnp => "sev-snp", EvidenceKind::Simulated => "simulated" },
            "measurement": self.measurement,
            "model_root": hex::encode(self.evidence.model_root),
            "x25519_pub": hex::encode(self.evidence.x25519_pub),
            "ed25519_pub": hex::encode(self.evidence.ed25519_pub),
            "manifest_id": self.evidence.manifest_id,
            "nonce": hex::encode(self.nonce),
            "evidence_hash": hex::encode(self.evidence.hash()),
            "checks": self.checks,
        })
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if self.insecure {
            out.push_str(
                "INSECURE: simulated evidence (dev mode); nothing below is attested by hardware\n",
            );
        }
        let kind = if self.insecure {
            "simulated"
        } else {
            "sev-snp"
        };
        out.push_str(&format!(
            "evidence:    {kind}, manifest {}\n",
            self.evidence.manifest_id
        ));
        if let Some(m) = &self.measurement {
            out.push_str(&format!("measurement: {m}\n"));
        }
        out.push_str(&format!(
            "model root:  {}\n",
            hex::encode(self.evidence.model_root)
        ));
        out.push_str(&format!(
            "enclave key: {}\n",
            hex::encode(self.evidence.x25519_pub)
        ));
        for check in &self.checks {
            out.push_str(&format!("  ok  {check}\n"));
        }
        out
    }
}

/// How strict to be.
#[derive(Clone, Debug, Default)]
pub struct TrustOptions {
    /// Accept simulated evidence, marking everything INSECURE.
    pub allow_simulated: bool,
    /// Published manifests (a file or a directory) whose launch measurements are
    /// allowed; without them the measurement is reported but not compared.
    pub manifests: Option<PathBuf>,
}

/// Fetches evidence for a fresh random nonce and verifies it.
pub async fn fetch_and_verify(
    endpoint: &Endpoint,
    trust: &TrustOptions,
) -> Result<Verdict, AttestError> {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let evidence = fetch_evidence(endpoint, &nonce).await?;
    verify(evidence, &nonce, trust)
}

/// Asks the shim for evidence bound to `nonce`.
pub async fn fetch_evidence(
    endpoint: &Endpoint,
    nonce: &[u8; 32],
) -> Result<Evidence, AttestError> {
    let request = PlainMessage::EvidenceRequest(EvidenceRequest { nonce: *nonce })
        .to_frame_bytes()
        .map_err(|e| AttestError::Malformed(e.to_string()))?;
    let answer = endpoint
        .post_evidence(request)
        .await
        .map_err(AttestError::Fetch)?;
    if let Some(foreign) = ForeignFrame::parse(&answer) {
        return Err(AttestError::Version(crate::transport::version_mismatch(
            &foreign,
        )));
    }
    let frame = Frame::decode(&answer).map_err(|e| AttestError::Malformed(e.to_string()))?;
    match PlainMessage::from_frame(&frame).map_err(|e| AttestError::Malformed(e.to_string()))? {
        PlainMessage::EvidenceResponse(evidence) => Ok(evidence),
        PlainMessage::Error(e) => Err(AttestError::Fetch(format!(
            "enclave refused: {}",
            e.message
        ))),
        _ => Err(AttestError::Malformed(
            "expected an evidence response".into(),
        )),
    }
}

/// Checks evidence against the nonce this client sent.
pub fn verify(
    evidence: Evidence,
    nonce: &[u8; 32],
    trust: &TrustOptions,
) -> Result<Verdict, AttestError> {
    let expected = evidence.expected_report_data(nonce);
    match evidence.kind {
        EvidenceKind::Simulated => {
            if !trust.allow_simulated {
                return Err(AttestError::SimulatedRefused);
            }
            check_simulated(&evidence, &expected)?;
            Ok(Verdict {
                evidence,
                nonce: *nonce,
                insecure: true,
                measurement: None,
                checks: vec![
                    "report data binds the enclave keys, the model root and our nonce".into(),
                    "simulated report signature (throwaway key: proves nothing)".into(),
                ],
            })
        }
        EvidenceKind::SevSnp => verify_snp(evidence, nonce, expected, trust),
    }
}

/// A simulated report has the SNP layout (the enclave's `attest::simulated`): parse it
/// as one, compare REPORT_DATA, and check the signature under the throwaway P-384 key
/// that came as the only certificate.
fn check_simulated(evidence: &Evidence, expected: &[u8; 64]) -> Result<(), AttestError> {
    let simulated = |e: &dyn std::fmt::Display| AttestError::Simulated(e.to_string());
    let report = Report::parse(&evidence.report).map_err(|e| simulated(&e))?;
    if report.report_data() != *expected {
        return Err(AttestError::ReportData {
            found: hex::encode(report.report_data()),
            expected: hex::encode(expected),
        });
    }
    let key = match evidence.cert_chain.as_slice() {
        [key] => key,
        other => {
            return Err(AttestError::Simulated(format!(
                "expected the throwaway key as the only certificate, found {} certificates",
                other.len()
            )))
        }
    };
    extract::check_simulated_signature(&report, key).map_err(|e| simulated(&e))
}

fn verify_snp(
    evidence: Evidence,
    nonce: &[u8; 32],
    expected: [u8; 64],
    trust: &TrustOptions,
) -> Result<Verdict, AttestError> {
    let snp = |e: &dyn std::fmt::Display| AttestError::Snp(e.to_string());
    let measurements = match &trust.manifests {
        Some(path) => {
            Some(chrysalis_measurements::snp::expect::load_manifests(path).map_err(|e| snp(&e))?)
        }
        None => None,
    };
    let compared = measurements.is_some();
    let policy = Policy {
        report_data: Some(expected),
        measurements,
        ..Policy::default()
    };
    let verified = verify_with_certs(
        &evidence.report,
        &evidence.cert_chain,
        &policy,
        SystemTime::now(),
    )
    .map_err(|e| snp(&e))?;
    let mut checks = vec![
        "certificate chain to AMD's pinned root".to_string(),
        "report signature over the raw bytes".to_string(),
        "guest policy: no debug, no migration agent; minimum TCB".to_string(),
        "report data binds the enclave keys, the model root and our nonce".to_string(),
    ];
    if compared {
        checks.push("launch measurement in the published manifests".into());
    }
    Ok(Verdict {
        measurement: Some(hex::encode(verified.authentic.report.measurement())),
        evidence,
        nonce: *nonce,
        insecure: false,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use chrysalis_measurements::snp::fixtures::{milan_report, read};

    use super::*;

    /// Live evidence carrying the real Milan report and `certs`. Its keys are not the
    /// ones the report binds, so a verdict can only fail at a policy check, never pass.
    fn snp_evidence(certs: Vec<Vec<u8>>) -> Evidence {
        Evidence {
            kind: EvidenceKind::SevSnp,
            report: milan_report(),
            cert_chain: certs,
            x25519_pub: [1; 32],
            ed25519_pub: [2; 32],
            model_root: [3; 32],
            manifest_id: "sev-snp".into(),
        }
    }

    fn refusal(evidence: Evidence) -> String {
        match verify(evidence, &[0; 32], &TrustOptions::default()) {
            Err(AttestError::Snp(why)) => why,
            other => panic!("expected an SNP refusal, got {other:?}"),
        }
    }

    #[test]
    fn genuine_snp_evidence_gets_past_authenticity_with_any_certificate_layout() {
        let vcek = read("vcek_milan.der");
        for certs in [vec![vcek.clone()], vec![vcek, read("cert_chain_milan")]] {
            let why = refusal(snp_evidence(certs));
            // Chain, dates, signature, chip id and TCB held: the first failure is a
            // policy check on this foreign report (its VMPL or its REPORT_DATA).
            assert!(
                why.contains("VMPL check failed") || why.contains("report data check failed"),
                "{why}"
            );
        }
    }

    #[test]
    fn snp_evidence_with_the_wrong_or_no_certificate_is_refused_by_name() {
        let why = refusal(snp_evidence(vec![read("trustee_milan_vcek.der")]));
        assert!(why.contains("check failed"), "{why}");
        assert!(
            !why.contains("VMPL") && !why.contains("report data"),
            "{why}"
        );
        let why = refusal(snp_evidence(Vec::new()));
        assert!(why.contains("no certificate"), "{why}");
    }

    #[test]
    fn simulated_evidence_needs_the_flag_and_a_well_formed_report() {
        let mut evidence = snp_evidence(vec![vec![4; 97]]);
        evidence.kind = EvidenceKind::Simulated;
        let strict = verify(evidence.clone(), &[0; 32], &TrustOptions::default());
        assert!(
            matches!(strict, Err(AttestError::SimulatedRefused)),
            "{strict:?}"
        );
        let insecure = TrustOptions {
            allow_simulated: true,
            ..TrustOptions::default()
        };
        // The report does not bind these keys: refused at REPORT_DATA even in INSECURE mode.
        let err = verify(evidence.clone(), &[0; 32], &insecure).unwrap_err();
        assert!(matches!(err, AttestError::ReportData { .. }), "{err}");
        evidence.report.truncate(100);
        let err = verify(evidence, &[0; 32], &insecure).unwrap_err();
        assert!(matches!(err, AttestError::Simulated(_)), "{err}");
    }
}
