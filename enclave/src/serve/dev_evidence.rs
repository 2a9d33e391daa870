//! The enclave's keys and, in dev mode, simulated evidence.
//!
//! Simulated evidence has the shape of real evidence (a report whose `REPORT_DATA`
//! binds the enclave's keys, the model root and the client's nonce, signed by a key in
//! the certificate chain), but the signing key is a throwaway generated at start-up:
//! it proves nothing about the code that runs. Clients refuse it unless the user opts
//! into INSECURE mode.
//!
//! Simulated report layout (all offsets in bytes):
//!
//! ```text
//!   0   32  magic "CHRYSALIS SIMULATED REPORT v1" padded with zeros
//!  32   64  REPORT_DATA (see chrysalis_protocol::report_data)
//!  96   64  Ed25519 signature over bytes [0, 96) by the throwaway key
//! ```
//!
//! The certificate chain holds one entry: the throwaway key's 32 public bytes.

use chrysalis_protocol::{EnclaveKeys, Evidence, EvidenceKind};
use ed25519_dalek::{Signer, SigningKey};
use rand_core::OsRng;

/// Magic at the start of a simulated report.
pub const SIMULATED_MAGIC: &[u8; 32] = b"CHRYSALIS SIMULATED REPORT v1\0\0\0";
/// Length of a simulated report.
pub const SIMULATED_REPORT_LEN: usize = 160;

/// What the enclave is: its keys and the model it serves.
pub struct Identity {
    /// Channel and receipt keys (random per start in dev mode).
    pub keys: EnclaveKeys,
    /// Merkle root of the served model.
    pub model_root: [u8; 32],
}

impl Identity {
    /// Fresh random keys (dev mode).
    pub fn random(model_root: [u8; 32]) -> Self {
        Self {
            keys: EnclaveKeys::generate(&mut OsRng),
            model_root,
        }
    }
}

/// Where evidence comes from: SNP hardware, or the dev-mode simulation below.
pub trait EvidenceSource: Send + Sync {
    /// Evidence for this identity, bound to `nonce`.
    fn evidence(&self, identity: &Identity, nonce: &[u8; 32]) -> Result<Evidence, String>;
}

/// Dev-mode evidence signed by a throwaway key. INSECURE by construction.
pub struct SimulatedEvidence {
    key: SigningKey,
}

impl SimulatedEvidence {
    /// A simulation with a fresh throwaway key.
    pub fn new() -> Self {
        Self {
            key: SigningKey::generate(&mut OsRng),
        }
    }
}

impl EvidenceSource for SimulatedEvidence {
    fn evidence(&self, identity: &Identity, nonce: &[u8; 32]) -> Result<Evidence, String> {
        let report_data = chrysalis_protocol::report_data(
            &identity.keys.x25519_public(),
            &identity.keys.ed25519_public(),
            &identity.model_root,
            nonce,
        );
        let mut report = Vec::with_capacity(SIMULATED_REPORT_LEN);
        report.extend_from_slice(SIMULATED_MAGIC);
        report.extend_from_slice(&report_data);
        let signature = self.key.sign(&report).to_bytes();
        report.extend_from_slice(&signature);
        Ok(Evidence {
            kind: EvidenceKind::Simulated,
            report,
            cert_chain: vec![self.key.verifying_key().to_bytes().to_vec()],
            x25519_pub: identity.keys.x25519_public(),
            ed25519_pub: identity.keys.ed25519_public(),
            model_root: identity.model_root,
            manifest_id: "dev-simulated".to_owned(),
        })
    }
}
