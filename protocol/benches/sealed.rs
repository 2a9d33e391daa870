//! Throughput of the sealed channel (frame + seal + decode + open) against its peer,
//! bare AES-256-GCM from the same `aes-gcm` crate on the same sizes, interleaved in one
//! run so both see the same machine load; medians of 15 rounds.
//!
//! Run: `cargo bench -p chrysalis-protocol --bench sealed`

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use chrysalis_protocol::{
    ClientHandshake, EnclaveKeys, Evidence, EvidenceKind, FrameDecoder, SealedChannel,
};

const ROUNDS: usize = 15;
const BYTES_PER_ROUND: usize = 8 << 20;

/// Seconds to push `BYTES_PER_ROUND` through seal, stream decode and open.
fn channel_round(size: usize) -> f64 {
    let keys = EnclaveKeys::from_seed(&[1; 32]);
    let evidence = Evidence {
        kind: EvidenceKind::Simulated,
        report: Vec::new(),
        cert_chain: Vec::new(),
        x25519_pub: keys.x25519_public(),
        ed25519_pub: keys.ed25519_public(),
        model_root: [2; 32],
        manifest_id: String::new(),
    };
    let rng = &mut rand_core::OsRng;
    let (handshake, open) = ClientHandshake::start(rng, &evidence);
    let (mut server, accept) =
        SealedChannel::server(rng, &keys, &open, &evidence.hash(), [0; 16]).unwrap();
    let mut client = handshake.finish(&accept).unwrap();
    let payload = vec![0x5a; size];
    let mut decoder = FrameDecoder::new();
    let start = Instant::now();
    for _ in 0..BYTES_PER_ROUND / size {
        let wire = client.seal(&payload).unwrap();
        let mut rest = &wire[..];
        let frame = decoder.decode(&mut rest).unwrap().unwrap();
        black_box(server.open(&frame).unwrap());
    }
    start.elapsed().as_secs_f64()
}

/// Seconds for the same bytes through bare AES-256-GCM encrypt and decrypt.
fn bare_aead_round(size: usize) -> f64 {
    let cipher = Aes256Gcm::new(&[3u8; 32].into());
    let payload = vec![0x5a; size];
    let aad = [0u8; 16];
    let start = Instant::now();
    for counter in 0..(BYTES_PER_ROUND / size) as u64 {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let nonce = Nonce::from(nonce);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &payload,
                    aad: &aad,
                },
            )
            .unwrap();
        black_box(
            cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &sealed,
                        aad: &aad,
                    },
                )
                .unwrap(),
        );
    }
    start.elapsed().as_secs_f64()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    println!("size      channel MB/s   bare AES-GCM MB/s   channel/bare");
    for size in [256, 4 << 10, 64 << 10, 1000 << 10] {
        let (mut channel, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            channel.push(channel_round(size));
            bare.push(bare_aead_round(size));
        }
        let mbps = |secs: f64| BYTES_PER_ROUND as f64 / secs / 1e6;
        let (c, b) = (mbps(median(channel)), mbps(median(bare)));
        println!("{size:>8}  {c:>12.1}  {b:>18.1}  {:>13.2}", c / b);
    }
}
