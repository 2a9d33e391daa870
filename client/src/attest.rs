//! Fetching evidence with a fresh nonce and deciding whether to trust it.
//!
//! SEV-SNP evidence goes through the same verifier as `chrysalis verify-report`
//! (`chrysalis_measurements::snp::Verifier`) with `REPORT_DATA` required to bind the
//! enclave's keys, the model root and this client's nonce, and with the launch
//! measurement and the minimum TCB taken from the published manifests built into this
//! binary (or from `TrustOptions::manifests`). Skipping the measurement takes
//! `TrustOptions::insecure_any_measurement`, and the verdict then says INSECURE.
//! Simulated evidence (dev mode) is refused unless the caller allows it; when allowed,
//! the binding, the nonce and the throwaway key's signature are still checked, and the
//! verdict says INSECURE.

use std::path::PathBuf;
use std::time::SystemTime;

use chrysalis_measurements::snp::{
    extract, verify_with_certs, Manifests, MinTcbSpec, Policy, Report, Verified,
};
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
    #[error("the enclave presented SIMULATED evidence (dev mode): it proves nothing about the code or the machine, and it has no launch measurement to compare (--insecure-any-measurement does not admit it); pass --allow-simulated to proceed INSECURELY")]
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

/// Why a verdict is INSECURE. Each names the option that allowed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Insecurity {
    /// `--allow-simulated` accepted simulated (dev-mode) evidence.
    SimulatedEvidence,
    /// `--insecure-any-measurement` skipped the launch measurement comparison.
    AnyMeasurement,
}

impl Insecurity {
    /// A short stable name, for JSON and response headers.
    pub fn label(self) -> &'static str {
        match self {
            Self::SimulatedEvidence => "simulated-evidence",
            Self::AnyMeasurement => "any-measurement",
        }
    }

    /// One line for a terminal.
    pub fn explain(self) -> &'static str {
        match self {
            Self::SimulatedEvidence => {
                "simulated evidence (dev mode); nothing below is attested by hardware"
            }
            Self::AnyMeasurement => {
                "launch measurement NOT compared (--insecure-any-measurement): any image on \
                 genuine AMD hardware is accepted, including one that logs prompts"
            }
        }
    }
}

/// What the client knows after verification.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The verified evidence.
    pub evidence: Evidence,
    /// The nonce this client sent.
    pub nonce: [u8; 32],
    /// True when any of `insecurities` holds: the verdict is not a full attestation.
    pub insecure: bool,
    /// Why the verdict is INSECURE; empty when it is not.
    pub insecurities: Vec<Insecurity>,
    /// Launch measurement (hex) for SEV-SNP evidence.
    pub measurement: Option<String>,
    /// Where the allowed measurements came from, when the measurement was compared.
    pub measurements_source: Option<String>,
    /// Human-readable checks that ran and held, and only those.
    pub checks: Vec<String>,
}

