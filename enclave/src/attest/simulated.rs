//! Simulated evidence for development outside a TEE. INSECURE.
//!
//! The report has the SNP shape (1184 bytes, the same offsets, REPORT_DATA where a
//! real one has it) and an ECDSA P-384 signature over bytes `[0, 0x2A0)` in the same
//! little-endian layout, but the signing key is generated at start-up and thrown away
//! at exit: it proves nothing about the code that runs. The only "certificate" is the
//! throwaway key's SEC1 public key. Clients refuse this unless the user opts into
//! INSECURE mode.

use chrysalis_measurements::snp::report::{offset, REPORT_LEN, SIGNED_LEN};
use p384::ecdsa::{signature::Signer, Signature, SigningKey};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::{AttestError, AttestationBundle, EvidenceProvider, ProviderKind};

/// Report version the simulation writes.
pub const SIMULATED_VERSION: u32 = 2;
/// Guest policy the simulation claims: SMT allowed, the must-be-one bit, no debug.
pub const SIMULATED_POLICY: u64 = 0x30000;
/// KEY_INFO value meaning "no key" (SIGNING_KEY = 7), so no verifier mistakes the
/// report for one signed by a VCEK.
const KEY_INFO_NONE: u32 = 7 << 2;

/// Signs SNP-shaped reports with a throwaway P-384 key. INSECURE by construction.
pub struct SimulatedProvider {
    key: SigningKey,
    seed: Zeroizing<[u8; 32]>,
    measurement: [u8; 48],
}

impl Default for SimulatedProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedProvider {
    /// A simulation with a fresh throwaway key and a random key seed.
    pub fn new() -> Self {
        tracing::warn!(
            "INSECURE: simulated attestation; the evidence is signed by a throwaway key and proves nothing"
        );
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *seed);
        Self {
            key: SigningKey::random(&mut OsRng),
            seed,
            measurement: [0; 48],
        }
    }

    /// Claims this launch measurement in the reports (e.g. the image's published
    /// digest, so dev clients can exercise the allow-list).
    pub fn with_measurement(mut self, measurement: [u8; 48]) -> Self {
        self.measurement = measurement;
        self
    }

    /// The throwaway key's public key, SEC1 uncompressed.
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    fn unsigned_report(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut r = vec![0u8; REPORT_LEN];
        let mut put = |at: usize, bytes: &[u8]| r[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset::VERSION, &SIMULATED_VERSION.to_le_bytes());
        put(offset::POLICY, &SIMULATED_POLICY.to_le_bytes());
        put(offset::SIGNATURE_ALGO, &1u32.to_le_bytes());
        put(offset::KEY_INFO, &KEY_INFO_NONE.to_le_bytes());
        put(offset::REPORT_DATA, report_data);
        put(offset::MEASUREMENT, &self.measurement);
        r
    }
}

/// Writes a big-endian scalar as the report's 72-byte little-endian field.
fn put_le_scalar(field: &mut [u8], be: &[u8]) {
    for (dst, src) in field.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
}

impl EvidenceProvider for SimulatedProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulated
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<AttestationBundle, AttestError> {
        let mut report = self.unsigned_report(report_data);
        let signature: Signature = self.key.sign(&report[..SIGNED_LEN]);
        let (r, s) = signature.split_bytes();
        put_le_scalar(&mut report[offset::SIGNATURE_R..offset::SIGNATURE_S], &r);
        put_le_scalar(
            &mut report[offset::SIGNATURE_S..offset::SIGNATURE_S + 72],
            &s,
        );
        Ok(AttestationBundle {
            kind: ProviderKind::Simulated,
            report,
            certs: vec![self.public_key_sec1()],
        })
    }

    fn key_seed(&self) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        Ok(self.seed.clone())
    }
}

#[cfg(test)]
mod tests {
    use chrysalis_measurements::snp::{Report, SigningKey as KeyKind};
    use p384::ecdsa::{signature::Verifier, VerifyingKey};

    use super::*;

    #[test]
    fn simulated_report_has_the_snp_shape_and_a_valid_signature() {
        let sim = SimulatedProvider::new().with_measurement([9; 48]);
        let bundle = sim.report(&[0xab; 64]).unwrap();
        assert_eq!(bundle.kind, ProviderKind::Simulated);
        let report = Report::parse(&bundle.report).unwrap();
        assert_eq!(report.report_data(), [0xab; 64]);
        assert_eq!(report.measurement(), [9; 48]);
        assert!(!report.policy().debug_allowed());
        assert_eq!(report.signing_key(), KeyKind::Other(7));
        // Verify with the same byte conventions a real verifier uses.
        let (r_le, s_le) = report.signature_le();
        let be = |le: &[u8; 72]| -> [u8; 48] {
            let mut out = [0u8; 48];
            for (d, s) in out.iter_mut().zip(le[..48].iter().rev()) {
                *d = *s;
            }
            out
        };
        let sig = Signature::from_scalars(be(&r_le), be(&s_le)).unwrap();
        let key = VerifyingKey::from_sec1_bytes(&bundle.certs[0]).unwrap();
        key.verify(report.signed_bytes(), &sig).unwrap();
        // A changed REPORT_DATA no longer verifies.
        let mut tampered = bundle.report.clone();
        tampered[offset::REPORT_DATA] ^= 1;
        assert!(key.verify(&tampered[..SIGNED_LEN], &sig).is_err());
    }

    #[test]
    fn each_simulation_has_its_own_key_and_a_stable_seed() {
        let (a, b) = (SimulatedProvider::new(), SimulatedProvider::new());
        assert_ne!(a.public_key_sec1(), b.public_key_sec1());
        assert_eq!(*a.key_seed().unwrap(), *a.key_seed().unwrap());
        assert_ne!(*a.key_seed().unwrap(), *b.key_seed().unwrap());
    }
}
