//! Batching must not change results: a token's output row of `matmul` is bitwise the
//! same whether it is computed alone, among any number of other tokens, or at another
//! place in the batch. The enclave's continuous batching relies on this to give every
//! sequence the logits (and greedy tokens) of a single stream.

mod common;

use chrysalis_kernels::{
    ActivationPrecision, Backend, CpuBackend, WeightFormat, WeightMatrix, BLOCKED_MIN_SEQ_TOKENS,
};
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

/// The output bits of `matmul_seqs` for a step split into `seq_tokens`.
fn seqs_bits(backend: &CpuBackend, w: &WeightMatrix, x: &[f32], seq_tokens: &[usize]) -> Vec<u32> {
    let n: usize = seq_tokens.iter().sum();
    let mut out = vec![f32::NAN; n * w.rows()];
    backend
        .matmul_seqs(w, x, seq_tokens, &mut out)
        .expect("valid shapes");
    out.iter().map(|v| v.to_bits()).collect()
}

/// Sequence lengths around the blocked path's threshold and past several 6-token groups.
const SEQ_LENGTHS: [usize; 7] = [1, 2, 3, 4, 7, 12, 19];

/// Within one sequence (any length from the threshold on, so the blocked tile), a
/// probe token's output row is the same whatever the sequence's length, the other
/// tokens and the probe's place: each output is one FMA chain over k from zero.
fn check_blocked_rows_do_not_depend_on_their_sequence(
    backend: &CpuBackend,
    rng: &mut Rng,
    format: WeightFormat,
) {
    for (rows, cols) in odd_shapes(format) {
        let w = random_weight(rng, format, rows, cols);
        let probe = rng.vec(cols);
        let reference = seqs_bits(
            backend,
            &w,
            &[&probe[..], &rng.vec(3 * cols)].concat(),
            &[4],
        );
        let reference = &reference[..rows];
        for len in BLOCKED_MIN_SEQ_TOKENS..=MAX_TOKENS {
            for place in [0, len / 2, len - 1] {
                let mut x = rng.vec(len * cols);
                x[place * cols..(place + 1) * cols].copy_from_slice(&probe);
                let got = seqs_bits(backend, &w, &x, &[len]);
                assert_eq!(
                    &got[place * rows..(place + 1) * rows],
                    reference,
                    "{} x{} {format:?} rows={rows} cols={cols}: probe at {place} of {len}",
                    backend.name(),
                    backend.threads()
                );
            }
        }
    }
}

/// A sequence's rows from `matmul_seqs` are the same bits alone or in a step with other
/// sequences of other lengths (decode steps and prompts, before or after it).
fn check_sequences_alone_equal_batched(backend: &CpuBackend, rng: &mut Rng, format: WeightFormat) {
    for (rows, cols) in odd_shapes(format) {
        let w = random_weight(rng, format, rows, cols);
        for _ in 0..6 {
            let lengths: Vec<usize> = (0..1 + rng.below(4))
                .map(|_| SEQ_LENGTHS[rng.below(SEQ_LENGTHS.len())])
                .collect();
            let n: usize = lengths.iter().sum();
            let x = rng.vec(n * cols);
            let batched = seqs_bits(backend, &w, &x, &lengths);
            let mut first = 0;
            for &len in &lengths {
                let alone = seqs_bits(backend, &w, &x[first * cols..(first + len) * cols], &[len]);
                assert_eq!(
                    &batched[first * rows..(first + len) * rows],
                    alone.as_slice(),
                    "{} x{} {format:?}: sequence of {len} in step {lengths:?}",
                    backend.name(),
                    backend.threads()
                );
                first += len;
            }
        }
    }
}

/// The blocked path at the kernel level: per-sequence choice, invariant rows.
#[test]
fn prompt_sequences_give_each_row_the_same_bits_in_any_sequence_or_step() {
    let mut rng = Rng::new(44);
    for precision in [ActivationPrecision::F32, ActivationPrecision::Q8] {
        for backend in backends() {
            let backend = backend.with_activation_precision(precision);
            for format in FORMATS {
                check_blocked_rows_do_not_depend_on_their_sequence(&backend, &mut rng, format);
                check_sequences_alone_equal_batched(&backend, &mut rng, format);
            }
        }
    }
}

/// The two paths are really different arithmetic (so the tests above would catch a
/// choice made from the batch), and both are correct products: a prompt's rows from
/// the blocked tile differ in some bits from the same tokens as decode steps, and both
/// stay within f32 rounding of an f64 reference.
#[test]
fn blocked_and_row_paths_differ_in_rounding_but_agree_with_the_reference() {
    let mut rng = Rng::new(45);
    for backend in backends() {
        for format in FORMATS {
            let (rows, cols) = odd_shapes(format)[1];
            let w = random_weight(&mut rng, format, rows, cols);
            let n = 12;
            let x = rng.vec(n * cols);
            let blocked = seqs_bits(&backend, &w, &x, &[n]);
            let row_path = seqs_bits(&backend, &w, &x, &[1; 12]);
            assert_ne!(blocked, row_path, "{} {format:?}", backend.name());
            let (want, scale) = common::naive_matmul(&w, &x, n);
            for (what, bits) in [("blocked", &blocked), ("row", &row_path)] {
                let got: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
                common::assert_close(
                    &format!("{} {format:?} {what}", backend.name()),
                    &got,
                    &want,
                    &scale,
                    1e-5,
                );
            }
        }
    }
}

/// Bad splits are refused with the shapes named, not a panic.
#[test]
fn matmul_seqs_refuses_token_counts_that_do_not_match_the_input() {
    let mut rng = Rng::new(46);
    let backend = CpuBackend::new();
    let w = random_weight(&mut rng, WeightFormat::Q4_1, 37, 96);
    let x = rng.vec(5 * 96);
    let mut out = vec![0f32; 5 * 37];
    let err = backend
        .matmul_seqs(&w, &x, &[4, 2], &mut out)
        .expect_err("6 tokens claimed, 5 given");
    assert!(err.to_string().contains("matmul input x"), "{err}");
    let err = backend
        .matmul_seqs(&w, &x, &[usize::MAX, 2], &mut out)
        .expect_err("overflowing counts");
    assert!(
        err.to_string().contains("matmul_seqs token counts"),
        "{err}"
    );
}
