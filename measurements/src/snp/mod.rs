//! Verification of AMD SEV-SNP attestation evidence.
//!
//! Structured like Project Oak's verifier: [`extract`] establishes that a report is
//! genuine (pinned AMD chain, validity dates, signature over the raw bytes, TCB and
//! chip-id extensions) and pulls out its claims; [`expect`] holds the reference values
//! (a [`Policy`]); [`compare`] checks one against the other. [`Verifier`] ties them
//! together and caches the verified AMD CA chains, so a report costs one RSA and one
//! ECDSA verification. The verification time is an argument, so tests control the
//! clock.

pub mod certs;
pub mod compare;
pub mod error;
pub mod expect;
pub mod extract;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod manifests;
pub mod report;

use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub use compare::Skipped;
pub use error::{CertRole, VerifyError};
pub use expect::{AllowedMeasurement, MinTcb, Policy};
pub use extract::{AuthenticReport, ChipBinding, EndorsementKey};
pub use manifests::{ManifestSource, Manifests, MinTcbSpec, TcbFloors};
pub use report::{GuestPolicy, Processor, Report, SigningKey, Tcb};

use certs::CaChain;

/// A report that passed every check, and which optional checks were skipped.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The genuine report and the claims AMD vouches for.
    pub authentic: AuthenticReport,
    /// Checks the policy did not ask for.
    pub skipped: Skipped,
}

/// Most VCEK/VLEK certificates remembered as verified (one per provider chip).
const ENDORSED_CACHE: usize = 256;

/// Verifies reports against pinned AMD roots, with the CA chains checked once and the
/// CA's signature on each VCEK/VLEK checked the first time that certificate is seen.
#[derive(Debug)]
pub struct Verifier {
    chains: Vec<CaChain>,
    /// SHA-256 of (intermediate DER, VCEK/VLEK DER) pairs whose signature verified.
    endorsed: Mutex<Vec<[u8; 32]>>,
}

impl Clone for Verifier {
    fn clone(&self) -> Self {
        let endorsed = self.endorsed.lock().map(|v| v.clone()).unwrap_or_default();
        Self {
            chains: self.chains.clone(),
            endorsed: Mutex::new(endorsed),
        }
    }
}

fn endorsement_id(ca: &CaChain, vek: &EndorsementKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((ca.intermediate.der().len() as u64).to_le_bytes());
    h.update(ca.intermediate.der());
    h.update(vek.cert.der());
    h.finalize().into()
}

impl Verifier {
    /// A verifier trusting AMD's pinned ARK/ASK/ASVK for Milan, Genoa and Turin. It
    /// checks all six CA chains' signatures up front.
    pub fn pinned() -> Result<Self, VerifyError> {
        let mut chains = Vec::with_capacity(6);
        for processor in Processor::ALL {
            for role in [CertRole::Ask, CertRole::Asvk] {
                chains.push(CaChain::pinned(processor, role)?);
            }
        }
        Ok(Self {
            chains,
            endorsed: Mutex::new(Vec::new()),
        })
    }

    /// Uses a CA chain handed in with the evidence (ASK or ASVK, then ARK, PEM) in
    /// place of the pinned intermediate. Its ARK must be the pinned one.
    pub fn with_supplied_chain(self, pem: &[u8]) -> Result<Self, VerifyError> {
        Ok(self.replace_chain(certs::chain_from_pem(pem)?))
    }

    /// Uses the CA certificates that came after the VCEK/VLEK in evidence: one PEM
    /// bundle (ASK or ASVK, then ARK), or the two separately, DER or PEM. With none,
    /// the pinned chains stay. The ARK must be the pinned one.
    pub fn with_supplied_parts(self, parts: &[Vec<u8>]) -> Result<Self, VerifyError> {
        if parts.is_empty() {
            return Ok(self);
        }
        Ok(self.replace_chain(certs::chain_from_parts(parts)?))
    }

    fn replace_chain(mut self, chain: CaChain) -> Self {
        self.chains.retain(|c| {
            !(c.processor == chain.processor && c.intermediate_role == chain.intermediate_role)
        });
        self.chains.push(chain);
        self
    }

