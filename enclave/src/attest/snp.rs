//! The real provider: the AMD secure processor through the Linux `sev-guest` driver.

use std::fs::{File, OpenOptions};
use std::sync::RwLock;
use std::time::SystemTime;

use chrysalis_measurements::snp::{authenticate_with_certs, Report};
use zeroize::Zeroizing;

use super::linux::{self, SnpDerivedKeyReq, SnpDerivedKeyResp, SnpReportReq, SnpReportResp};
use super::tsm::TsmReports;
use super::{AttestError, AttestationBundle, CertOffer, EvidenceProvider, ProviderKind};

/// The guest device of the `sev-guest` driver.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// Largest certificate buffer asked for (the kernel caps extended-report data at a
/// few pages; AMD's VCEK+ASK+ARK are about 5 KiB).
const MAX_CERTS_LEN: usize = 64 * 1024;
const PAGE: usize = 4096;

/// Reports and derived keys from the AMD secure processor.
pub struct SnpProvider {
    device: File,
    tsm: Option<TsmReports>,
    /// Certificates from the shim, kept only after they verified our own report.
    shim_certs: RwLock<Vec<Vec<u8>>>,
}

/// Checks that `certs` (leaf first, as the shim hands them in) endorse `report`: the
/// VCEK or VLEK chains to AMD's pinned root, is valid at `now`, signed the report, and
/// matches its chip id and REPORTED_TCB. The policy (debug, measurement) is the
/// client's business, not checked here.
pub fn check_bundle(report: &[u8], certs: &[Vec<u8>], now: SystemTime) -> Result<(), AttestError> {
    authenticate_with_certs(report, certs, now).map_err(AttestError::CertificatesRefused)?;
    Ok(())
}

/// MSG_KEY_REQ for the enclave's key seed: rooted in the VCEK (chip-unique), mixing in
/// the launch measurement, the guest policy and the platform's TCB version
/// (`committed_tcb`, the raw COMMITTED_TCB of one of our own reports). Another image,
/// a debug policy, or a committed firmware or microcode update derives another key; a
/// reboot of the same image on the same chip and firmware derives the same one.
pub fn derived_key_request(committed_tcb: u64) -> SnpDerivedKeyReq {
    SnpDerivedKeyReq {
        root_key_select: 0,
        guest_field_select: linux::FIELD_MEASUREMENT
            | linux::FIELD_GUEST_POLICY
            | linux::FIELD_TCB_VERSION,
        tcb_version: committed_tcb,
        ..SnpDerivedKeyReq::default()
    }
}

/// The raw COMMITTED_TCB of a report: the TCB version the key request mixes in. The
/// firmware refuses a TCB_VERSION above COMMITTED_TCB, and the committed version only
/// moves when the host commits a firmware update, which old firmware cannot undo.
pub fn committed_tcb(report: &[u8]) -> Result<u64, AttestError> {
    let report = Report::parse(report).map_err(|e| AttestError::Malformed {
        what: "own report",
        found: e.to_string(),
        expected: "a report to read COMMITTED_TCB from".into(),
    })?;
    Ok(report.committed_tcb_raw())
}

impl SnpProvider {
    /// Opens the device. `shim_certs` (VCEK, ASK, ARK from the host shim, untrusted)
    /// are used when the extended report carries no certificates.
    pub fn open(shim_certs: Vec<Vec<u8>>) -> Result<Self, AttestError> {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(SEV_GUEST_DEVICE)
            .map_err(|source| AttestError::Io {
                path: SEV_GUEST_DEVICE.into(),
                source,
            })?;
        Ok(Self {
            device,
            tsm: TsmReports::detect(),
            shim_certs: RwLock::new(shim_certs),
        })
    }

    fn report_request(report_data: &[u8; 64]) -> SnpReportReq {
        SnpReportReq {
            user_data: *report_data,
            vmpl: 0,
            rsvd: [0; 28],
        }
    }

    /// SNP_GET_EXT_REPORT: the report plus the host's certificate table, growing the
    /// buffer once if the kernel asks for more.
    fn ext_report(&self, report_data: &[u8; 64]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let mut certs = vec![0u8; 4 * PAGE];
        for _ in 0..2 {
            let mut req = linux::SnpExtReportReq {
                data: Self::report_request(report_data),
                certs_address: certs.as_mut_ptr() as u64,
                certs_len: certs.len() as u32,
            };
            let mut resp = SnpReportResp { data: [0; 4000] };
            match linux::guest_request(
                &self.device,
                linux::SNP_GET_EXT_REPORT,
                "SNP_GET_EXT_REPORT",
                &mut req,
                &mut resp,
            ) {
                Ok(()) => {
                    let report = linux::parse_report_response(&resp.data)?;
                    return Ok((report, certs));
                }
                Err(AttestError::Ioctl { vmm_error, .. })
                    if vmm_error == linux::VMM_ERR_INVALID_LEN
                        && (req.certs_len as usize) <= MAX_CERTS_LEN =>
                {
                    let needed = (req.certs_len as usize).div_ceil(PAGE).max(1) * PAGE;
                    certs = vec![0u8; needed];
                }
                Err(e) => return Err(e),
            }
        }
        Err(AttestError::Malformed {
            what: "extended report",
            found: "a second certificate-length error".into(),
            expected: "the length the kernel asked for to suffice".into(),
        })
    }

