//! Chrysalis wire protocol.
//!
//! This crate owns everything that crosses the boundary between a client and the
//! enclave: versioned wire messages encoded with postcard, length-prefixed framing with
//! a hard maximum frame size, the sealed channel (X25519, HKDF-SHA256, AES-256-GCM,
//! bound to the attestation evidence as `DESIGN.md` specifies), and Ed25519-signed
//! receipts and charges. It performs no I/O and depends on no other Chrysalis crate;
//! every other crate may depend on it.
//!
//! A session, end to end:
//!
//! 1. client → enclave, plain frame: [`EvidenceRequest`] with a fresh nonce;
//! 2. enclave → client, plain frame: [`PlainMessage::EvidenceResponse`] with the
//!    [`Evidence`], whose report carries [`report_data`] for that nonce;
//! 3. client verifies it (crate `chrysalis-measurements`), then
//!    [`ClientHandshake::start`] gives a pending handshake and a [`SessionOpen`] to
//!    send (fresh X25519 and ML-KEM-768 keys);
//! 4. enclave: [`SealedChannel::server`] answers a [`SessionAccept`] with its fresh
//!    X25519 share and ML-KEM ciphertext, signed over the transcript; the client
//!    checks the signature and derives the keys with [`ClientHandshake::finish`];
//! 5. sealed frames both ways: [`SealedMessage::Request`], then
//!    [`SealedMessage::Chunk`]s and a [`SealedMessage::End`] holding a
//!    [`Signed`]`<`[`Receipt`]`>`.
//!
//! Frames are read from a stream with [`FrameDecoder`]; every frame carries
//! [`PROTOCOL_VERSION`]. The golden transcripts in `tests/golden/` pin the bytes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod error;
mod evidence;
mod frame;
mod keys;
mod messages;
mod sealed;
mod signing;
mod version;

pub mod billing;
pub mod ton;

pub use codec::{check_len, WireMessage};
pub use error::ProtocolError;
pub use evidence::{
    report_data, Evidence, EvidenceKind, EVIDENCE_HASH_LABEL, MAX_CERTS, MAX_CERT_LEN,
    MAX_MANIFEST_ID_LEN, MAX_REPORT_LEN, REPORT_DATA_LABEL,
};
pub use frame::{
    Envelope, ForeignFrame, Frame, FrameDecoder, FrameHeader, FrameKind, HEADER_LEN, MAX_BODY_LEN,
    MAX_FRAME_LEN,
};
pub use keys::{EnclaveKeys, ED25519_SEED_INFO, X25519_SEED_INFO};
pub use messages::{
    CertBundle, ChargeBoc, ChatMessage, ErrorCode, ErrorMessage, EvidenceRequest, FinishReason,
    InferenceRequest, PlainMessage, Prompt, ResponseEnd, Role, SamplingParams, SealedMessage,
    SessionAccept, SessionOpen, StreamChunk, Usage, MAX_CHAT_MESSAGES, MAX_CHUNK_TOKENS,
    MAX_ERROR_MESSAGE_LEN, MLKEM_CIPHERTEXT_LEN, MLKEM_ENCAPSULATION_KEY_LEN, REQUEST_HASH_LABEL,
};
pub use sealed::{
    accept_signing_bytes, session_keys, transcript_hash, ChannelRole, ClientHandshake,
    SealedChannel, ACCEPT_SIGNATURE_DOMAIN, C2S_INFO, MAX_PLAINTEXT_LEN, S2C_INFO, TAG_LEN,
    TRANSCRIPT_LABEL,
};
pub use signing::{output_hash, Receipt, Signable, Signed, OUTPUT_HASH_DOMAIN};
pub use version::{check_version, PROTOCOL_VERSION};
