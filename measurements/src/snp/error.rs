//! The one error type of SNP evidence verification.
//!
//! Every variant names the check that failed, what was found and what was expected,
//! so a reviewer can act on the message alone.

use crate::snp::report::{Processor, TcbComponent};

/// A certificate's place in the AMD chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// AMD Root Key (self-signed, pinned).
    Ark,
    /// AMD SEV Key: signs VCEKs.
    Ask,
    /// AMD SEV VLEK Key: signs VLEKs.
    Asvk,
    /// Versioned Chip Endorsement Key: signs reports, bound to one chip and TCB.
    Vcek,
    /// Versioned Loaded Endorsement Key: signs reports, bound to a cloud provider.
    Vlek,
    /// The report-signing certificate before its kind is known.
    Vek,
    /// The throwaway key of simulated (dev-mode) evidence: proves nothing.
    Simulated,
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ark => "ARK",
            Self::Ask => "ASK",
            Self::Asvk => "ASVK",
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
            Self::Vek => "VCEK/VLEK",
            Self::Simulated => "simulated throwaway key",
        })
    }
}

/// Why SNP evidence was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The report is not 1184 bytes long.
    #[error("report length check failed: found {found} bytes, expected {expected}")]
    ReportLength {
        /// Length given.
        found: usize,
        /// Length of an ATTESTATION_REPORT.
        expected: usize,
    },
    /// The report version is not one this verifier knows.
    #[error("report version check failed: found version {found}, expected {min} to {max}")]
    ReportVersion {
        /// VERSION field.
        found: u32,
        /// Lowest supported.
        min: u32,
        /// Highest supported.
        max: u32,
    },
    /// SIGNATURE_ALGO is not ECDSA P-384 with SHA-384.
    #[error("signature algorithm check failed: found {found}, expected {expected} (ECDSA P-384 with SHA-384)")]
    SignatureAlgorithm {
        /// SIGNATURE_ALGO field.
        found: u32,
        /// The only defined algorithm.
        expected: u32,
    },
    /// A certificate could not be decoded.
    #[error("certificate decoding failed for the {role}: {reason}; expected a DER or PEM X.509 certificate")]
    CertificateParse {
        /// Which certificate.
        role: CertRole,
        /// What the decoder said.
        reason: String,
    },
    /// The certificate chain given is not ASK or ASVK followed by ARK.
    #[error("certificate chain check failed: found {found} certificates, expected 2 (ASK or ASVK, then ARK) in PEM")]
    ChainShape {
        /// Number of certificates found.
        found: usize,
    },
    /// The ARK supplied with the evidence is not AMD's pinned root for the processor.
    #[error("root check failed: the supplied ARK has subject {found:?}, expected the pinned AMD ARK-{expected}")]
    RootNotPinned {
        /// Subject of the supplied ARK.
        found: String,
        /// Generation whose pinned root was expected.
        expected: Processor,
    },
    /// A certificate was not signed by its issuer.
    #[error("chain signature check failed: the {signer} ({processor}) did not sign the {subject}: {reason}")]
    ChainSignature {
        /// The expected issuer.
        signer: CertRole,
        /// The certificate whose signature failed.
        subject: CertRole,
        /// The generation whose chain was used.
        processor: Processor,
        /// What the verifier said.
        reason: String,
    },
    /// A certificate is outside its validity period at the verification time.
    #[error("certificate validity check failed: the {role} is valid from {not_before} to {not_after}, verification time is {now}")]
    CertificateValidity {
        /// Which certificate.
        role: CertRole,
        /// Start of validity (RFC 3339).
        not_before: String,
        /// End of validity (RFC 3339).
        not_after: String,
        /// The verification time (RFC 3339).
        now: String,
    },
    /// The processor generation could not be determined.
    #[error("processor check failed: {found}; expected a Milan, Genoa or Turin report (CPUID fields in v3+) or a VCEK/VLEK issued by SEV-Milan, SEV-Genoa or SEV-Turin")]
    UnknownProcessor {
        /// What was seen.
        found: String,
    },
    /// The report and the certificate name different processor generations.
    #[error("processor check failed: the report's CPUID names {report}, the certificate was issued for {certificate}")]
    ProcessorMismatch {
        /// Generation from the report's CPUID fields.
        report: Processor,
        /// Generation from the certificate issuer.
        certificate: Processor,
    },
    /// The report says one kind of key signed it, the certificate is another kind.
    #[error("signing key check failed: the report says it was signed by a {report}, the certificate given is a {certificate}")]
    SigningKeyMismatch {
        /// SIGNING_KEY as the report states it.
        report: String,
        /// Kind of the certificate given.
        certificate: CertRole,
    },
    /// The VCEK/VLEK public key is not a P-384 point.
    #[error(
        "endorsement key check failed: the {role} public key is not a valid P-384 point: {reason}"
    )]
    EndorsementKey {
        /// Which certificate.
        role: CertRole,
        /// What the decoder said.
        reason: String,
    },
    /// The report signature does not verify over the raw bytes [0, 0x2A0).
    #[error("report signature check failed: {reason}; expected an ECDSA P-384 signature by the {role} over report bytes [0, 0x2A0)")]
    ReportSignature {
        /// Which key was used.
        role: CertRole,
        /// What the verifier said.
        reason: String,
    },
    /// The certificate lacks a TCB extension that its generation must carry.
    #[error("TCB extension check failed: the {role} has no {component} extension (OID {oid}), expected one")]
    TcbExtensionMissing {
        /// Which certificate.
        role: CertRole,
        /// TCB component.
        component: TcbComponent,
        /// Its OID.
        oid: &'static str,
    },
    /// The certificate was issued for another TCB than the report's REPORTED_TCB.
    #[error("TCB extension check failed: the {role} certifies {component} SVN {certificate}, the report's REPORTED_TCB has {report}")]
    TcbMismatch {
        /// Which certificate.
        role: CertRole,
        /// TCB component.
        component: TcbComponent,
        /// SVN in the certificate extension.
        certificate: u8,
        /// SVN in REPORTED_TCB.
        report: u8,
    },
    /// The VCEK has no hwID extension.
    #[error("chip id check failed: the VCEK has no hwID extension (OID 1.3.6.1.4.1.3704.1.4), expected one")]
    HwIdMissing,
    /// The VCEK was issued for another chip than the report's CHIP_ID.
    #[error(
        "chip id check failed: the VCEK's hwID is {certificate}, the report's CHIP_ID is {report}"
    )]
    ChipIdMismatch {
        /// hwID from the certificate (hex).
        certificate: String,
        /// CHIP_ID from the report (hex).
        report: String,
    },
    /// CHIP_ID is masked and the policy does not allow that.
    #[error("chip id check failed: the report's CHIP_ID is masked (all zero), expected a chip id (the policy does not allow masked chip ids)")]
    ChipIdMasked,
    /// The guest policy allows debugging.
    #[error("debug check failed: guest policy {policy:#x} has the DEBUG bit (19) set, expected it clear: the host can read this guest's memory")]
    DebugAllowed {
        /// POLICY field.
        policy: u64,
    },
    /// The guest policy allows a migration agent.
    #[error("migration agent check failed: guest policy {policy:#x} has the MIGRATE_MA bit (18) set, expected it clear")]
    MigrationAgentAllowed {
        /// POLICY field.
        policy: u64,
    },
    /// A component of REPORTED_TCB is below the policy's minimum.
    #[error("minimum TCB check failed: this {processor} report's REPORTED_TCB has {component} SVN {found}, expected at least {minimum}")]
    TcbBelowMinimum {
        /// The report's generation (whose minimum applied).
        processor: Processor,
        /// TCB component.
        component: TcbComponent,
        /// SVN in REPORTED_TCB.
        found: u8,
        /// The policy's minimum.
        minimum: u8,
    },
    /// The report came from a VMPL the policy does not allow.
    #[error(
        "VMPL check failed: the report was requested at VMPL {found}, expected one of {allowed:?}"
    )]
    VmplNotAllowed {
        /// VMPL field.
        found: u32,
        /// Allowed levels.
        allowed: Vec<u32>,
    },
    /// The launch measurement is not in the allow-list.
    #[error("measurement check failed: launch measurement {found} ({processor}; the vCPU count is not in the report) is not one of the {allowed} allowed digests from {origin}; {for_processor}{hint}")]
    MeasurementNotAllowed {
        /// MEASUREMENT (hex).
        found: String,
        /// The report's generation.
        processor: Processor,
        /// Number of allowed digests.
        allowed: usize,
        /// How many allowed digests are for this generation, and for which vCPU counts.
        for_processor: String,
        /// Where the allowed list came from.
        origin: String,
        /// The allowed digest when there is exactly one, for the message.
        hint: String,
    },
    /// REPORT_DATA is not the expected binding.
    #[error("report data check failed: found {found}, expected {expected} (the binding of the enclave keys, model and nonce)")]
    ReportDataMismatch {
        /// REPORT_DATA (hex).
        found: String,
        /// Expected REPORT_DATA (hex).
        expected: String,
    },
    /// A published manifest could not be read.
    #[error("manifest check failed: {path}: {reason}; expected a JSON object with \"snp_launch_digests\": [{{\"vcpus\": N, \"cpu\": \"milan|genoa|turin\", \"digest\": \"<96 hex digits>\"}}]")]
    Manifest {
        /// File that failed.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl VerifyError {
    /// A short, stable name of the failed check, for `--json` output and metrics.
    pub fn check(&self) -> &'static str {
        match self {
            Self::ReportLength { .. } | Self::ReportVersion { .. } => "report-format",
            Self::SignatureAlgorithm { .. } => "signature-algorithm",
            Self::CertificateParse { .. } | Self::ChainShape { .. } => "certificate-format",
            Self::RootNotPinned { .. } => "pinned-root",
            Self::ChainSignature { .. } => "chain-signature",
            Self::CertificateValidity { .. } => "certificate-validity",
            Self::UnknownProcessor { .. } | Self::ProcessorMismatch { .. } => "processor",
            Self::SigningKeyMismatch { .. } => "signing-key",
            Self::EndorsementKey { .. } | Self::ReportSignature { .. } => "report-signature",
            Self::TcbExtensionMissing { .. } | Self::TcbMismatch { .. } => "tcb-extension",
            Self::HwIdMissing | Self::ChipIdMismatch { .. } | Self::ChipIdMasked => "chip-id",
            Self::DebugAllowed { .. } => "debug",
            Self::MigrationAgentAllowed { .. } => "migration-agent",
            Self::TcbBelowMinimum { .. } => "minimum-tcb",
            Self::VmplNotAllowed { .. } => "vmpl",
            Self::MeasurementNotAllowed { .. } => "measurement",
            Self::ReportDataMismatch { .. } => "report-data",
            Self::Manifest { .. } => "manifest",
        }
    }
}