    fn chain_for(&self, processor: Processor, vek_role: CertRole) -> Option<&CaChain> {
        let wanted = if vek_role == CertRole::Vlek {
            CertRole::Asvk
        } else {
            CertRole::Ask
        };
        self.chains
            .iter()
            .find(|c| c.processor == processor && c.intermediate_role == wanted)
    }

    /// Authenticates the report, then compares it with the policy.
    pub fn verify(
        &self,
        report: &[u8],
        vek: &EndorsementKey,
        policy: &Policy,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let report = Report::parse(report)?;
        let authentic = self.authenticate(report, vek, now)?;
        let skipped = compare::compare(&authentic, policy)?;
        Ok(Verified { authentic, skipped })
    }

    /// Establishes that the report is genuine, without looking at the policy.
    pub fn authenticate(
        &self,
        report: Report,
        vek: &EndorsementKey,
        now: SystemTime,
    ) -> Result<AuthenticReport, VerifyError> {
        let processor = extract::infer_processor(&report, vek)?;
        let ca = self
            .chain_for(processor, vek.role)
            .ok_or(VerifyError::UnknownProcessor {
                found: format!("no {} chain for {processor}", vek.role),
            })?;
        let id = endorsement_id(ca, vek);
        let known = self.endorsed.lock().is_ok_and(|cache| cache.contains(&id));
        let signature = if known {
            extract::ChainSignature::AlreadyVerified
        } else {
            extract::ChainSignature::Check
        };
        let authentic = extract::authenticate(report, vek, ca, now, signature)?;
        if !known {
            if let Ok(mut cache) = self.endorsed.lock() {
                if cache.len() >= ENDORSED_CACHE {
                    cache.remove(0);
                }
                cache.push(id);
            }
        }
        Ok(authentic)
    }
}

/// One-shot verification with the pinned roots: report bytes, VCEK/VLEK (DER or
/// PEM), policy, and the time to check certificate validity at.
pub fn verify_report(
    report: &[u8],
    vek: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> Result<Verified, VerifyError> {
    let vek = EndorsementKey::parse(vek)?;
    Verifier::pinned()?.verify(report, &vek, policy, now)
}

/// The verifier and the VCEK/VLEK for the certificates that came with a report, leaf
/// first: the VCEK or VLEK (DER or PEM), then optionally the ASK or ASVK and the ARK
/// (see [`Verifier::with_supplied_parts`]). The pinned ARK stays the anchor.
pub fn verifier_for_certs(certs: &[Vec<u8>]) -> Result<(Verifier, EndorsementKey), VerifyError> {
    let (vek, ca) = certs
        .split_first()
        .ok_or_else(|| VerifyError::CertificateParse {
            role: CertRole::Vek,
            reason: "no certificate came with the report".into(),
        })?;
    let vek = EndorsementKey::parse(vek)?;
    Ok((Verifier::pinned()?.with_supplied_parts(ca)?, vek))
}

/// One-shot verification of a report with the certificates that came with it (see
/// [`verifier_for_certs`]).
pub fn verify_with_certs(
    report: &[u8],
    certs: &[Vec<u8>],
    policy: &Policy,
    now: SystemTime,
) -> Result<Verified, VerifyError> {
    let (verifier, vek) = verifier_for_certs(certs)?;
    verifier.verify(report, &vek, policy, now)
}

/// Establishes that `certs` (leaf first, see [`verifier_for_certs`]) endorse `report`
/// at `now`: chain to the pinned root, validity, signature, chip id and TCB. The policy
/// is not looked at. The enclave and the shim use this to keep or drop a VCEK bundle.
pub fn authenticate_with_certs(
    report: &[u8],
    certs: &[Vec<u8>],
    now: SystemTime,
) -> Result<AuthenticReport, VerifyError> {
    let (verifier, vek) = verifier_for_certs(certs)?;
    verifier.authenticate(Report::parse(report)?, &vek, now)
}
