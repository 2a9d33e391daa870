//! Attestation evidence: where the enclave's report and key seed come from.
//!
//! One trait, [`EvidenceProvider`], with two implementations (like Oak's
//! `FirmwarePlatform`): [`snp::SnpProvider`] asks the AMD secure processor through the
//! Linux `sev-guest` driver (ioctls on `/dev/sev-guest`, or the configfs TSM report
//! interface when the kernel has it), and [`simulated::SimulatedProvider`] signs a
//! report of the same shape with a throwaway key for development outside a TEE. The
//! simulated one is INSECURE and [`select`] never picks it when SNP is present.
//!
//! The provider works in raw bytes: REPORT_DATA in, report and certificates out. The
//! caller computes REPORT_DATA with `chrysalis_protocol::evidence::report_data` and
//! wraps the result in the protocol's `Evidence`.

#[allow(unsafe_code)]
pub mod linux;
pub mod simulated;
pub mod snp;
pub mod tsm;

use std::path::PathBuf;

use zeroize::Zeroizing;

/// What kind of evidence a provider produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// A real AMD SEV-SNP report.
    SevSnp,
    /// A report signed by a throwaway key: proves nothing. INSECURE.
    Simulated,
}

/// A report and the certificates that endorse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationBundle {
    /// Hardware or simulated.
    pub kind: ProviderKind,
    /// The raw report (1184 bytes for SNP).
    pub report: Vec<u8>,
    /// Certificates, leaf first: VCEK or VLEK, then ASK or ASVK, then ARK, as far as
    /// known. Untrusted: the verifier anchors on its pinned ARK.
    pub certs: Vec<Vec<u8>>,
}

/// Where the enclave's report and key seed come from.
pub trait EvidenceProvider: Send + Sync {
    /// Which kind of evidence this is.
    fn kind(&self) -> ProviderKind;

    /// A report carrying `report_data`, with the certificates that endorse it.
    fn report(&self, report_data: &[u8; 64]) -> Result<AttestationBundle, AttestError>;

    /// 32 secret bytes to derive the enclave's long-term keys from. On SNP they come
    /// from the firmware's derived-key request, bound to the chip, the launch
    /// measurement and the guest policy, so the keys survive a reboot on one chip.
    fn key_seed(&self) -> Result<Zeroizing<[u8; 32]>, AttestError>;
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// A device or configfs file could not be used.
    #[error("attestation I/O failed on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The `sev-guest` ioctl failed.
    #[error("{request} ioctl failed: errno {errno}, firmware error {fw_error:#x}, hypervisor error {vmm_error:#x}")]
    Ioctl {
        /// Which request.
        request: &'static str,
        /// The errno.
        errno: i32,
        /// SNP firmware status (low half of exitinfo2).
        fw_error: u32,
        /// Hypervisor status (high half of exitinfo2).
        vmm_error: u32,
    },
    /// The firmware answered with a non-zero status.
    #[error("{request} failed in firmware: status {status:#x}, expected 0")]
    FirmwareStatus {
        /// Which request.
        request: &'static str,
        /// The status in the response message.
        status: u32,
    },
    /// A response had the wrong size or shape.
    #[error("malformed {what}: found {found}, expected {expected}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What was seen.
        found: String,
        /// What the spec requires.
        expected: String,
    },
    /// No SNP device, and dev mode was not asked for.
    #[error("no SEV-SNP guest device (/dev/sev-guest or {tsm}) found, expected one; pass --dev for simulated, INSECURE evidence outside a TEE")]
    NoTee {
        /// The configfs path looked at.
        tsm: String,
    },
}

/// Picks the provider: SNP whenever the guest device exists (dev mode or not);
/// simulated only when `dev_mode` is set and there is no SNP device.
pub fn select(
    dev_mode: bool,
    shim_certs: Vec<Vec<u8>>,
) -> Result<Box<dyn EvidenceProvider>, AttestError> {
    if snp::SnpProvider::available() {
        return Ok(Box::new(snp::SnpProvider::open(shim_certs)?));
    }
    if dev_mode {
        return Ok(Box::new(simulated::SimulatedProvider::new()));
    }
    Err(AttestError::NoTee {
        tsm: tsm::TSM_REPORT_ROOT.to_string(),
    })
}
