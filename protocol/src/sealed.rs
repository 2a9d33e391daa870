//! The sealed channel, protocol v2: a forward-secret, hybrid post-quantum handshake
//! signed by the enclave, then AES-256-GCM frames. `docs/protocol.md` is the
//! specification; in short:
//!
//! 1. client: fresh X25519 key `ce` and ML-KEM-768 key pair `(dk, ek)`; sends
//!    [`SessionOpen`] `{ce_pub, ek, evidence_hash}` ([`ClientHandshake::start`]).
//! 2. enclave ([`SealedChannel::server`]): fresh X25519 key `ee`; `(ct, ss) =
//!    ML-KEM.Encaps(ek)`; answers [`SessionAccept`] `{session_id, ee_pub, ct, sig}`,
//!    where `sig` = Ed25519 under the evidence's key over [`accept_signing_bytes`]`(th)`
//!    and `th` = [`transcript_hash`] (SHA-256 over a label, the evidence hash, the
//!    session-open and the accept without its signature).
//! 3. client ([`ClientHandshake::finish`]): verifies `sig` first, then derives.
//! 4. both ([`session_keys`]): ikm = X25519(ce, enclave_static) ‖ X25519(ce, ee) ‖ ss,
//!    salt = th; client-to-server key = HKDF-SHA256(salt, ikm, info
//!    "chrysalis/v2/c2s"), 32 bytes; server-to-client key likewise with info
//!    "chrysalis/v2/s2c". The ephemeral secrets are wiped once the keys exist.
//! 5. each sealed frame: header counter = the sender's per-direction counter, starting
//!    at 0; GCM nonce = 4 zero bytes ‖ counter (u64 big-endian); AAD = the 16-byte frame
//!    header; body = ciphertext ‖ 16-byte tag.
//!
//! The enclave's fresh share and encapsulation make every session's keys new even when
//! a recorded session-open is replayed, and the keys depend on two secrets that die with
//! the session, so a later theft of the enclave's static key opens no recorded session.
//! The ML-KEM secret keeps them safe against a future quantum attacker who recorded
//! the handshake, as long as ML-KEM-768 holds; X25519 keeps them safe if it does not.
//!
//! A receiver accepts only the exact next counter, so replays, drops and reorders are
//! refused; any failure to open closes the channel for good.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use hkdf::Hkdf;
use ml_kem::kem::{Decapsulate, DecapsulationKey, Encapsulate, EncapsulationKey};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768, MlKem768Params};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::codec::WireMessage;
use crate::evidence::Evidence;
use crate::frame::{Frame, FrameHeader, FrameKind, HEADER_LEN, MAX_BODY_LEN};
use crate::keys::EnclaveKeys;
use crate::messages::{
    SealedMessage, SessionAccept, SessionOpen, MLKEM_CIPHERTEXT_LEN, MLKEM_ENCAPSULATION_KEY_LEN,
};
use crate::ProtocolError;

/// HKDF info of the client-to-server key.
pub const C2S_INFO: &[u8] = b"chrysalis/v2/c2s";
/// HKDF info of the server-to-client key.
pub const S2C_INFO: &[u8] = b"chrysalis/v2/s2c";
/// Domain label that starts the transcript hash ([`transcript_hash`]).
pub const TRANSCRIPT_LABEL: &[u8] = b"chrysalis/v2/transcript";
/// Domain label of the enclave's signature over the transcript
/// ([`accept_signing_bytes`]).
pub const ACCEPT_SIGNATURE_DOMAIN: &[u8] = b"chrysalis/v2/session-accept";
/// Length of the AES-GCM tag that ends every sealed body.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one sealed frame can carry.
pub const MAX_PLAINTEXT_LEN: usize = MAX_BODY_LEN - TAG_LEN;

type MlKemDecapsulationKey = DecapsulationKey<MlKem768Params>;
type MlKemEncapsulationKey = EncapsulationKey<MlKem768Params>;

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

/// The client between sending its [`SessionOpen`] and reading the [`SessionAccept`]:
/// it holds the session's ephemeral X25519 and ML-KEM secrets (wiped on drop), and
/// can only be finished once.
pub struct ClientHandshake {
    x25519: StaticSecret,
    mlkem: MlKemDecapsulationKey,
    open: SessionOpen,
    enclave_x25519_pub: [u8; 32],
    enclave_ed25519_pub: [u8; 32],
    evidence_hash: [u8; 32],
}

