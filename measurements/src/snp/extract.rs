//! Extract: establish that a report is genuine and pull out the claims AMD vouches for.
//!
//! Genuine means: the VCEK/VLEK chains to a pinned AMD root, every certificate is
//! valid at the verification time, the report signature holds over the raw bytes
//! `[0, 0x2A0)`, and the key's TCB and hwID extensions match the report's REPORTED_TCB
//! and CHIP_ID. Nothing here looks at the guest policy or the measurement: that is the
//! job of `expect` and `compare`.

use std::time::SystemTime;

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};

use crate::snp::certs::{self, CaChain, Cert, OID_HW_ID, TCB_OIDS};
use crate::snp::error::{CertRole, VerifyError};
use crate::snp::report::{Processor, Report, SigningKey, Tcb, TcbComponent};

/// The report-signing certificate, decoded, with what it claims about itself.
#[derive(Debug, Clone)]
pub struct EndorsementKey {
    /// The certificate.
    pub cert: Cert,
    /// `CertRole::Vcek` or `CertRole::Vlek`, from the issuer's name.
    pub role: CertRole,
    /// The generation named by the issuer ("SEV-Milan", "SEV-VLEK-Genoa", ...).
    pub processor: Processor,
    key: VerifyingKey,
}

impl EndorsementKey {
    /// Decodes a VCEK or VLEK, DER or PEM.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        let cert = Cert::parse(bytes, CertRole::Vek)?;
        let issuer = cert.issuer_cn();
        let (processor, role) = match certs::classify_amd_name(&issuer) {
            Some((p, CertRole::Ask)) => (p, CertRole::Vcek),
            Some((p, CertRole::Asvk)) => (p, CertRole::Vlek),
            _ => {
                return Err(VerifyError::UnknownProcessor {
                    found: format!("the VCEK/VLEK was issued by {issuer:?}"),
                })
            }
        };
        let key = VerifyingKey::from_sec1_bytes(cert.public_key_sec1()).map_err(|e| {
            VerifyError::EndorsementKey {
                role,
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            cert,
            role,
            processor,
            key,
        })
    }

    /// Checks the ECDSA P-384 signature over the raw signed bytes of the report.
    pub fn check_report_signature(&self, report: &Report) -> Result<(), VerifyError> {
        let signature =
            report_signature(report).map_err(|reason| VerifyError::ReportSignature {
                role: self.role,
                reason,
            })?;
        self.key
            .verify(report.signed_bytes(), &signature)
            .map_err(|_| VerifyError::ReportSignature {
                role: self.role,
                reason: "the signature does not match the report bytes".into(),
            })
    }

    /// Checks that the certificate's TCB extensions equal the report's REPORTED_TCB.
    pub fn check_tcb(&self, report: &Report, processor: Processor) -> Result<Tcb, VerifyError> {
        let tcb = report.reported_tcb(processor);
        for (component, oid) in TCB_OIDS {
            let Some(in_report) = tcb.get(component) else {
                continue; // FMC exists from Turin on.
            };
            let in_cert = self.cert.extension(oid).and_then(certs::decode_svn).ok_or(
                VerifyError::TcbExtensionMissing {
                    role: self.role,
                    component,
                    oid,
                },
            )?;
            if in_cert != in_report {
                return Err(VerifyError::TcbMismatch {
                    role: self.role,
                    component,
                    certificate: in_cert,
                    report: in_report,
                });
            }
        }
        Ok(tcb)
    }

    /// Checks the VCEK's hwID against CHIP_ID. A VLEK is not bound to a chip.
    pub fn check_chip_id(&self, report: &Report) -> Result<ChipBinding, VerifyError> {
        if self.role == CertRole::Vlek {
            return Ok(ChipBinding::NotChipBound);
        }
        if report.chip_id_masked() {
            return Ok(ChipBinding::Masked);
        }
        let hwid = self
            .cert
            .extension(OID_HW_ID)
            .ok_or(VerifyError::HwIdMissing)?;
        let hwid = unwrap_octet_string(hwid);
        let chip_id = report.chip_id();
        // Turin hwIDs are 8 bytes: the rest of CHIP_ID is zero.
        let matches = !hwid.is_empty()
            && hwid.len() <= chip_id.len()
            && chip_id[..hwid.len()] == *hwid
            && chip_id[hwid.len()..].iter().all(|&b| b == 0);
        if !matches {
            return Err(VerifyError::ChipIdMismatch {
                certificate: hex::encode(hwid),
                report: hex::encode(chip_id),
            });
        }
        Ok(ChipBinding::Matched)
    }
}

/// AMD's VCEKs carry the hwID as raw bytes in extnValue; accept a DER OCTET STRING
/// wrapping too, as some tools produce.
fn unwrap_octet_string(value: &[u8]) -> &[u8] {
    if matches!(value.len(), 8 | 64) {
        return value; // Raw Turin (8) or Milan/Genoa (64) hwID, as AMD issues them.
    }
    match value {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.len() < 0x80 => rest,
        _ => value,
    }
}

