//! Chrysalis client library.
//!
//! Everything a client needs before and after a prompt leaves its machine: fetch and
//! verify evidence with a fresh nonce, open a sealed session bound to that evidence,
//! stream sealed chunks, check signed receipts, and expose an OpenAI-compatible local
//! gateway so existing applications work unchanged. It may depend on
//! `chrysalis-protocol` and `chrysalis-measurements`, never on the enclave, models or
//! kernels.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attest;
pub mod gateway;
pub mod session;
pub mod transport;
