//! Shared helpers for the integration tests.
#![allow(dead_code)]

use chrysalis_protocol::{
    ClientHandshake, EnclaveKeys, Evidence, EvidenceKind, SealedChannel, SessionAccept, SessionOpen,
};
use rand_core::{CryptoRng, RngCore};

/// Test double for an RNG: a fixed, reproducible byte stream (SHA-256 in counter
/// mode over a seed) so golden transcripts are stable. Never use outside tests.
pub struct FixedRng {
    seed: u8,
    block: u64,
    buf: Vec<u8>,
}

impl FixedRng {
    pub fn new(seed: u8) -> Self {
        FixedRng {
            seed,
            block: 0,
            buf: Vec::new(),
        }
    }
}

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use sha2::{Digest, Sha256};
        for byte in dest {
            if self.buf.is_empty() {
                let block = Sha256::new()
                    .chain_update([self.seed])
                    .chain_update(self.block.to_be_bytes())
                    .finalize();
                self.block += 1;
                self.buf = block.to_vec();
            }
            *byte = self.buf.remove(0);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

/// The enclave keys every test uses: derived from the seed 0x11 × 32.
pub fn enclave_keys() -> EnclaveKeys {
    EnclaveKeys::from_seed(&[0x11; 32])
}

/// Simulated-kind evidence for `keys` with a recognisable fake report.
pub fn evidence(keys: &EnclaveKeys) -> Evidence {
    let model_root = [0x22; 32];
    let nonce = [0x33; 32];
    let report_data = chrysalis_protocol::report_data(
        &keys.x25519_public(),
        &keys.ed25519_public(),
        &model_root,
        &nonce,
    );
    Evidence {
        kind: EvidenceKind::Simulated,
        report: report_data.to_vec(),
        cert_chain: vec![b"test certificate".to_vec()],
        x25519_pub: keys.x25519_public(),
        ed25519_pub: keys.ed25519_public(),
        model_root,
        manifest_id: "chrysalis-test-manifest".into(),
    }
}

/// The RNG seed of the client's ephemeral keys in [`channel_pair`].
pub const CLIENT_SEED: u8 = 7;
/// The RNG seed of the enclave's ephemeral keys in [`channel_pair`].
pub const SERVER_SEED: u8 = 8;
/// The session id the enclave gives in [`channel_pair`].
pub const SESSION_ID: [u8; 16] = [0x44; 16];

/// The client's handshake state and session-open from the fixed seed `seed`.
pub fn client_start(seed: u8) -> (ClientHandshake, SessionOpen) {
    let keys = enclave_keys();
    ClientHandshake::start(&mut FixedRng::new(seed), &evidence(&keys))
}

/// The enclave's answer to `open` with its ephemeral keys from the seed `seed`.
pub fn server_accept(open: &SessionOpen, seed: u8) -> (SealedChannel, SessionAccept) {
    let keys = enclave_keys();
    let hash = evidence(&keys).hash();
    SealedChannel::server(&mut FixedRng::new(seed), &keys, open, &hash, SESSION_ID)
        .expect("server accepts the session-open")
}

/// A connected (client, server) pair under `evidence(enclave_keys())`, with the
/// session-open and the accept that made it.
pub fn channel_pair() -> (SealedChannel, SealedChannel, SessionOpen, SessionAccept) {
    let (handshake, open) = client_start(CLIENT_SEED);
    let (server, accept) = server_accept(&open, SERVER_SEED);
    let client = handshake
        .finish(&accept)
        .expect("client finishes the handshake");
    (client, server, open, accept)
}