/// Converts the report's little-endian, zero-padded R and S into a P-384 signature.
/// Checks a simulated (dev-mode) report's signature under the throwaway P-384 key it
/// came with (SEC1 encoding), with the same byte conventions as a hardware report.
/// This proves only that the report was not altered in transit: the key is whatever
/// the enclave chose, so it attests nothing.
pub fn check_simulated_signature(report: &Report, sec1_key: &[u8]) -> Result<(), VerifyError> {
    let role = CertRole::Simulated;
    let key = VerifyingKey::from_sec1_bytes(sec1_key).map_err(|e| VerifyError::EndorsementKey {
        role,
        reason: format!("{e} ({} bytes given)", sec1_key.len()),
    })?;
    let signature =
        report_signature(report).map_err(|reason| VerifyError::ReportSignature { role, reason })?;
    key.verify(report.signed_bytes(), &signature)
        .map_err(|_| VerifyError::ReportSignature {
            role,
            reason: "the signature does not match the report bytes".into(),
        })
}

fn report_signature(report: &Report) -> Result<Signature, String> {
    let (r, s) = report.signature_le();
    let to_be = |le: &[u8; 72], name: &str| -> Result<[u8; 48], String> {
        if le[48..].iter().any(|&b| b != 0) {
            return Err(format!("signature {name} has non-zero bytes beyond 48"));
        }
        let mut be = [0u8; 48];
        for (dst, src) in be.iter_mut().zip(le[..48].iter().rev()) {
            *dst = *src;
        }
        Ok(be)
    };
    let (r, s) = (to_be(&r, "R")?, to_be(&s, "S")?);
    Signature::from_scalars(r, s).map_err(|_| "signature R or S is zero or out of range".into())
}

/// Whether the CA's RSA signature on the VCEK/VLEK still needs checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainSignature {
    /// Check it.
    Check,
    /// This exact certificate was verified under this exact CA before (the
    /// [`crate::snp::Verifier`] cache); validity dates are still checked.
    AlreadyVerified,
}

/// How the report is tied to a chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChipBinding {
    /// The VCEK's hwID equals CHIP_ID.
    Matched,
    /// CHIP_ID is masked; the VCEK's chip could not be checked.
    Masked,
    /// The report is signed by a VLEK, which is not bound to a chip.
    NotChipBound,
}

/// A report whose origin on genuine AMD hardware has been established.
#[derive(Debug, Clone)]
pub struct AuthenticReport {
    /// The report.
    pub report: Report,
    /// Its generation.
    pub processor: Processor,
    /// Which key signed it.
    pub signed_by: CertRole,
    /// REPORTED_TCB, equal to what the signing certificate certifies.
    pub reported_tcb: Tcb,
    /// Whether and how the chip id was checked.
    pub chip: ChipBinding,
}

/// The processor generation: CPUID fields of a v3+ report, else the certificate.
pub fn infer_processor(report: &Report, vek: &EndorsementKey) -> Result<Processor, VerifyError> {
    match report.processor_from_cpuid() {
        Some(p) if p != vek.processor => Err(VerifyError::ProcessorMismatch {
            report: p,
            certificate: vek.processor,
        }),
        Some(p) => Ok(p),
        None => Ok(vek.processor),
    }
}

fn check_signing_key(report: &Report, vek: &EndorsementKey) -> Result<(), VerifyError> {
    let expected = match vek.role {
        CertRole::Vlek => SigningKey::Vlek,
        _ => SigningKey::Vcek,
    };
    let found = report.signing_key();
    if found != expected {
        return Err(VerifyError::SigningKeyMismatch {
            report: found.to_string(),
            certificate: vek.role,
        });
    }
    Ok(())
}

/// Establishes that `report` was produced by genuine AMD hardware, in this order:
/// processor, signing-key kind, CA validity, VCEK/VLEK signature and validity, report
/// signature, TCB extensions, chip id.
pub fn authenticate(
    report: Report,
    vek: &EndorsementKey,
    ca: &CaChain,
    now: SystemTime,
    signature: ChainSignature,
) -> Result<AuthenticReport, VerifyError> {
    let processor = infer_processor(&report, vek)?;
    check_signing_key(&report, vek)?;
    if ca.processor != processor {
        return Err(VerifyError::ProcessorMismatch {
            report: processor,
            certificate: ca.processor,
        });
    }
    ca.check_validity(now)?;
    if signature == ChainSignature::Check {
        ca.check_endorsement_key(&vek.cert, vek.role)?;
    }
    vek.cert.check_validity(vek.role, now)?;
    vek.check_report_signature(&report)?;
    let reported_tcb = vek.check_tcb(&report, processor)?;
    let chip = vek.check_chip_id(&report)?;
    Ok(AuthenticReport {
        report,
        processor,
        signed_by: vek.role,
        reported_tcb,
        chip,
    })
}

/// The components a TCB minimum may name, in the order they are checked.
pub const TCB_COMPONENTS: [TcbComponent; 5] = [
    TcbComponent::Fmc,
    TcbComponent::Bootloader,
    TcbComponent::Tee,
    TcbComponent::Snp,
    TcbComponent::Microcode,
];

#[cfg(test)]
mod tests {
    use super::unwrap_octet_string;

    #[test]
    fn raw_hwids_are_never_mistaken_for_der() {
        // A raw 64-byte hwID that happens to start like a DER OCTET STRING header.
        let mut raw = [0x11u8; 64];
        raw[0] = 0x04;
        raw[1] = 62;
        assert_eq!(unwrap_octet_string(&raw), &raw[..]);
        let mut wrapped = vec![0x04, 64];
        wrapped.extend([0x22; 64]);
        assert_eq!(unwrap_octet_string(&wrapped), &[0x22; 64][..]);
    }
}