impl Verdict {
    /// A JSON summary for `--json` output.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verified": true,
            "insecure": self.insecure,
            "insecure_reasons": self.insecurities.iter().map(|i| i.label()).collect::<Vec<_>>(),
            "kind": match self.evidence.kind { EvidenceKind::SevSnp => "sev-snp", EvidenceKind::Simulated => "simulated" },
            "measurement": self.measurement,
            "measurement_compared_with": self.measurements_source,
            "model_root": hex::encode(self.evidence.model_root),
            "x25519_pub": hex::encode(self.evidence.x25519_pub),
            "ed25519_pub": hex::encode(self.evidence.ed25519_pub),
            "manifest_id": self.evidence.manifest_id,
            "nonce": hex::encode(self.nonce),
            "evidence_hash": hex::encode(self.evidence.hash()),
            "checks": self.checks,
        })
    }

    /// `INSECURE-simulated-evidence`, `INSECURE-any-measurement` (joined with `+` when
    /// both hold), or `chrysalis-sev-snp-verified`: for response fingerprints.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.insecurities)
    }

    /// The final line of `chrysalis verify`.
    pub fn verdict_line(&self) -> String {
        if !self.insecure {
            return "verdict: ACCEPTED".into();
        }
        let why: Vec<&str> = self.insecurities.iter().map(|i| i.label()).collect();
        format!("verdict: ACCEPTED, INSECURE ({})", why.join(", "))
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for insecurity in &self.insecurities {
            out.push_str(&format!("INSECURE: {}\n", insecurity.explain()));
        }
        let kind = match self.evidence.kind {
            EvidenceKind::SevSnp => "sev-snp",
            EvidenceKind::Simulated => "simulated",
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

/// The fingerprint for a list of insecurities (see [`Verdict::fingerprint`]).
pub fn fingerprint_of(insecurities: &[Insecurity]) -> String {
    if insecurities.is_empty() {
        return "chrysalis-sev-snp-verified".into();
    }
    let labels: Vec<&str> = insecurities.iter().map(|i| i.label()).collect();
    format!("INSECURE-{}", labels.join("+"))
}

/// How strict to be. The default is the strict client: SEV-SNP evidence only, the
/// launch measurement compared with the built-in published manifests, and their
/// minimum TCB enforced.
#[derive(Clone, Debug, Default)]
pub struct TrustOptions {
    /// Accept simulated evidence, marking everything INSECURE.
    pub allow_simulated: bool,
    /// Published manifests (a file or a directory) that REPLACE the built-in ones:
    /// their launch digests are the allowed measurements and their `min_tcb` the
    /// minimum TCB. `None`: the manifests built into this binary.
    pub manifests: Option<PathBuf>,
    /// Skip the launch measurement comparison, marking everything INSECURE: any image
    /// on genuine AMD hardware is then accepted.
    pub insecure_any_measurement: bool,
    /// Raise the manifests' minimum TCB (never lowers it).
    pub min_tcb: Vec<MinTcbSpec>,
}

impl TrustOptions {
    /// What these options give up, in the order of [`Insecurity`]; simulated evidence
    /// counts only once such evidence is actually seen, so this lists the options.
    pub fn insecurities(&self) -> Vec<Insecurity> {
        let mut out = Vec::new();
        if self.allow_simulated {
            out.push(Insecurity::SimulatedEvidence);
        }
        if self.insecure_any_measurement {
            out.push(Insecurity::AnyMeasurement);
        }
        out
    }

    /// The manifests to compare with: `manifests` when given, else the built-in ones.
    pub fn load_manifests(&self) -> Result<Manifests, AttestError> {
        let loaded = match &self.manifests {
            Some(path) => Manifests::load(path),
            None => Manifests::builtin(),
        };
        loaded.map_err(|e| AttestError::Snp(e.to_string()))
    }

    /// The SEV-SNP policy for one evidence: strict defaults, the manifests' digests
    /// (unless `insecure_any_measurement`) and minimum TCB raised by `min_tcb`, and
    /// the REPORT_DATA this client expects.
    pub fn snp_policy(&self, report_data: [u8; 64]) -> Result<Policy, AttestError> {
        let manifests = self.load_manifests()?;
        let mut floors = manifests.min_tcb;
        for spec in &self.min_tcb {
            floors.raise(spec.processor, spec.min);
        }
        Ok(Policy {
            report_data: Some(report_data),
            measurements: (!self.insecure_any_measurement).then_some(manifests.measurements),
            measurements_source: manifests.source.to_string(),
            min_tcb_per_cpu: floors,
            ..Policy::default()
        })
    }
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

/// Checks evidence against the nonce this client sent, now.
pub fn verify(
    evidence: Evidence,
    nonce: &[u8; 32],
    trust: &TrustOptions,
) -> Result<Verdict, AttestError> {
    verify_at(evidence, nonce, trust, SystemTime::now())
}

/// Checks evidence against the nonce this client sent, with certificate validity
/// judged at `now` (tests pin the clock).
pub fn verify_at(
    evidence: Evidence,
    nonce: &[u8; 32],
    trust: &TrustOptions,
    now: SystemTime,
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
                insecurities: vec![Insecurity::SimulatedEvidence],
                measurement: None,
                measurements_source: None,
                checks: vec![
                    "report data binds the enclave keys, the model root and our nonce".into(),
                    "simulated report signature (throwaway key: proves nothing)".into(),
                ],
            })
        }
        EvidenceKind::SevSnp => verify_snp(evidence, nonce, expected, trust, now),
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
    now: SystemTime,
) -> Result<Verdict, AttestError> {
    let policy = trust.snp_policy(expected)?;
    let verified = verify_with_certs(&evidence.report, &evidence.cert_chain, &policy, now)
        .map_err(|e| AttestError::Snp(e.to_string()))?;
    Ok(snp_verdict(evidence, nonce, &verified, &policy))
}

