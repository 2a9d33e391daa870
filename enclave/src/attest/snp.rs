//! The real provider: the AMD secure processor through the Linux `sev-guest` driver.

use std::fs::{File, OpenOptions};
use std::path::Path;

use zeroize::Zeroizing;

use super::linux::{self, SnpDerivedKeyReq, SnpDerivedKeyResp, SnpReportReq, SnpReportResp};
use super::tsm::TsmReports;
use super::{AttestError, AttestationBundle, EvidenceProvider, ProviderKind};

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
    shim_certs: Vec<Vec<u8>>,
}

impl SnpProvider {
    /// Whether this guest has the SNP guest device.
    pub fn available() -> bool {
        Path::new(SEV_GUEST_DEVICE).exists()
    }

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
            shim_certs,
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
        Ok(if from_host.is_empty() {
            self.shim_certs.clone()
        } else {
            from_host
        })
    }
}

impl EvidenceProvider for SnpProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SevSnp
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<AttestationBundle, AttestError> {
        let (report, table) = match &self.tsm {
            Some(tsm) => {
                let out = tsm.report(report_data)?;
                (out.report, out.auxblob)
            }
            None => {
                let (report, table) = self.ext_report(report_data)?;
                (report, Some(table))
            }
        };
        Ok(AttestationBundle {
            kind: ProviderKind::SevSnp,
            certs: self.certificates(table.as_deref())?,
            report,
        })
    }

    fn key_seed(&self) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let mut req = SnpDerivedKeyReq {
            root_key_select: 0,
            guest_field_select: linux::FIELD_MEASUREMENT | linux::FIELD_GUEST_POLICY,
            ..SnpDerivedKeyReq::default()
        };
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
}
