//! Attestation evidence and the `REPORT_DATA` binding.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::codec::{check_len, WireMessage};
use crate::ProtocolError;

/// Domain label of [`report_data`], from DESIGN.md ("Binding and key schedule").
pub const REPORT_DATA_LABEL: &[u8] = b"chrysalis/v1/report-data";

/// Domain label of [`Evidence::hash`].
pub const EVIDENCE_HASH_LABEL: &[u8] = b"chrysalis/v1/evidence";

/// Largest attestation report accepted (an SNP report is 1184 bytes).
pub const MAX_REPORT_LEN: usize = 4096;
/// Largest single certificate accepted (DER or PEM).
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// Most certificates in a chain (VCEK or VLEK, ASK or ASVK, ARK, spare).
pub const MAX_CERTS: usize = 4;
/// Longest manifest id accepted, in bytes.
pub const MAX_MANIFEST_ID_LEN: usize = 128;

/// The 64 bytes an enclave asks the secure processor to put in its report:
/// SHA-512("chrysalis/v1/report-data" ‖ x25519_pub ‖ ed25519_pub ‖ model_root ‖ nonce).
///
/// `nonce` is the client's 32-byte challenge, or zeros for evidence made without one.
pub fn report_data(
    x25519_pub: &[u8; 32],
    ed25519_pub: &[u8; 32],
    model_root: &[u8; 32],
    nonce: &[u8; 32],
) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_LABEL);
    hasher.update(x25519_pub);
    hasher.update(ed25519_pub);
    hasher.update(model_root);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// Where the attestation report comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EvidenceKind {
    /// A hardware AMD SEV-SNP report, with VCEK (or VLEK), ASK (or ASVK) and ARK.
    SevSnp,
    /// Dev mode outside a TEE: same shape, signed by a throwaway key. Clients refuse
    /// it unless the user opts into INSECURE mode.
    Simulated,
}

/// What an enclave proves about itself: its report, the chain that signs it, its
/// public keys, and the model it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Hardware or simulated.
    pub kind: EvidenceKind,
    /// The raw attestation report (at most [`MAX_REPORT_LEN`] bytes).
    pub report: Vec<u8>,
    /// Certificates, leaf first (at most [`MAX_CERTS`] of [`MAX_CERT_LEN`] bytes).
    pub cert_chain: Vec<Vec<u8>>,
    /// The enclave's static X25519 key for sealed sessions.
    pub x25519_pub: [u8; 32],
    /// The enclave's Ed25519 key for receipts and charges.
    pub ed25519_pub: [u8; 32],
    /// Merkle root of the model files being served.
    pub model_root: [u8; 32],
    /// Which published image manifest the enclave claims to run (at most
    /// [`MAX_MANIFEST_ID_LEN`] bytes).
    pub manifest_id: String,
}

impl Evidence {
    /// The value this evidence's report must carry as `REPORT_DATA` for `nonce`.
    pub fn expected_report_data(&self, nonce: &[u8; 32]) -> [u8; 64] {
        report_data(&self.x25519_pub, &self.ed25519_pub, &self.model_root, nonce)
    }

    /// SHA-256("chrysalis/v1/evidence" ‖ postcard(self)): names this exact evidence in
    /// [`crate::SessionOpen`] and in the session key schedule.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(EVIDENCE_HASH_LABEL);
        hasher.update(self.to_wire());
        hasher.finalize().into()
    }
}

impl WireMessage for Evidence {
    const NAME: &'static str = "evidence";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len("evidence report", self.report.len(), MAX_REPORT_LEN)?;
        check_len(
            "evidence certificate chain",
            self.cert_chain.len(),
            MAX_CERTS,
        )?;
        for cert in &self.cert_chain {
            check_len("evidence certificate", cert.len(), MAX_CERT_LEN)?;
        }
        check_len(
            "evidence manifest id",
            self.manifest_id.len(),
            MAX_MANIFEST_ID_LEN,
        )
    }
}
