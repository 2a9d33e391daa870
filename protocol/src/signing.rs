//! Ed25519 signatures over receipts (and any later postcard-signed statement).
//!
//! The signed bytes are `DOMAIN ‖ 0x00 ‖ postcard(body)`, with a `DOMAIN` per type, so
//! one kind of statement can never be passed off as another. Charges are signed over
//! their TON cell hash instead, so the channel contract can check them: see
//! [`crate::ton::Charge::sign`].

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{array64, WireMessage};
use crate::messages::{FinishReason, Usage};
use crate::ProtocolError;

/// A wire type the enclave signs.
pub trait Signable: WireMessage {
    /// Domain-separation label prefixed to the signed bytes.
    const DOMAIN: &'static [u8];

    /// The exact bytes the signature covers: `DOMAIN ‖ 0x00 ‖ postcard(self)`.
    fn signing_bytes(&self) -> Vec<u8> {
        let body = self.to_wire();
        let mut out = Vec::with_capacity(Self::DOMAIN.len() + 1 + body.len());
        out.extend_from_slice(Self::DOMAIN);
        out.push(0);
        out.extend_from_slice(&body);
        out
    }
}

/// The enclave's statement about one response: which model answered which request
/// under which evidence, how many tokens it took, and what it delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The client's [`crate::InferenceRequest::request_id`].
    pub request_id: u64,
    /// [`crate::Evidence::hash`] of the evidence the session was opened under.
    pub evidence_hash: [u8; 32],
    /// Merkle root of the model that served the request.
    pub model_root: [u8; 32],
    /// [`crate::InferenceRequest::hash`] of the request.
    pub request_hash: [u8; 32],
    /// Tokens metered inside the enclave.
    pub usage: Usage,
    /// [`output_hash`] of the token ids the response delivered and its finish reason,
    /// so a receipt cannot be moved onto other output (or the output cut short by
    /// whoever relays it) without the client noticing.
    pub output_hash: [u8; 32],
}

impl WireMessage for Receipt {
    const NAME: &'static str = "receipt";
}

impl Signable for Receipt {
    /// v2: the layout gained `output_hash`.
    const DOMAIN: &'static [u8] = b"chrysalis/v2/receipt";
}

/// Domain of [`output_hash`].
pub const OUTPUT_HASH_DOMAIN: &[u8] = b"chrysalis/v2/output";

/// SHA-256 over what a response delivered: `OUTPUT_HASH_DOMAIN ‖ 0x00 ‖ count (u64
/// little-endian) ‖ each token id (u32 little-endian) ‖ finish reason (one byte: 0 stop,
/// 1 length, 2 cancelled)`.
pub fn output_hash(token_ids: &[u32], finish: FinishReason) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(OUTPUT_HASH_DOMAIN);
    hash.update([0]);
    hash.update((token_ids.len() as u64).to_le_bytes());
    for id in token_ids {
        hash.update(id.to_le_bytes());
    }
    hash.update([match finish {
        FinishReason::Stop => 0u8,
        FinishReason::Length => 1,
        FinishReason::Cancelled => 2,
    }]);
    hash.finalize().into()
}

/// A value and the enclave's Ed25519 signature over its [`Signable::signing_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// What was signed.
    pub body: T,
    /// Ed25519 signature (R ‖ s).
    #[serde(with = "array64")]
    pub signature: [u8; 64],
}

impl<T: Signable> Signed<T> {
    /// Signs `body` with the enclave's key.
    pub fn sign(body: T, key: &SigningKey) -> Self {
        let signature = key.sign(&body.signing_bytes()).to_bytes();
        Signed { body, signature }
    }

    /// Verifies the signature under `public_key` (strict Ed25519: no small-order keys,
    /// no malleable signatures) and returns the body.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<&T, ProtocolError> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| {
            ProtocolError::InvalidVerifyingKey {
                key: hex::encode(public_key),
            }
        })?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.body.signing_bytes(), &signature)
            .map_err(|_| ProtocolError::BadSignature {
                what: T::NAME,
                key: hex::encode(public_key),
            })?;
        Ok(&self.body)
    }
}
