//! The Chrysalis enclave's library: one module per subcommand of the
//! `chrysalis-enclave` binary, which only parses arguments and dispatches here.
// `deny`, not `forbid`: modules that need `unsafe` (the sev-guest ioctls in
// attest::linux) opt in, with SAFETY notes.
#![deny(unsafe_code)]
#![deny(missing_docs)]

/// Attestation evidence: SEV-SNP reports and derived keys, or INSECURE simulation.
pub mod attest;
pub mod generate;
pub mod serve;
