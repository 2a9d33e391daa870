//! Chrysalis measurements: what a trustworthy enclave looks like, and how to check one.
//!
//! This crate holds the guest image manifests (the published ones live as data in
//! `measurements/published/` and are built into the crate, `snp::manifests`), computes SNP launch digests with the `sev` crate, and
//! verifies attestation evidence: the AMD certificate chain against pinned roots, the
//! report signature over the raw report bytes, the guest policy, the TCB, the launch
//! measurement allow-list and the REPORT_DATA binding to the enclave's keys and the
//! client's nonce. It may depend only on `chrysalis-protocol`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// SNP launch digests of the guest image (measured direct boot).
pub mod launch;

/// Verification of SEV-SNP attestation reports: pinned AMD chain, signature, policy.
pub mod snp;
