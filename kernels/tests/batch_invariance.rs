//! Batching must not change results: a token's output row of `matmul` is bitwise the
//! same whether it is computed alone, among any number of other tokens, or at another
//! place in the batch. The enclave's continuous batching relies on this to give every
//! sequence the logits (and greedy tokens) of a single stream.

mod common;

use chrysalis_kernels::{ActivationPrecision, Backend, CpuBackend, WeightFormat, WeightMatrix};
use common::{backends, random_weight, Rng};

const FORMATS: [WeightFormat; 4] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::Q4_1,
    WeightFormat::Q8_0,
];

/// Largest batch tried: covers every partial group of 6 tokens several times over.
const MAX_TOKENS: usize = 20;

/// `(rows, cols)` with rows that are no multiple of 8 or 16; quantized formats need
/// columns in blocks of 32, the scalar ones get an odd count.
fn odd_shapes(format: WeightFormat) -> [(usize, usize); 2] {
    match format {
        WeightFormat::F32 | WeightFormat::Bf16 => [(37, 45), (83, 131)],
        _ => [(37, 96), (83, 160)],
    }
}

/// The output bits of `matmul` over `n` tokens.
fn product_bits(backend: &CpuBackend, w: &WeightMatrix, x: &[f32], n: usize) -> Vec<u32> {
    let mut out = vec![f32::NAN; n * w.rows()];
    backend.matmul(w, x, n, &mut out).expect("valid shapes");
    out.iter().map(|v| v.to_bits()).collect()
}

/// Checks every row of batches of 1..=20 tokens against that token alone, and a probe
/// token placed first and last among different neighbours.
fn check_batch_invariance(backend: &CpuBackend, rng: &mut Rng, format: WeightFormat) {
    for (rows, cols) in odd_shapes(format) {
        let w = random_weight(rng, format, rows, cols);
        let probe = rng.vec(cols);
        let probe_alone = product_bits(backend, &w, &probe, 1);
        for n in 1..=MAX_TOKENS {
            let what = format!(
                "{} x{} {format:?} rows={rows} cols={cols} n={n}",
                backend.name(),
                backend.threads()
            );
            let x = rng.vec(n * cols);
            let batch = product_bits(backend, &w, &x, n);
            for (t, (token, got)) in x
                .chunks_exact(cols)
                .zip(batch.chunks_exact(rows))
                .enumerate()
            {
                let alone = product_bits(backend, &w, token, 1);
                assert_eq!(
                    got,
                    alone.as_slice(),
                    "{what}: token {t} differs from alone"
                );
            }
            for place in [0, n - 1] {
                let mut y = rng.vec(n * cols);
                y[place * cols..(place + 1) * cols].copy_from_slice(&probe);
                let among = product_bits(backend, &w, &y, n);
                assert_eq!(
                    &among[place * rows..(place + 1) * rows],
                    probe_alone.as_slice(),
                    "{what}: probe at {place} differs from alone"
                );
            }
        }
    }
}

/// Every format at `precision`, portable and AVX2, one and two threads.
fn check_every_backend(precision: ActivationPrecision, seed: u64) {
    let mut rng = Rng::new(seed);
    for backend in backends() {
        let backend = backend.with_activation_precision(precision);
        for format in FORMATS {
            check_batch_invariance(&backend, &mut rng, format);
        }
    }
}

/// The default exact path: each token dotted with each row on its own, for every n.
#[test]
fn f32_activations_give_each_token_the_same_bits_in_any_batch() {
    check_every_backend(ActivationPrecision::F32, 41);
}

/// The 8-bit activation path quantizes and dots each token on its own.
#[test]
fn q8_activations_give_each_token_the_same_bits_in_any_batch() {
    check_every_backend(ActivationPrecision::Q8, 42);
}

/// A sanity check that the comparison can fail: different inputs give different bits,
/// so the equalities above are not comparing constant output.
#[test]
fn different_tokens_give_different_bits() {
    let mut rng = Rng::new(43);
    for backend in backends() {
        let w = random_weight(&mut rng, WeightFormat::Q4_1, 37, 96);
        let (a, b) = (rng.vec(96), rng.vec(96));
        assert_ne!(
            product_bits(&backend, &w, &a, 1),
            product_bits(&backend, &w, &b, 1),
            "{}",
            backend.name()
        );
    }
}