impl core::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field(
                "client_ephemeral_pub",
                &hex::encode(self.open.client_ephemeral_pub),
            )
            .field("evidence_hash", &hex::encode(self.evidence_hash))
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a session with the enclave whose `evidence` the caller has verified:
    /// draws a fresh X25519 secret (32 bytes from `rng`) and a fresh ML-KEM-768 key pair
    /// (FIPS 203 `d` then `z`, 32 bytes each), and returns the handshake with the
    /// [`SessionOpen`] to send.
    pub fn start(
        rng: &mut impl CryptoRngCore,
        evidence: &Evidence,
    ) -> (ClientHandshake, SessionOpen) {
        let x25519 = StaticSecret::random_from_rng(&mut *rng);
        let (mlkem, ek) = MlKem768::generate(rng);
        let mut client_mlkem_pub = [0u8; MLKEM_ENCAPSULATION_KEY_LEN];
        client_mlkem_pub.copy_from_slice(&ek.as_bytes());
        let evidence_hash = evidence.hash();
        let open = SessionOpen {
            client_ephemeral_pub: PublicKey::from(&x25519).to_bytes(),
            client_mlkem_pub,
            evidence_hash,
        };
        let handshake = ClientHandshake {
            x25519,
            mlkem,
            open: open.clone(),
            enclave_x25519_pub: evidence.x25519_pub,
            enclave_ed25519_pub: evidence.ed25519_pub,
            evidence_hash,
        };
        (handshake, open)
    }

    /// The session-open this handshake sent.
    pub fn session_open(&self) -> &SessionOpen {
        &self.open
    }

    /// Checks the enclave's [`SessionAccept`] and derives the session keys. The
    /// signature over the transcript is verified under the evidence's Ed25519 key
    /// before anything is derived; a bad one fails with
    /// [`ProtocolError::BadSignature`] (`what` = "session accept"). The ephemeral
    /// secrets are wiped when this returns, whatever the outcome.
    pub fn finish(self, accept: &SessionAccept) -> Result<SealedChannel, ProtocolError> {
        let th = transcript_hash(&self.evidence_hash, &self.open, accept);
        verify_accept(&self.enclave_ed25519_pub, &th, &accept.signature)?;
        let static_dh = self
            .x25519
            .diffie_hellman(&PublicKey::from(self.enclave_x25519_pub));
        let ephemeral_dh = self
            .x25519
            .diffie_hellman(&PublicKey::from(accept.enclave_ephemeral_pub));
        contributory(&static_dh)?;
        contributory(&ephemeral_dh)?;
        let ciphertext = ml_kem::Ciphertext::<MlKem768>::from(accept.mlkem_ciphertext);
        let kem_secret = decapsulate(&self.mlkem, &ciphertext);
        let keys = session_keys(
            static_dh.as_bytes(),
            ephemeral_dh.as_bytes(),
            &kem_secret,
            &th,
        );
        Ok(SealedChannel::from_keys(ChannelRole::Client, &keys))
    }
}

/// ML-KEM decapsulation into a wiping buffer; the library's own copy is wiped too.
fn decapsulate(
    dk: &MlKemDecapsulationKey,
    ciphertext: &ml_kem::Ciphertext<MlKem768>,
) -> Zeroizing<[u8; 32]> {
    // Invariant: ml-kem 0.2's decapsulation cannot fail (its error type is `()` and it
    // answers a bad ciphertext with FIPS 203's implicit-rejection secret).
    let mut shared = dk
        .decapsulate(ciphertext)
        .expect("ML-KEM decapsulation is infallible");
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&shared);
    shared.as_mut_slice().zeroize();
    out
}

fn contributory(shared: &SharedSecret) -> Result<(), ProtocolError> {
    if shared.was_contributory() {
        Ok(())
    } else {
        Err(ProtocolError::WeakPublicKey)
    }
}

/// Parses an ML-KEM-768 encapsulation key and applies FIPS 203's input check (7.2:
/// every 12-bit coefficient below q = 3329, which holds exactly when decoding and
/// re-encoding gives the same bytes).
fn parse_encapsulation_key(
    bytes: &[u8; MLKEM_ENCAPSULATION_KEY_LEN],
) -> Result<MlKemEncapsulationKey, ProtocolError> {
    let encoded = ml_kem::Encoded::<MlKemEncapsulationKey>::from(*bytes);
    let key = MlKemEncapsulationKey::from_bytes(&encoded);
    if key.as_bytes().as_slice() == bytes.as_slice() {
        Ok(key)
    } else {
        Err(ProtocolError::InvalidKemKey)
    }
}

fn verify_accept(
    enclave_ed25519_pub: &[u8; 32],
    th: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), ProtocolError> {
    let key = VerifyingKey::from_bytes(enclave_ed25519_pub).map_err(|_| {
        ProtocolError::InvalidVerifyingKey {
            key: hex::encode(enclave_ed25519_pub),
        }
    })?;
    key.verify_strict(&accept_signing_bytes(th), &Signature::from_bytes(signature))
        .map_err(|_| ProtocolError::BadSignature {
            what: "session accept",
            key: hex::encode(enclave_ed25519_pub),
        })
}

/// The transcript hash both sides bind the session to:
/// SHA-256([`TRANSCRIPT_LABEL`] ‖ evidence_hash ‖ postcard(open) ‖ accept.session_id ‖
/// accept.enclave_ephemeral_pub ‖ accept.mlkem_ciphertext). Every part has a fixed
/// length, so the concatenation is unambiguous; `accept.signature` is not included.
pub fn transcript_hash(
    evidence_hash: &[u8; 32],
    open: &SessionOpen,
    accept: &SessionAccept,
) -> [u8; 32] {
    Sha256::new()
        .chain_update(TRANSCRIPT_LABEL)
        .chain_update(evidence_hash)
        .chain_update(open.to_wire())
        .chain_update(accept.session_id)
        .chain_update(accept.enclave_ephemeral_pub)
        .chain_update(accept.mlkem_ciphertext)
        .finalize()
        .into()
}

