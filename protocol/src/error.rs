//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong while framing, decoding, sealing, opening or verifying.
///
/// Each rejection of untrusted bytes has its own variant carrying what was found and
/// what was expected, so callers (and tests) can tell a replay from a reorder from a
/// forgery without parsing messages.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame header names a protocol version this build does not speak.
    #[error("peer speaks protocol v{found}, this build speaks v{expected}")]
    UnknownVersion {
        /// Version found in the frame header.
        found: u16,
        /// The only version this build accepts.
        expected: u16,
    },

    /// The frame header announces more bytes than the hard maximum; nothing was allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Total frame length announced (header plus body), in bytes.
        len: u64,
        /// The maximum total frame length, in bytes.
        max: usize,
    },

    /// The input ended before a complete item.
    #[error("truncated {what}: needed {needed} bytes, found {found}")]
    Truncated {
        /// Which item was cut short.
        what: &'static str,
        /// Bytes needed for the item.
        needed: usize,
        /// Bytes available.
        found: usize,
    },

    /// Bytes were left over after a complete item.
    #[error("{extra} trailing bytes after {what}, expected none")]
    TrailingBytes {
        /// Which item was followed by extra bytes.
        what: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },

    /// The frame kind byte is not one this version defines.
    #[error("unknown frame kind {found:#04x}, expected 0x01 (plain) or 0x02 (sealed)")]
    UnknownFrameKind {
        /// The kind byte found.
        found: u8,
    },

    /// A frame of a valid kind arrived where another kind was required.
    #[error("unexpected {found} frame, expected a {expected} frame")]
    UnexpectedFrameKind {
        /// Kind found.
        found: &'static str,
        /// Kind required here.
        expected: &'static str,
    },

    /// A header field that must be zero in this version was not.
    #[error("header field {field} is {found:#x}, expected 0")]
    NonZeroReserved {
        /// Name of the header field.
        field: &'static str,
        /// Value found.
        found: u64,
    },

    /// The AEAD tag did not verify: the frame was forged, corrupted or sealed under
    /// another key. The session is closed.
    #[error("sealed frame failed authentication; the session is closed")]
    AuthenticationFailed,

    /// A sealed frame's counter is lower than the next expected one: a replay.
    #[error("replayed sealed frame: counter {counter}, expected {expected}")]
    Replayed {
        /// Counter found in the frame header.
        counter: u64,
        /// The next counter the receiver expects.
        expected: u64,
    },

    /// A sealed frame's counter is higher than the next expected one: frames were
    /// dropped or reordered.
    #[error("reordered sealed frame: counter {counter}, expected {expected}")]
    Reordered {
        /// Counter found in the frame header.
        counter: u64,
        /// The next counter the receiver expects.
        expected: u64,
    },

    /// The sending counter reached its end; a counter never repeats, so the session
    /// must be replaced.
    #[error("send counter exhausted; open a new session")]
    CounterExhausted,

    /// An earlier failure closed this session or decoder; nothing more is accepted.
    #[error("{what} is closed after an earlier failure")]
    Poisoned {
        /// What was closed ("session", "frame decoder").
        what: &'static str,
    },

    /// The postcard body of a message did not decode.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// Which message type was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: postcard::Error,
    },

    /// A decoded field is longer than its bound.
    #[error("{field} has {len} entries, expected at most {max}")]
    FieldTooLong {
        /// Name of the field.
        field: &'static str,
        /// Length found (bytes or items).
        len: usize,
        /// The maximum allowed.
        max: usize,
    },

    /// A decoded value is outside its valid range.
    #[error("{field} is {found}, expected {expected}")]
    InvalidValue {
        /// Name of the field.
        field: &'static str,
        /// What was found, rendered.
        found: String,
        /// What was expected.
        expected: &'static str,
    },

    /// The client's session-open names evidence other than the one this enclave issued.
    #[error("session-open names evidence {found}, expected {expected}")]
    EvidenceMismatch {
        /// Hex of the evidence hash in the session-open.
        found: String,
        /// Hex of the evidence hash the enclave expected.
        expected: String,
    },

    /// The X25519 exchange produced a non-contributory (all-zero) secret: the peer sent
    /// a low-order point.
    #[error("key exchange with a low-order public key; expected a contributory key")]
    WeakPublicKey,

    /// An ML-KEM-768 encapsulation key failed FIPS 203's input check (a 12-bit
    /// coefficient is not below q = 3329).
    #[error("ML-KEM-768 encapsulation key is not canonical; expected every coefficient below 3329 (FIPS 203, 7.2)")]
    InvalidKemKey,

    /// An Ed25519 public key did not decode to a valid curve point.
    #[error("invalid Ed25519 public key {key}")]
    InvalidVerifyingKey {
        /// Hex of the rejected key.
        key: String,
    },

    /// An Ed25519 signature did not verify under the expected key.
    #[error("{what} signature does not verify under key {key}")]
    BadSignature {
        /// What was signed ("receipt", "charge").
        what: &'static str,
        /// Hex of the key it was checked against.
        key: String,
    },
}
