//! The sealed channel: DESIGN.md's key schedule and AES-256-GCM frames.
//!
//! - ikm = X25519(client_ephemeral, enclave_static)
//! - salt = SHA-256(evidence_hash ‖ client_ephemeral_pub)
//! - client-to-server key = HKDF-SHA256(salt, ikm, info "chrysalis/v1/c2s"), 32 bytes;
//!   server-to-client key likewise with info "chrysalis/v1/s2c"
//! - each sealed frame: header counter = the sender's per-direction counter, starting
//!   at 0; GCM nonce = 4 zero bytes ‖ counter (u64 big-endian); AAD = the 16-byte frame
//!   header; body = ciphertext ‖ 16-byte tag.
//!
//! A receiver accepts only the exact next counter, so replays, drops and reorders are
//! refused; any failure to open closes the channel for good.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey, SharedSecret};
use zeroize::Zeroizing;

use crate::codec::WireMessage;
use crate::frame::{Frame, FrameHeader, FrameKind, HEADER_LEN, MAX_BODY_LEN};
use crate::keys::EnclaveKeys;
use crate::messages::{SealedMessage, SessionOpen};
use crate::ProtocolError;

/// HKDF info of the client-to-server key.
pub const C2S_INFO: &[u8] = b"chrysalis/v1/c2s";
/// HKDF info of the server-to-client key.
pub const S2C_INFO: &[u8] = b"chrysalis/v1/s2c";
/// Length of the AES-GCM tag that ends every sealed body.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one sealed frame can carry.
pub const MAX_PLAINTEXT_LEN: usize = MAX_BODY_LEN - TAG_LEN;

/// Which end of the channel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelRole {
    /// Seals with the c2s key, opens with the s2c key.
    Client,
    /// Seals with the s2c key, opens with the c2s key.
    Server,
}

/// One end of an open sealed session. Keys are zeroized on drop (the AES key schedule
/// by the `aes` crate's `zeroize` feature); `Debug` shows only the role and counters.
pub struct SealedChannel {
    role: ChannelRole,
    sealer: Aes256Gcm,
    opener: Aes256Gcm,
    send_counter: u64,
    recv_counter: u64,
    poisoned: bool,
}

impl core::fmt::Debug for SealedChannel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealedChannel")
            .field("role", &self.role)
            .field("send_counter", &self.send_counter)
            .field("recv_counter", &self.recv_counter)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl SealedChannel {
    /// Client side: makes a fresh ephemeral key, derives the session keys against the
    /// enclave's verified X25519 key and evidence hash, and returns the channel with the
    /// [`SessionOpen`] to send.
    pub fn client(
        rng: &mut impl CryptoRngCore,
        enclave_x25519_pub: &[u8; 32],
        evidence_hash: &[u8; 32],
    ) -> Result<(SealedChannel, SessionOpen), ProtocolError> {
        let ephemeral = EphemeralSecret::random_from_rng(rng);
        let client_ephemeral_pub = PublicKey::from(&ephemeral).to_bytes();
        let shared = ephemeral.diffie_hellman(&PublicKey::from(*enclave_x25519_pub));
        let open = SessionOpen {
            client_ephemeral_pub,
            evidence_hash: *evidence_hash,
        };
        let channel = Self::from_shared(ChannelRole::Client, &shared, &open)?;
        Ok((channel, open))
    }

    /// Server side: accepts a [`SessionOpen`] that names `issued_evidence_hash`, the
    /// hash of evidence this enclave handed out (and should accept once: a replayed
    /// session-open under the same evidence would derive the same keys).
    pub fn server(
        keys: &EnclaveKeys,
        open: &SessionOpen,
        issued_evidence_hash: &[u8; 32],
    ) -> Result<SealedChannel, ProtocolError> {
        if open.evidence_hash != *issued_evidence_hash {
            return Err(ProtocolError::EvidenceMismatch {
                found: hex::encode(open.evidence_hash),
                expected: hex::encode(issued_evidence_hash),
            });
        }
        let client_pub = PublicKey::from(open.client_ephemeral_pub);
        let shared = keys.x25519_secret().diffie_hellman(&client_pub);
        Self::from_shared(ChannelRole::Server, &shared, open)
    }

    fn from_shared(
        role: ChannelRole,
        shared: &SharedSecret,
        open: &SessionOpen,
    ) -> Result<SealedChannel, ProtocolError> {
        if !shared.was_contributory() {
            return Err(ProtocolError::WeakPublicKey);
        }
        let (c2s, s2c) = derive_keys(shared.as_bytes(), open);
        let (sealer, opener) = match role {
            ChannelRole::Client => (c2s, s2c),
            ChannelRole::Server => (s2c, c2s),
        };
        Ok(SealedChannel {
            role,
            sealer,
            opener,
            send_counter: 0,
            recv_counter: 0,
            poisoned: false,
        })
    }

    /// Which end this is.
    pub fn role(&self) -> ChannelRole {
        self.role
    }

    /// Seals `plaintext` into the next frame's wire bytes.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        self.check_open()?;
        if self.send_counter == u64::MAX {
            return Err(ProtocolError::CounterExhausted);
        }
        let header = FrameHeader::new(
            FrameKind::Sealed,
            plaintext.len().saturating_add(TAG_LEN),
            self.send_counter,
        )?;
        // Encrypt in place behind the header: one buffer, no intermediate copy.
        let mut out = Vec::with_capacity(header.frame_len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(plaintext);
        let (aad, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .sealer
            .encrypt_in_place_detached(&nonce(self.send_counter), aad, body)
            // Invariant: aes-gcm fails only for inputs over 2^36 bytes; bodies are < 1 MiB.
            .expect("AES-GCM encryption of a bounded frame cannot fail");
        out.extend_from_slice(&tag);
        self.send_counter += 1;
        Ok(out)
    }

    /// Opens the next sealed frame, returning its plaintext. Any failure (wrong kind,
    /// replayed or reordered counter, short body, bad tag) closes the channel.
    pub fn open(&mut self, frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
        self.check_open()?;
        let result = self.try_open(frame);
        self.poisoned = result.is_err();
        result
    }

    /// Decodes exactly one frame from `bytes` and opens it; a decode failure closes
    /// the channel too.
    pub fn open_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        self.check_open()?;
        match Frame::decode(bytes) {
            Ok(frame) => self.open(&frame),
            Err(err) => {
                self.poisoned = true;
                Err(err)
            }
        }
    }

    /// Seals a [`SealedMessage`].
    pub fn seal_message(&mut self, message: &SealedMessage) -> Result<Vec<u8>, ProtocolError> {
        let plaintext = Zeroizing::new(message.to_wire());
        self.seal(&plaintext)
    }

    /// Opens a frame and decodes the [`SealedMessage`] inside.
    pub fn open_message(&mut self, frame: &Frame) -> Result<SealedMessage, ProtocolError> {
        let plaintext = Zeroizing::new(self.open(frame)?);
        SealedMessage::from_wire(&plaintext)
    }

    /// True once a failure has closed the channel.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check_open(&self) -> Result<(), ProtocolError> {
        if self.poisoned {
            Err(ProtocolError::Poisoned { what: "session" })
        } else {
            Ok(())
        }
    }

    fn try_open(&mut self, frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
        frame.kind().expect(FrameKind::Sealed)?;
        let (counter, expected) = (frame.header().counter, self.recv_counter);
        if counter < expected {
            return Err(ProtocolError::Replayed { counter, expected });
        }
        if counter > expected {
            return Err(ProtocolError::Reordered { counter, expected });
        }
        if frame.body().len() < TAG_LEN {
            return Err(ProtocolError::Truncated {
                what: "sealed body",
                needed: TAG_LEN,
                found: frame.body().len(),
            });
        }
        let aad = frame.header().to_bytes();
        let payload = Payload {
            msg: frame.body(),
            aad: &aad,
        };
        let plaintext = self
            .opener
            .decrypt(&nonce(counter), payload)
            .map_err(|_| ProtocolError::AuthenticationFailed)?;
        // Cannot overflow: a frame with counter u64::MAX is never sealed.
        self.recv_counter = expected.saturating_add(1);
        Ok(plaintext)
    }
}

