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
//!    [`SealedChannel::client`] gives the channel and a [`SessionOpen`] to send;
//! 4. enclave: [`SealedChannel::server`], answers [`SessionAccept`];
//! 5. sealed frames both ways: [`SealedMessage::Request`], then
//!    [`SealedMessage::Chunk`]s and a [`SealedMessage::End`] holding a
//!    [`Signed`]`<`[`Receipt`]`>`.
//!
//! Frames are read from a stream with [`FrameDecoder`]; every frame carries
//! [`PROTOCOL_VERSION`]. The golden transcript in `tests/golden/` pins the bytes.
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
    Frame, FrameDecoder, FrameHeader, FrameKind, HEADER_LEN, MAX_BODY_LEN, MAX_FRAME_LEN,
};
pub use keys::{EnclaveKeys, ED25519_SEED_INFO, X25519_SEED_INFO};
pub use messages::{
    CertBundle, ChargeBoc, ChatMessage, ErrorCode, ErrorMessage, EvidenceRequest, FinishReason,
    InferenceRequest, PlainMessage, Prompt, ResponseEnd, Role, SamplingParams, SealedMessage,
    SessionAccept, SessionOpen, StreamChunk, Usage, MAX_CHAT_MESSAGES, MAX_CHUNK_TOKENS,
    MAX_ERROR_MESSAGE_LEN, REQUEST_HASH_LABEL,
};
pub use sealed::{
    session_keys, ChannelRole, SealedChannel, C2S_INFO, MAX_PLAINTEXT_LEN, S2C_INFO, TAG_LEN,
};
pub use signing::{Receipt, Signable, Signed};
pub use version::{check_version, PROTOCOL_VERSION};
