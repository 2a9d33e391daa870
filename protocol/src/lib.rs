//! Chrysalis wire protocol.
//!
//! This crate owns everything that crosses the boundary between a client and the
//! enclave: versioned wire messages encoded with postcard, length-prefixed framing with
//! a hard maximum frame size, the sealed channel (X25519, HKDF-SHA256, AES-256-GCM,
//! bound to the attestation evidence as `DESIGN.md` specifies), and Ed25519-signed
//! receipts and charges. It performs no I/O and depends on no other Chrysalis crate;
//! every other crate may depend on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ton;
