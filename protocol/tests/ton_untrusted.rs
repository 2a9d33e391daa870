//! `SignedCharge::from_boc` takes bytes from outside the enclave (the shim stores and
//! relays them): random bytes, truncations and bit flips of a valid charge must give
//! errors, never panics, and no altered charge may still verify.

use chrysalis_protocol::ton::{crc32c, ChannelConfig, Charge, SignedCharge, TonAddress};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn valid() -> (Vec<u8>, [u8; 32]) {
    let key = SigningKey::from_bytes(&[3; 32]);
    let cfg = ChannelConfig {
        client: TonAddress::new(0, [1; 32].into()),
        provider: TonAddress::new(0, [2; 32].into()),
        enclave_key: key.verifying_key().to_bytes(),
        channel_id: 9,
        close_delay: 60,
        min_stake: 0,
    };
    let signed = Charge {
        channel: cfg.address(0).expect("address"),
        channel_id: 9,
        seqno: 12,
        cumulative: 987_654_321,
        prompt_tokens: 100,
        completion_tokens: 200,
        final_charge: false,
    }
    .sign(&key)
    .expect("sign");
    (signed.to_boc().expect("boc"), cfg.enclave_key)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedCharge::from_boc(&bytes);
    }

    #[test]
    fn bit_flips_never_panic_and_never_verify(pos in 0usize..4096, bit in 0u8..8) {
        let (mut bytes, key) = valid();
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(parsed) = SignedCharge::from_boc(&bytes) {
            let (orig, _) = valid();
            let same = SignedCharge::from_boc(&orig).expect("valid");
            // A flip that parses either changes nothing that is signed (for example the
            // CRC or a padding bit) or breaks the signature.
            prop_assert!(parsed == same || parsed.verify(&key).is_err());
        }
    }

    /// Flips a bit and fixes the CRC, so the structure checks and the cell parser run.
    #[test]
    fn bit_flips_with_fixed_crc_never_panic_and_never_verify(pos in 0usize..4096, bit in 0u8..8) {
        let (mut bytes, key) = valid();
        let body = bytes.len() - 4;
        bytes[pos % body] ^= 1 << bit;
        let crc = crc32c(&bytes[..body]).to_le_bytes();
        bytes[body..].copy_from_slice(&crc);
        if let Ok(parsed) = SignedCharge::from_boc(&bytes) {
            let same = SignedCharge::from_boc(&valid().0).expect("valid");
            prop_assert!(parsed == same || parsed.verify(&key).is_err());
        }
    }

    #[test]
    fn truncations_are_errors(len in 0usize..200) {
        let (bytes, _) = valid();
        let cut = len.min(bytes.len().saturating_sub(1));
        prop_assert!(SignedCharge::from_boc(&bytes[..cut]).is_err());
    }
}

#[test]
fn huge_claimed_cell_counts_are_errors() {
    // Header claiming 2^32-1 cells and a huge total size in a tiny buffer.
    let mut bytes = vec![0xb5, 0xee, 0x9c, 0x72, 0x04, 0x08];
    bytes.extend_from_slice(&[0xff; 4]); // cells
    bytes.extend_from_slice(&[0, 0, 0, 1]); // roots
    bytes.extend_from_slice(&[0, 0, 0, 0]); // absent
    bytes.extend_from_slice(&[0xff; 8]); // total size
    bytes.extend_from_slice(&[0, 0, 0, 0]); // root index
    assert!(SignedCharge::from_boc(&bytes).is_err());
}
