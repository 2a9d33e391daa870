//! The protocol version every frame carries.

use crate::ProtocolError;

/// The wire-protocol version of this build. Every frame header carries it; a frame with
/// any other version is refused with [`ProtocolError::UnknownVersion`]. Any change to
/// the framing, the message encodings or the key schedule bumps it.
///
/// - v1: static-key sealed channel (no forward secrecy); refused since v2.
/// - v2: the enclave signs a fresh X25519 share and an ML-KEM-768 encapsulation per
///   session; keys mix both DH results and the KEM secret over a transcript hash.
pub const PROTOCOL_VERSION: u16 = 2;

/// Accepts `found` only if it is [`PROTOCOL_VERSION`].
pub fn check_version(found: u16) -> Result<(), ProtocolError> {
    if found == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnknownVersion {
            found,
            expected: PROTOCOL_VERSION,
        })
    }
}
