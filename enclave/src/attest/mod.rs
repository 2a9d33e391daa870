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

pub mod identity;
#[allow(unsafe_code)]
pub mod linux;
pub mod simulated;
pub mod snp;
pub mod tsm;

use std::path::{Path, PathBuf};

use chrysalis_measurements::snp::VerifyError;
use zeroize::Zeroizing;

pub use identity::Identity;

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
    /// measurement, the guest policy and the committed TCB version, so the keys
    /// survive a reboot on one chip and change with a committed firmware update.
    fn key_seed(&self) -> Result<Zeroizing<[u8; 32]>, AttestError>;

    /// Offers certificates from the shim (untrusted) for reports whose extended
    /// report carries none. Providers that need none ignore them.
    fn offer_certificates(&self, certs: Vec<Vec<u8>>) -> Result<CertOffer, AttestError> {
        let _ = certs;
        Ok(CertOffer::Ignored)
    }
}

/// What became of a certificate bundle the shim offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertOffer {
    /// It verified this enclave's own report and is handed out from now on.
    Kept,
    /// It is the bundle already kept.
    Unchanged,
    /// This provider needs no certificates (simulated evidence).
    Ignored,
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
    /// Dev mode was asked for on a machine that is an SEV-SNP guest.
    #[error("refusing --dev: this machine is an SEV-SNP guest ({found} present), and simulated evidence is never served on SNP hardware; expected no --dev here, so the enclave serves real SNP evidence")]
    DevModeOnTee {
        /// The SNP interface that was found.
        found: String,
    },
    /// The shim's certificates do not endorse this enclave's reports.
    #[error("certificate bundle from the shim refused: {0}; expected the VCEK (or VLEK) for this chip and TCB, chaining to AMD's pinned root")]
    CertificatesRefused(#[source] VerifyError),
}

/// Which attestation interfaces this guest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// `/dev/sev-guest` exists.
    pub sev_guest_device: bool,
    /// The configfs TSM report directory exists.
    pub tsm_reports: bool,
}

impl Platform {
    /// Looks at the standard paths.
    pub fn detect() -> Self {
        Self {
            sev_guest_device: Path::new(snp::SEV_GUEST_DEVICE).exists(),
            tsm_reports: Path::new(tsm::TSM_REPORT_ROOT).is_dir(),
        }
    }

    /// The SNP interface present, if any, for messages.
    fn snp_interface(self) -> Option<&'static str> {
        match (self.sev_guest_device, self.tsm_reports) {
            (true, _) => Some(snp::SEV_GUEST_DEVICE),
            (false, true) => Some(tsm::TSM_REPORT_ROOT),
            (false, false) => None,
        }
    }
}

/// Which provider [`select`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The AMD secure processor.
    Snp,
    /// INSECURE simulation.
    Simulated,
}

/// The selection rule: SNP whenever an SNP interface exists; dev mode on SNP hardware
/// is an error, not a silent upgrade or downgrade; simulation only when asked for on a
/// machine without SNP.
pub fn choose(platform: Platform, dev_mode: bool) -> Result<Choice, AttestError> {
    match (platform.snp_interface(), dev_mode) {
        (Some(found), true) => Err(AttestError::DevModeOnTee {
            found: found.to_owned(),
        }),
        (Some(_), false) => Ok(Choice::Snp),
        (None, true) => Ok(Choice::Simulated),
        (None, false) => Err(AttestError::NoTee {
            tsm: tsm::TSM_REPORT_ROOT.to_string(),
        }),
    }
}

/// Builds the provider [`choose`] picks for this machine. `shim_certs` are the
/// certificates known at start (usually none: the shim offers them later).
pub fn select(
    dev_mode: bool,
    shim_certs: Vec<Vec<u8>>,
) -> Result<Box<dyn EvidenceProvider>, AttestError> {
    Ok(match choose(Platform::detect(), dev_mode)? {
        Choice::Snp => Box::new(snp::SnpProvider::open(shim_certs)?),
        Choice::Simulated => Box::new(simulated::SimulatedProvider::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Platform = Platform {
        sev_guest_device: false,
        tsm_reports: false,
    };

    #[test]
    fn snp_hardware_is_always_used_and_dev_mode_there_fails_loudly() {
        for platform in [
            Platform {
                sev_guest_device: true,
                ..NONE
            },
            Platform {
                tsm_reports: true,
                ..NONE
            },
        ] {
            assert_eq!(choose(platform, false).unwrap(), Choice::Snp);
            let err = choose(platform, true).unwrap_err();
            assert!(matches!(err, AttestError::DevModeOnTee { .. }), "{err}");
            assert!(err.to_string().contains("refusing --dev"), "{err}");
        }
    }

    #[test]
    fn simulation_only_when_asked_for_without_snp() {
        assert_eq!(choose(NONE, true).unwrap(), Choice::Simulated);
        let err = choose(NONE, false).unwrap_err();
        assert!(matches!(err, AttestError::NoTee { .. }), "{err}");
        assert!(err.to_string().contains("--dev"), "{err}");
    }
}
