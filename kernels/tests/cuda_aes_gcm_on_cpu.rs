//! The CUDA AES-GCM kernels (`kernels/cuda/aes_gcm.cu`) run on the CPU by a small C++
//! harness (`tests/cuda_on_cpu/aes_gcm_harness.cpp`: one OS thread per CUDA thread,
//! block-wide statics for `__shared__`, a barrier for `__syncthreads`) and compared with
//! the `aes-gcm` crate: the same ciphertext and tag, the honest chunk opens, and a chunk
//! with one flipped bit is refused with the destination left as it was. This checks the
//! kernels' arithmetic where no GPU is lent; `cargo xtask gpu-check` checks them on one.
//!
//! Needs a C++20 compiler (see `cuda_on_cpu/mod.rs`).

mod cuda_on_cpu;

use std::path::Path;
use std::process::Command;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use chrysalis_kernels::cuda::parity::Rng;

/// What the harness reports for one chunk.
struct Run {
    sealed: Vec<u8>,
    honest_status: u32,
    opened: Vec<u8>,
    tampered_status: u32,
    untouched: Vec<u8>,
}

fn run(harness: &Path, key: &[u8; 32], iv: &[u8; 12], per: u32, aad: &[u8], plain: &[u8]) -> Run {
    let mut input = Vec::new();
    input.extend_from_slice(key);
    input.extend_from_slice(iv);
    input.extend_from_slice(&per.to_le_bytes());
    input.extend_from_slice(&(aad.len() as u32).to_le_bytes());
    input.extend_from_slice(aad);
    input.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    input.extend_from_slice(plain);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (input_file, output_file) = (
        dir.join(format!("aes-in-{}-{per}", plain.len())),
        dir.join(format!("aes-out-{}-{per}", plain.len())),
    );
    std::fs::write(&input_file, &input).expect("write harness input");
    let status = Command::new(harness)
        .arg(&input_file)
        .arg(&output_file)
        .status()
        .expect("run harness");
    assert!(status.success(), "harness failed: {status}");
    let out = std::fs::read(&output_file).expect("harness output");
    let len = plain.len();
    assert_eq!(
        out.len(),
        len + 16 + 4 + len + 4 + len,
        "harness output length"
    );
    let word = |at: usize| u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
    Run {
        sealed: out[..len + 16].to_vec(),
        honest_status: word(len + 16),
        opened: out[len + 20..2 * len + 20].to_vec(),
        tampered_status: word(2 * len + 20),
        untouched: out[2 * len + 24..].to_vec(),
    }
}

#[test]
fn cuda_aes_gcm_kernels_agree_with_the_aes_gcm_crate() {
    let Some(harness) = cuda_on_cpu::build_harness("aes_gcm_harness") else {
        return;
    };
    let mut rng = Rng::new(42);
    // Lengths around block edges and runs of GHASH blocks of several sizes, so segments
    // of one block, uneven last segments and many segments all occur.
    for (len, per) in [
        (0, 32),
        (1, 1),
        (16, 2),
        (31, 3),
        (4097, 32),
        (20000, 7),
        (65541, 32),
    ] {
        let key: [u8; 32] = rng.bytes(32).try_into().expect("32 bytes");
        let iv: [u8; 12] = rng.bytes(12).try_into().expect("12 bytes");
        let aad = rng.bytes(48);
        let plain = rng.bytes(len);
        let got = run(&harness, &key, &iv, per, &aad, &plain);

        let mut expected = plain.clone();
        let tag = Aes256Gcm::new(&key.into())
            .encrypt_in_place_detached(&Nonce::from(iv), &aad, &mut expected)
            .expect("aes-gcm encrypts");
        expected.extend_from_slice(&tag);
        assert!(
            got.sealed == expected,
            "len {len}, per {per}: ciphertext or tag differs"
        );
        assert_eq!(
            got.honest_status, 1,
            "len {len}: the honest chunk was refused"
        );
        assert!(got.opened == plain, "len {len}: decryption differs");
        assert_eq!(
            got.tampered_status, 0,
            "len {len}: a flipped bit was accepted"
        );
        assert!(
            got.untouched.iter().all(|&b| b == 0xAA),
            "len {len}: a refused chunk reached its destination"
        );
    }
}