/// The verdict on SEV-SNP evidence that passed `policy`: the checks that ran, and
/// INSECURE when the measurement was not compared.
pub fn snp_verdict(
    evidence: Evidence,
    nonce: &[u8; 32],
    verified: &Verified,
    policy: &Policy,
) -> Verdict {
    let insecurities = if verified.skipped.measurement {
        vec![Insecurity::AnyMeasurement]
    } else {
        Vec::new()
    };
    Verdict {
        measurement: Some(hex::encode(verified.authentic.report.measurement())),
        measurements_source: (!verified.skipped.measurement)
            .then(|| policy.measurements_source.clone()),
        checks: snp_checks(verified, policy),
        evidence,
        nonce: *nonce,
        insecure: !insecurities.is_empty(),
        insecurities,
    }
}

/// The checks that ran on verified SEV-SNP evidence, in the order they ran.
fn snp_checks(verified: &Verified, policy: &Policy) -> Vec<String> {
    let processor = verified.authentic.processor;
    let mut checks = vec![
        format!("certificate chain to AMD's pinned {processor} root"),
        "report signature over the raw bytes".to_string(),
    ];
    if !verified.skipped.measurement {
        checks.push(format!(
            "launch measurement in {}",
            policy.measurements_source
        ));
    }
    if !verified.skipped.min_tcb {
        checks.push(format!(
            "minimum TCB for {processor}: {}",
            policy.min_tcb_for(processor)
        ));
    }
    checks.push("guest policy: no debug, no migration agent".to_string());
    checks.push(format!(
        "report requested at an allowed VMPL ({:?})",
        policy.allowed_vmpls
    ));
    if !verified.skipped.chip_id {
        checks.push("chip id matches the VCEK (or a VLEK signed it)".to_string());
    }
    if !verified.skipped.report_data {
        checks.push("report data binds the enclave keys, the model root and our nonce".into());
    }
    checks
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrysalis_measurements::snp::fixtures::{mid_2025, milan_report, read};
    use chrysalis_measurements::snp::report::TcbComponent;
    use chrysalis_measurements::snp::{MinTcb, Processor, Tcb};

    use super::*;

    /// A real report with the certificates that endorse it.
    struct Real {
        name: &'static str,
        report: Vec<u8>,
        certs: Vec<Vec<u8>>,
    }

    /// Every real Milan report of the fixtures, each with its own VCEK or VLEK.
    fn real_reports() -> Vec<Real> {
        vec![
            Real {
                name: "virtee report_milan",
                report: milan_report(),
                certs: vec![read("vcek_milan.der"), read("cert_chain_milan")],
            },
            Real {
                name: "trustee VCEK report",
                report: read("trustee_milan_report.bin"),
                certs: vec![read("trustee_milan_vcek.der")],
            },
            Real {
                name: "trustee VLEK report",
                report: read("trustee_milan_vlek_report.bin"),
                certs: vec![
                    read("trustee_milan_vlek.der"),
                    read("ask_ark_milan_vlek.pem"),
                ],
            },
        ]
    }

    fn parsed(real: &Real) -> Report {
        Report::parse(&real.report).expect("fixture report parses")
    }

    /// Live evidence carrying a real report. Its keys are not the ones the report
    /// binds, so a verdict can only fail at a check, never pass.
    fn evidence(real: &Real) -> Evidence {
        Evidence {
            kind: EvidenceKind::SevSnp,
            report: real.report.clone(),
            cert_chain: real.certs.clone(),
            x25519_pub: [1; 32],
            ed25519_pub: [2; 32],
            model_root: [3; 32],
            manifest_id: "sev-snp".into(),
        }
    }

    /// The refusal of `evidence` at 2025-06-01, inside every fixture certificate's
    /// validity (the trustee VLEK expired in December 2025).
    fn refusal(evidence: Evidence, trust: &TrustOptions) -> String {
        match verify_at(evidence, &[0; 32], trust, mid_2025()) {
            Err(AttestError::Snp(why)) => why,
            other => panic!("expected an SNP refusal, got {other:?}"),
        }
    }

    /// A directory with one manifest allowing `digest` on Milan, with `min_tcb` for
    /// Milan when given; removed on drop.
    struct ManifestDir(PathBuf);

    impl ManifestDir {
        fn new(tag: &str, digest: [u8; 48], min: Option<Tcb>) -> Self {
            let dir =
                std::env::temp_dir().join(format!("chrysalis-attest-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir is writable");
            let min_tcb = min.map_or_else(String::new, |t| {
                format!(
                    r#","min_tcb":[{{"cpu":"milan","bootloader":{},"tee":{},"snp":{},"microcode":{}}}]"#,
                    t.bootloader, t.tee, t.snp, t.microcode
                )
            });
            let json = format!(
                r#"{{"name":"test","snp_launch_digests":[{{"vcpus":4,"cpu":"milan","digest":"{}"}}]{min_tcb}}}"#,
                hex::encode(digest)
            );
            std::fs::write(dir.join("test.json"), json).expect("manifest is written");
            ManifestDir(dir)
        }

        fn trust(&self) -> TrustOptions {
            TrustOptions {
                manifests: Some(self.0.clone()),
                ..TrustOptions::default()
            }
        }
    }

    impl Drop for ManifestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Verifies `real` under `trust`'s policy with its own REPORT_DATA and VMPL
    /// allowed, so every check that `trust` asks for can be seen to pass.
    fn verify_leniently(real: &Real, trust: &TrustOptions) -> Result<Verdict, String> {
        let report = parsed(real);
        let mut policy = trust
            .snp_policy(report.report_data())
            .map_err(|e| e.to_string())?;
        policy.allowed_vmpls = vec![report.vmpl()];
        policy.allow_masked_chip_id = true;
        let verified = verify_with_certs(&real.report, &real.certs, &policy, mid_2025())
            .map_err(|e| e.to_string())?;
        Ok(snp_verdict(evidence(real), &[0; 32], &verified, &policy))
    }

    #[test]
    fn a_default_client_refuses_a_measurement_that_is_not_published_naming_it() {
        let builtin = Manifests::builtin().unwrap();
        for real in real_reports() {
            let report = parsed(&real);
            let why = refusal(evidence(&real), &TrustOptions::default());
            let digest = hex::encode(report.measurement());
            assert!(
                why.contains("measurement check failed"),
                "{}: {why}",
                real.name
            );
            assert!(why.contains(&digest), "{}: {why}", real.name);
            assert!(why.contains("Milan"), "{}: {why}", real.name);
            assert!(
                why.contains(&builtin.source.to_string()),
                "{}: {why}",
                real.name
            );
            let count = format!("{} allowed digests", builtin.measurements.len());
            assert!(why.contains(&count), "{}: {why}", real.name);
        }
    }

    #[test]
    fn a_manifest_naming_the_real_measurement_passes_the_measurement_check() {
        for real in real_reports() {
            let report = parsed(&real);
            let dir = ManifestDir::new("accept", report.measurement(), None);
            // Through the live path the foreign report fails later, at VMPL or
            // REPORT_DATA, which the verifier checks after the measurement.
            let why = refusal(evidence(&real), &dir.trust());
            assert!(!why.contains("measurement check"), "{}: {why}", real.name);
            assert!(
                why.contains("VMPL check failed") || why.contains("report data check failed"),
                "{}: {why}",
                real.name
            );
            // With its own REPORT_DATA and VMPL the verdict lists the measurement check.
            let verdict = verify_leniently(&real, &dir.trust()).unwrap();
            assert!(!verdict.insecure, "{}", real.name);
            let expected = format!("launch measurement in the manifests at {}", dir.0.display());
            assert!(
                verdict.checks.iter().any(|c| c.starts_with(&expected)),
                "{}: {:?}",
                real.name,
                verdict.checks
            );
            assert_eq!(verdict.measurement, Some(hex::encode(report.measurement())));
            // No minimum in this manifest: the verdict does not claim one was checked.
            assert!(
                !verdict.checks.iter().any(|c| c.contains("minimum TCB")),
                "{:?}",
                verdict.checks
            );
        }
    }

    #[test]
    fn a_manifest_naming_another_measurement_is_refused_naming_its_path() {
        let real = &real_reports()[0];
        let mut other = parsed(real).measurement();
        other[0] ^= 1;
        let dir = ManifestDir::new("refuse", other, None);
        let why = refusal(evidence(real), &dir.trust());
        assert!(why.contains("measurement check failed"), "{why}");
        assert!(why.contains(&dir.0.display().to_string()), "{why}");
        assert!(why.contains("1 of them are for Milan, on 4 vCPUs"), "{why}");
    }

    /// The first component of `tcb` below `min`, if any, in the order checked.
    fn first_below(tcb: Tcb, min: MinTcb) -> Option<(TcbComponent, u8, u8)> {
        [
            TcbComponent::Bootloader,
            TcbComponent::Tee,
            TcbComponent::Snp,
            TcbComponent::Microcode,
        ]
        .into_iter()
        .find_map(|c| {
            let (found, minimum) = (tcb.get(c)?, min.get(c)?);
            (found < minimum).then_some((c, found, minimum))
        })
    }

    #[test]
    fn a_report_under_the_minimum_tcb_is_refused_naming_component_and_values() {
        for real in real_reports() {
            let report = parsed(&real);
            let tcb = report.reported_tcb(Processor::Milan);
            for component in [
                TcbComponent::Bootloader,
                TcbComponent::Snp,
                TcbComponent::Microcode,
            ] {
                let found = tcb.get(component).unwrap();
                if found == u8::MAX {
                    continue;
                }
                let mut min = tcb;
                match component {
                    TcbComponent::Bootloader => min.bootloader += 1,
                    TcbComponent::Snp => min.snp += 1,
                    _ => min.microcode += 1,
                }
                let dir = ManifestDir::new("tcb-low", report.measurement(), Some(min));
                let why = refusal(evidence(&real), &dir.trust());
                let expected = format!(
                    "Milan report's REPORTED_TCB has {component} SVN {found}, expected at least {}",
                    found + 1
                );
                assert!(
                    why.contains("minimum TCB check failed"),
                    "{}: {why}",
                    real.name
                );
                assert!(why.contains(&expected), "{}: {why}", real.name);
            }
        }
    }

    #[test]
    fn a_report_at_the_minimum_tcb_passes_that_check_and_the_verdict_says_so() {
        for real in real_reports() {
            let report = parsed(&real);
            let tcb = report.reported_tcb(Processor::Milan);
            let dir = ManifestDir::new("tcb-at", report.measurement(), Some(tcb));
            let why = refusal(evidence(&real), &dir.trust());
            assert!(!why.contains("minimum TCB"), "{}: {why}", real.name);
            let verdict = verify_leniently(&real, &dir.trust()).unwrap();
            let line = verdict
                .checks
                .iter()
                .find(|c| c.starts_with("minimum TCB for Milan"))
                .unwrap_or_else(|| panic!("{}: {:?}", real.name, verdict.checks));
            assert!(line.contains(&format!("snp>={}", tcb.snp)), "{line}");
        }
    }

    #[test]
    fn min_tcb_raises_the_manifest_minimum_and_never_lowers_it() {
        let real = &real_reports()[0];
        let report = parsed(real);
        let tcb = report.reported_tcb(Processor::Milan);
        let at = ManifestDir::new("tcb-raise", report.measurement(), Some(tcb));
        let raise = |spec: &str| TrustOptions {
            min_tcb: vec![MinTcbSpec::parse(spec).unwrap()],
            ..at.trust()
        };
        let above = format!("milan:microcode={}", tcb.microcode + 1);
        let why = refusal(evidence(real), &raise(&above));
        assert!(why.contains("microcode SVN"), "{why}");
        // A spec for another generation leaves Milan alone.
        let genoa = format!("genoa:microcode={}", tcb.microcode + 1);
        assert!(!refusal(evidence(real), &raise(&genoa)).contains("minimum TCB"));
        // Asking for less than the manifest does not lower it.
        let mut min = tcb;
        min.snp += 1;
        let strict = ManifestDir::new("tcb-nolower", report.measurement(), Some(min));
        let lower = TrustOptions {
            min_tcb: vec![MinTcbSpec::parse("snp=0").unwrap()],
            ..strict.trust()
        };
        assert!(refusal(evidence(real), &lower).contains("minimum TCB check failed"));
    }

    #[test]
    fn the_built_in_minimum_tcb_holds_even_when_the_measurement_is_skipped() {
        let builtin = Manifests::builtin().unwrap();
        let trust = TrustOptions {
            insecure_any_measurement: true,
            ..TrustOptions::default()
        };
        for real in real_reports() {
            let tcb = parsed(&real).reported_tcb(Processor::Milan);
            let why = refusal(evidence(&real), &trust);
            match first_below(tcb, builtin.min_tcb.get(Processor::Milan)) {
                Some((component, found, minimum)) => assert!(
                    why.contains(&format!(
                        "{component} SVN {found}, expected at least {minimum}"
                    )),
                    "{}: {why}",
                    real.name
                ),
                None => assert!(!why.contains("minimum TCB"), "{}: {why}", real.name),
            }
        }
    }

    #[test]
    fn the_insecure_flag_marks_every_output() {
        let real = &real_reports()[0];
        let report = parsed(real);
        let dir = ManifestDir::new("insecure", report.measurement(), None);
        let secure = verify_leniently(real, &dir.trust()).unwrap();
        assert!(!secure.insecure && secure.insecurities.is_empty());
        assert_eq!(secure.verdict_line(), "verdict: ACCEPTED");
        assert_eq!(secure.fingerprint(), "chrysalis-sev-snp-verified");
        let trust = TrustOptions {
            insecure_any_measurement: true,
            ..dir.trust()
        };
        let verdict = verify_leniently(real, &trust).unwrap();
        assert!(verdict.insecure);
        assert_eq!(verdict.insecurities, vec![Insecurity::AnyMeasurement]);
        assert!(verdict
            .summary()
            .starts_with("INSECURE: launch measurement NOT compared"));
        assert_eq!(
            verdict.verdict_line(),
            "verdict: ACCEPTED, INSECURE (any-measurement)"
        );
        assert_eq!(verdict.fingerprint(), "INSECURE-any-measurement");
        let json = verdict.to_json();
        assert_eq!(json["insecure"], true);
        assert_eq!(
            json["insecure_reasons"],
            serde_json::json!(["any-measurement"])
        );
        assert_eq!(json["measurement_compared_with"], serde_json::Value::Null);
        assert!(
            !verdict
                .checks
                .iter()
                .any(|c| c.contains("launch measurement")),
            "{:?}",
            verdict.checks
        );
        assert_eq!(trust.insecurities(), vec![Insecurity::AnyMeasurement]);
    }

    #[test]
    fn snp_evidence_with_the_wrong_or_no_certificate_is_refused_by_name() {
        let mut real = real_reports().remove(0);
        real.certs = vec![read("trustee_milan_vcek.der")];
        let why = refusal(evidence(&real), &TrustOptions::default());
        assert!(why.contains("check failed"), "{why}");
        assert!(
            !why.contains("measurement") && !why.contains("report data"),
            "{why}"
        );
        real.certs = Vec::new();
        let why = refusal(evidence(&real), &TrustOptions::default());
        assert!(why.contains("no certificate"), "{why}");
    }

    #[test]
    fn a_missing_manifest_path_is_refused_naming_it() {
        let trust = TrustOptions {
            manifests: Some(Path::new("/nonexistent/manifests.json").to_path_buf()),
            ..TrustOptions::default()
        };
        let why = refusal(evidence(&real_reports()[0]), &trust);
        assert!(why.contains("/nonexistent/manifests.json"), "{why}");
    }

    #[test]
    fn simulated_evidence_needs_the_flag_and_a_well_formed_report() {
        let mut evidence = evidence(&real_reports()[0]);
        evidence.cert_chain = vec![vec![4; 97]];
        evidence.kind = EvidenceKind::Simulated;
        let strict = verify(evidence.clone(), &[0; 32], &TrustOptions::default());
        assert!(
            matches!(strict, Err(AttestError::SimulatedRefused)),
            "{strict:?}"
        );
        // Skipping the measurement does not admit simulated evidence: it has none.
        let any = TrustOptions {
            insecure_any_measurement: true,
            ..TrustOptions::default()
        };
        let err = verify(evidence.clone(), &[0; 32], &any).unwrap_err();
        assert!(err.to_string().contains("no launch measurement"), "{err}");
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
