//! The enclave's identity and the evidence it hands out.
//!
//! [`Identity`] holds the keys derived from a provider's key seed and the model root;
//! [`Identity::evidence`] turns a client's nonce into the protocol's [`Evidence`], with
//! `REPORT_DATA` bound as DESIGN.md says, from whichever provider was selected.

use chrysalis_protocol::{report_data, EnclaveKeys, Evidence, EvidenceKind, MAX_CERTS};

use super::{AttestError, EvidenceProvider, ProviderKind};

/// Manifest id claimed by simulated evidence.
pub const SIMULATED_MANIFEST_ID: &str = "dev-simulated";
/// Manifest id claimed by SNP evidence until the image build passes one in; clients
/// judge the image by the launch measurement, never by this name.
pub const SNP_MANIFEST_ID: &str = "sev-snp";

/// What the enclave is: its keys and the model it serves.
pub struct Identity {
    /// Channel and receipt keys: from the firmware's measurement-bound derived key on
    /// SNP (stable across reboots on one chip), random per start in dev mode.
    pub keys: EnclaveKeys,
    /// Merkle root of the served model.
    pub model_root: [u8; 32],
}

impl Identity {
    /// Derives the enclave keys from the provider's key seed.
    pub fn from_provider(
        provider: &dyn EvidenceProvider,
        model_root: [u8; 32],
    ) -> Result<Self, AttestError> {
        let seed = provider.key_seed()?;
        Ok(Self {
            keys: EnclaveKeys::from_seed(&seed),
            model_root,
        })
    }

    /// Evidence from `provider` whose report binds these keys, the model root and
    /// `nonce`.
    pub fn evidence(
        &self,
        provider: &dyn EvidenceProvider,
        nonce: &[u8; 32],
    ) -> Result<Evidence, AttestError> {
        let binding = report_data(
            &self.keys.x25519_public(),
            &self.keys.ed25519_public(),
            &self.model_root,
            nonce,
        );
        let bundle = provider.report(&binding)?;
        if bundle.certs.len() > MAX_CERTS {
            return Err(AttestError::Malformed {
                what: "certificate list",
                found: format!("{} certificates", bundle.certs.len()),
                expected: format!("at most {MAX_CERTS}"),
            });
        }
        let (kind, manifest_id) = match bundle.kind {
            ProviderKind::SevSnp => (EvidenceKind::SevSnp, SNP_MANIFEST_ID),
            ProviderKind::Simulated => (EvidenceKind::Simulated, SIMULATED_MANIFEST_ID),
        };
        Ok(Evidence {
            kind,
            report: bundle.report,
            cert_chain: bundle.certs,
            x25519_pub: self.keys.x25519_public(),
            ed25519_pub: self.keys.ed25519_public(),
            model_root: self.model_root,
            manifest_id: manifest_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrysalis_measurements::snp::{extract, Report};

    use super::*;
    use crate::attest::simulated::SimulatedProvider;
    use crate::attest::CertOffer;

    #[test]
    fn evidence_binds_keys_model_and_nonce_and_verifies() {
        let provider = SimulatedProvider::new();
        let identity = Identity::from_provider(&provider, [3; 32]).unwrap();
        let evidence = identity.evidence(&provider, &[7; 32]).unwrap();
        assert_eq!(evidence.kind, EvidenceKind::Simulated);
        assert_eq!(evidence.manifest_id, SIMULATED_MANIFEST_ID);
        let report = Report::parse(&evidence.report).unwrap();
        assert_eq!(
            report.report_data(),
            evidence.expected_report_data(&[7; 32])
        );
        assert_ne!(
            report.report_data(),
            evidence.expected_report_data(&[8; 32])
        );
        extract::check_simulated_signature(&report, &evidence.cert_chain[0]).unwrap();
        assert_eq!(evidence.model_root, [3; 32]);
    }

    #[test]
    fn keys_come_from_the_provider_seed() {
        let provider = SimulatedProvider::new();
        let seed = provider.key_seed().unwrap();
        let identity = Identity::from_provider(&provider, [0; 32]).unwrap();
        let expected = EnclaveKeys::from_seed(&seed);
        assert_eq!(identity.keys.x25519_public(), expected.x25519_public());
        assert_eq!(identity.keys.ed25519_public(), expected.ed25519_public());
        // Dev mode: another start, other keys.
        let other = Identity::from_provider(&SimulatedProvider::new(), [0; 32]).unwrap();
        assert_ne!(other.keys.x25519_public(), identity.keys.x25519_public());
    }

    #[test]
    fn simulation_ignores_certificate_bundles() {
        let offer = SimulatedProvider::new().offer_certificates(vec![vec![1, 2, 3]]);
        assert_eq!(offer.unwrap(), CertOffer::Ignored);
    }
}