/// The GCM nonce of frame `counter`: 4 zero bytes, then the counter big-endian.
fn nonce(counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(bytes)
}

/// DESIGN.md's schedule: returns the (c2s, s2c) ciphers.
fn derive_keys(ikm: &[u8; 32], open: &SessionOpen) -> (Aes256Gcm, Aes256Gcm) {
    let [c2s, s2c] = &*session_keys(ikm, open);
    (Aes256Gcm::new(c2s.into()), Aes256Gcm::new(s2c.into()))
}

/// The raw session keys `(c2s, s2c)` for a shared secret and a session-open, exposed
/// so independent implementations (and tests) can check the schedule byte for byte.
pub fn session_keys(shared_secret: &[u8; 32], open: &SessionOpen) -> Zeroizing<[[u8; 32]; 2]> {
    let salt: [u8; 32] = Sha256::new()
        .chain_update(open.evidence_hash)
        .chain_update(open.client_ephemeral_pub)
        .finalize()
        .into();
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared_secret);
    let mut keys = Zeroizing::new([[0u8; 32]; 2]);
    for (slot, info) in keys.iter_mut().zip([C2S_INFO, S2C_INFO]) {
        // Invariant: 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        hkdf.expand(info, slot)
            .expect("32-byte HKDF-SHA256 output is valid");
    }
    keys
}

#[cfg(test)]
mod tests {
    /// Compiles only if `T` wipes itself on drop.
    fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}

    /// Compiles only if `T` can be wiped.
    fn has_zeroize<T: zeroize::Zeroize>() {}

    #[test]
    fn every_secret_holder_is_zeroize_on_drop() {
        // A compile-time check: removing the `zeroize` features of aes, x25519-dalek or
        // ed25519-dalek breaks the build of this test.
        wipes_on_drop::<aes::Aes256>();
        // x25519-dalek 2 derives `Zeroize` with `#[zeroize(drop)]` (a wiping `Drop`)
        // under its `zeroize` feature but does not implement the marker trait, so
        // check that the feature is on.
        has_zeroize::<x25519_dalek::StaticSecret>();
        has_zeroize::<x25519_dalek::SharedSecret>();
        wipes_on_drop::<ed25519_dalek::SigningKey>();
        wipes_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
    }
}
