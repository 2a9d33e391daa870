//! The enclave's long-lived keys.

use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// HKDF info for the X25519 key derived by [`EnclaveKeys::from_seed`].
pub const X25519_SEED_INFO: &[u8] = b"chrysalis/v1/enclave-x25519";
/// HKDF info for the Ed25519 key derived by [`EnclaveKeys::from_seed`].
pub const ED25519_SEED_INFO: &[u8] = b"chrysalis/v1/enclave-ed25519";

/// The enclave's static X25519 key (sealed sessions) and Ed25519 key (receipts and
/// charges). Both secrets are zeroized on drop; `Debug` prints only public keys.
pub struct EnclaveKeys {
    x25519: StaticSecret,
    ed25519: SigningKey,
}

impl core::fmt::Debug for EnclaveKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EnclaveKeys")
            .field("x25519_pub", &hex::encode(self.x25519_public()))
            .field("ed25519_pub", &hex::encode(self.ed25519_public()))
            .finish_non_exhaustive()
    }
}

impl EnclaveKeys {
    /// Fresh random keys (dev mode: they die with the process).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        EnclaveKeys {
            x25519: StaticSecret::random_from_rng(&mut *rng),
            ed25519: SigningKey::generate(rng),
        }
    }

    /// Keys derived from a 32-byte seed with HKDF-SHA256 (no salt; info
    /// [`X25519_SEED_INFO`] and [`ED25519_SEED_INFO`]). On SEV-SNP the seed is the
    /// firmware's measurement-bound derived key, so the keys survive a reboot on the
    /// same chip with the same image.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(None, seed);
        let expand = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            // Invariant: 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
            hkdf.expand(info, okm.as_mut())
                .expect("32-byte HKDF-SHA256 output is valid");
            okm
        };
        EnclaveKeys {
            x25519: StaticSecret::from(*expand(X25519_SEED_INFO)),
            ed25519: SigningKey::from_bytes(&expand(ED25519_SEED_INFO)),
        }
    }

    /// The X25519 public key clients seal to.
    pub fn x25519_public(&self) -> [u8; 32] {
        PublicKey::from(&self.x25519).to_bytes()
    }

    /// The Ed25519 public key receipts and charges verify under.
    pub fn ed25519_public(&self) -> [u8; 32] {
        self.ed25519.verifying_key().to_bytes()
    }

    /// The signing key, for [`crate::Signed::sign`] and [`crate::ton::Charge::sign`].
    pub fn signing_key(&self) -> &SigningKey {
        &self.ed25519
    }

    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }
}