/// The exact bytes the enclave signs in a [`SessionAccept`]:
/// [`ACCEPT_SIGNATURE_DOMAIN`] ‖ 0x00 ‖ transcript hash.
pub fn accept_signing_bytes(transcript_hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ACCEPT_SIGNATURE_DOMAIN.len() + 1 + 32);
    out.extend_from_slice(ACCEPT_SIGNATURE_DOMAIN);
    out.push(0);
    out.extend_from_slice(transcript_hash);
    out
}

impl SealedChannel {
    /// Server side: answers a [`SessionOpen`] that names `issued_evidence_hash` (the
    /// hash of evidence this enclave handed out) with a fresh ephemeral X25519 share
    /// and an ML-KEM-768 encapsulation to the client's key (64 bytes from `rng`: the
    /// X25519 secret, then FIPS 203's `m`), signed over the transcript. Returns the
    /// channel and the [`SessionAccept`] to send. The ephemeral secrets are wiped before
    /// this returns.
    pub fn server(
        rng: &mut impl CryptoRngCore,
        keys: &EnclaveKeys,
        open: &SessionOpen,
        issued_evidence_hash: &[u8; 32],
        session_id: [u8; 16],
    ) -> Result<(SealedChannel, SessionAccept), ProtocolError> {
        if open.evidence_hash != *issued_evidence_hash {
            return Err(ProtocolError::EvidenceMismatch {
                found: hex::encode(open.evidence_hash),
                expected: hex::encode(issued_evidence_hash),
            });
        }
        let client_mlkem = parse_encapsulation_key(&open.client_mlkem_pub)?;
        let client_pub = PublicKey::from(open.client_ephemeral_pub);
        let static_dh = keys.x25519_secret().diffie_hellman(&client_pub);
        contributory(&static_dh)?;
        let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
        let enclave_ephemeral_pub = PublicKey::from(&ephemeral).to_bytes();
        let ephemeral_dh = ephemeral.diffie_hellman(&client_pub);
        contributory(&ephemeral_dh)?;
        // Invariant: ml-kem 0.2's encapsulation cannot fail (its error type is `()`).
        let (ciphertext, mut shared) = client_mlkem
            .encapsulate(rng)
            .expect("ML-KEM encapsulation is infallible");
        let mut kem_secret = Zeroizing::new([0u8; 32]);
        kem_secret.copy_from_slice(&shared);
        shared.as_mut_slice().zeroize();
        let mut mlkem_ciphertext = [0u8; MLKEM_CIPHERTEXT_LEN];
        mlkem_ciphertext.copy_from_slice(&ciphertext);
        let mut accept = SessionAccept {
            session_id,
            enclave_ephemeral_pub,
            mlkem_ciphertext,
            signature: [0; 64],
        };
        let th = transcript_hash(issued_evidence_hash, open, &accept);
        accept.signature = keys
            .signing_key()
            .sign(&accept_signing_bytes(&th))
            .to_bytes();
        let keys = session_keys(
            static_dh.as_bytes(),
            ephemeral_dh.as_bytes(),
            &kem_secret,
            &th,
        );
        Ok((SealedChannel::from_keys(ChannelRole::Server, &keys), accept))
    }

    fn from_keys(role: ChannelRole, keys: &[[u8; 32]; 2]) -> SealedChannel {
        let [c2s, s2c] = keys;
        let (c2s, s2c) = (Aes256Gcm::new(c2s.into()), Aes256Gcm::new(s2c.into()));
        let (sealer, opener) = match role {
            ChannelRole::Client => (c2s, s2c),
            ChannelRole::Server => (s2c, c2s),
        };
        SealedChannel {
            role,
            sealer,
            opener,
            send_counter: 0,
            recv_counter: 0,
            poisoned: false,
        }
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

/// The session keys `(c2s, s2c)`: HKDF-SHA256 with salt = `transcript_hash` and
/// ikm = `static_dh ‖ ephemeral_dh ‖ kem_secret` (96 bytes), expanded to 32 bytes
/// under [`C2S_INFO`] and under [`S2C_INFO`]. Exposed so independent implementations
/// (and tests) can check the schedule byte for byte.
pub fn session_keys(
    static_dh: &[u8; 32],
    ephemeral_dh: &[u8; 32],
    kem_secret: &[u8; 32],
    transcript_hash: &[u8; 32],
) -> Zeroizing<[[u8; 32]; 2]> {
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(static_dh);
    ikm[32..64].copy_from_slice(ephemeral_dh);
    ikm[64..].copy_from_slice(kem_secret);
    let hkdf = Hkdf::<Sha256>::new(Some(transcript_hash), ikm.as_slice());
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
        // ml-kem's `zeroize` feature gives the decapsulation key a wiping `Drop`.
        wipes_on_drop::<super::MlKemDecapsulationKey>();
        wipes_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
    }
}
