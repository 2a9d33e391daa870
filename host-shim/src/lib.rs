//! Library side of the Chrysalis host shim, so its parts can be tested on their own.
//!
//! The shim is untrusted: it holds no enclave key and sees only ciphertext, sizes and
//! the enclave's signed charges, which it persists and settles on TON.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ledger;
pub mod limit;
pub mod settle;
pub mod vcek;