    fn certificates(&self, table: Option<&[u8]>) -> Result<Vec<Vec<u8>>, AttestError> {
        let from_host = match table {
            Some(t) if t.iter().any(|&b| b != 0) => linux::parse_cert_table(t)?,
            _ => Vec::new(),
        };
        if !from_host.is_empty() {
            return Ok(from_host);
        }
        Ok(self
            .shim_certs
            .read()
            .map(|certs| certs.clone())
            .unwrap_or_default())
    }

    /// A report and the host's certificate table, through configfs TSM when present.
    fn raw_report(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), AttestError> {
        match &self.tsm {
            Some(tsm) => {
                let out = tsm.report(report_data)?;
                Ok((out.report, out.auxblob))
            }
            None => {
                let (report, table) = self.ext_report(report_data)?;
                Ok((report, Some(table)))
            }
        }
    }
}

impl EvidenceProvider for SnpProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SevSnp
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<AttestationBundle, AttestError> {
        let (report, table) = self.raw_report(report_data)?;
        Ok(AttestationBundle {
            kind: ProviderKind::SevSnp,
            certs: self.certificates(table.as_deref())?,
            report,
        })
    }

    fn key_seed(&self) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let (own, _) = self.raw_report(&[0; 64])?;
        let mut req = derived_key_request(committed_tcb(&own)?);
        let mut resp = Zeroizing::new(SnpDerivedKeyResp { data: [0; 64] });
        linux::guest_request(
            &self.device,
            linux::SNP_GET_DERIVED_KEY,
            "SNP_GET_DERIVED_KEY",
            &mut req,
            &mut *resp,
        )?;
        Ok(Zeroizing::new(linux::parse_key_response(&resp.data)?))
    }

    fn offer_certificates(&self, certs: Vec<Vec<u8>>) -> Result<CertOffer, AttestError> {
        if self.shim_certs.read().is_ok_and(|kept| *kept == certs) {
            return Ok(CertOffer::Unchanged);
        }
        let (own, _) = self.raw_report(&[0; 64])?;
        check_bundle(&own, &certs, SystemTime::now())?;
        if let Ok(mut kept) = self.shim_certs.write() {
            *kept = certs;
        }
        Ok(CertOffer::Kept)
    }
}

#[cfg(test)]
mod tests {
    use chrysalis_measurements::snp::fixtures::{mid_2025, milan_report, read as fixture};

    use super::*;

    #[test]
    fn the_right_vcek_and_chain_are_kept() {
        let certs = vec![fixture("vcek_milan.der"), fixture("cert_chain_milan")];
        check_bundle(&milan_report(), &certs, mid_2025()).unwrap();
        // The VCEK alone works too: the pinned Milan chain fills in.
        check_bundle(&milan_report(), &certs[..1], mid_2025()).unwrap();
    }

    #[test]
    fn a_vcek_for_another_chip_or_generation_is_refused() {
        for wrong in [
            "trustee_milan_vcek.der",
            "vcek_turin.der",
            "snp_test-vcek-invalid-new.der",
        ] {
            let err = check_bundle(&milan_report(), &[fixture(wrong)], mid_2025()).unwrap_err();
            assert!(
                matches!(err, AttestError::CertificatesRefused(_)),
                "{wrong}: {err}"
            );
            assert!(err.to_string().contains("refused"), "{err}");
        }
        let err = check_bundle(&milan_report(), &[], mid_2025()).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn a_root_that_is_not_the_pinned_ark_is_refused() {
        // A VCEK posing as the ARK of the supplied chain.
        let certs = vec![
            fixture("vcek_milan.der"),
            fixture("vcek_turin.der"),
            fixture("vcek_milan.der"),
        ];
        let err = check_bundle(&milan_report(), &certs, mid_2025()).unwrap_err();
        assert!(matches!(err, AttestError::CertificatesRefused(_)), "{err}");
    }

    #[test]
    fn the_key_request_selects_vcek_root_measurement_policy_and_tcb() {
        let report = milan_report();
        let committed = committed_tcb(&report).unwrap();
        let parsed = Report::parse(&report).unwrap();
        assert_eq!(committed, parsed.committed_tcb_raw());
        let req = derived_key_request(committed);
        assert_eq!(req.root_key_select, 0, "VCEK root: chip-unique");
        assert_eq!(
            req.guest_field_select, 0b10_1001,
            "bits 0 (policy), 3 (measurement) and 5 (TCB version)"
        );
        assert_eq!((req.vmpl, req.guest_svn), (0, 0));
        assert_eq!(req.tcb_version, committed);
    }

    #[test]
    fn a_firmware_update_changes_the_key_request() {
        let report = milan_report();
        let mut updated = report.clone();
        // One SVN more in COMMITTED_TCB's SNP byte (Milan layout: byte 6).
        updated[0x1E0 + 6] = updated[0x1E0 + 6].wrapping_add(1);
        let before = derived_key_request(committed_tcb(&report).unwrap());
        let after = derived_key_request(committed_tcb(&updated).unwrap());
        assert_eq!(before.guest_field_select, after.guest_field_select);
        assert_ne!(before.tcb_version, after.tcb_version);
        let err = committed_tcb(&report[..100]).unwrap_err();
        assert!(err.to_string().contains("COMMITTED_TCB"), "{err}");
    }
}
