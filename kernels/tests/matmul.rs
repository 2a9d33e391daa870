//! Matrix products of every weight format against naive f64 references, on every
//! backend, over random shapes including odd ones.

mod common;

use chrysalis_kernels::{Backend, CpuBackend, CpuOptions, Isa, WeightFormat, WeightMatrix};
use common::{assert_close, backends, naive_matmul, random_weight, Rng};

const FORMATS: [WeightFormat; 4] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::Q4_1,
    WeightFormat::Q8_0,
];

/// f32 accumulation error relative to the sum of absolute products. The weights are
/// exact in every format once dequantized, so only accumulation order differs.
const TOLERANCE: f64 = 2e-5;

/// `(rows, blocks of 32 columns, tokens)`: rows not multiples of 8 or 16, n = 1, 3, 17.
const ODD_SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (7, 3, 1),
    (33, 5, 3),
    (17, 2, 17),
    (70, 18, 6),
    (9, 48, 13),
    (64, 48, 17),
    (100, 2, 7),
];

fn check_matmul(
    backend: &CpuBackend,
    rng: &mut Rng,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    n: usize,
) {
    let w = random_weight(rng, format, rows, cols);
    let x = rng.vec(n * cols);
    let mut out = vec![f32::NAN; n * rows];
    backend.matmul(&w, &x, n, &mut out).expect("valid shapes");
    let (want, scale) = naive_matmul(&w, &x, n);
    let what = format!(
        "{} {format:?} rows={rows} cols={cols} n={n}",
        backend.name()
    );
    assert_close(&what, &out, &want, &scale, TOLERANCE);
}

#[test]
fn every_format_matches_the_naive_reference_on_odd_shapes() {
    let mut rng = Rng::new(1);
    for backend in backends() {
        for format in FORMATS {
            for (rows, blocks, n) in ODD_SHAPES {
                check_matmul(&backend, &mut rng, format, rows, blocks * 32, n);
            }
        }
    }
}

#[test]
fn scalar_formats_accept_columns_that_are_not_block_multiples() {
    let mut rng = Rng::new(2);
    for backend in backends() {
        for format in [WeightFormat::F32, WeightFormat::Bf16] {
            for (rows, cols, n) in [(5, 1, 1), (3, 7, 2), (19, 45, 5), (8, 61, 1)] {
                check_matmul(&backend, &mut rng, format, rows, cols, n);
            }
        }
    }
}

#[test]
fn random_shapes_match_the_reference() {
    let mut rng = Rng::new(3);
    for backend in backends() {
        for _ in 0..12 {
            let format = FORMATS[rng.below(4)];
            let (rows, blocks, n) = (1 + rng.below(90), 1 + rng.below(20), 1 + rng.below(20));
            check_matmul(&backend, &mut rng, format, rows, blocks * 32, n);
        }
    }
}

/// Each SIMD path against the portable path on the same inputs: the comparison the
/// issue asks for, separate from the reference check so a shared bug cannot hide.
#[test]
fn simd_paths_agree_with_the_portable_path() {
    let portable = CpuBackend::with_options(CpuOptions {
        threads: 1,
        isa: Some(Isa::Portable),
    })
    .unwrap();
    let mut rng = Rng::new(4);
    for simd in backends().into_iter().filter(|b| b.isa() != Isa::Portable) {
        for format in FORMATS {
            for (rows, blocks, n) in ODD_SHAPES {
                let w = random_weight(&mut rng, format, rows, blocks * 32);
                let x = rng.vec(n * blocks * 32);
                let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                portable.matmul(&w, &x, n, &mut a).unwrap();
                simd.matmul(&w, &x, n, &mut b).unwrap();
                let (_, scale) = naive_matmul(&w, &x, n);
                let a64: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
                let what = format!(
                    "{} vs portable {format:?} {rows}x{} n={n}",
                    simd.name(),
                    blocks * 32
                );
                assert_close(&what, &b, &a64, &scale, 2.0 * TOLERANCE);
            }
        }
    }
}

/// Threads split rows, never a row's sum, so results do not depend on the thread count.
#[test]
fn thread_count_does_not_change_results() {
    let mut rng = Rng::new(5);
    let one = CpuBackend::with_threads(1).unwrap();
    let two = CpuBackend::with_threads(2).unwrap();
    for format in FORMATS {
        for n in [1, 2, 9] {
            let w = random_weight(&mut rng, format, 301, 256);
            let x = rng.vec(n * 256);
            let (mut a, mut b) = (vec![0f32; n * 301], vec![0f32; n * 301]);
            one.matmul(&w, &x, n, &mut a).unwrap();
            two.matmul(&w, &x, n, &mut b).unwrap();
            assert_eq!(a, b, "{format:?} n={n}");
        }
    }
}

/// The 32 values of a one-block row as every backend reads them: the row times the
/// 32x32 identity (32 one-hot tokens).
fn values_read_back(w: &WeightMatrix) -> Vec<(&'static str, Vec<f32>)> {
    let identity: Vec<f32> = (0..32 * 32)
        .map(|i| if i / 32 == i % 32 { 1.0 } else { 0.0 })
        .collect();
    backends()
        .into_iter()
        .map(|backend| {
            let mut out = vec![f32::NAN; 32];
            backend.matmul(w, &identity, 32, &mut out).unwrap();
            (backend.name(), out)
        })
        .collect()
}

/// A hand-built Q4_1 block: pins the nibble order (low nibbles are values 0..16, high
/// nibbles 16..32) and `d * q + m` exactly.
#[test]
fn q4_1_block_layout_is_ggml_s() {
    let mut block = Vec::new();
    block.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    block.extend_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
    block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    let w = WeightMatrix::new(WeightFormat::Q4_1, 1, 32, block).unwrap();
    let want: Vec<f32> = (0..32)
        .map(|j| if j < 16 { j } else { 31 - j })
        .map(|q| 0.5 * q as f32 - 1.0)
        .collect();
    for (name, values) in values_read_back(&w) {
        assert_eq!(values, want, "{name}");
    }
}

/// Q8_0 values are signed: byte 0xFF is -1.
#[test]
fn q8_0_block_layout_is_ggml_s() {
    let mut block = Vec::new();
    block.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
    block.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    let w = WeightMatrix::new(WeightFormat::Q8_0, 1, 32, block).unwrap();
    let want: Vec<f32> = (0..32u8)
        .map(|j| 0.25 * f32::from(j.wrapping_mul(37) as i8))
        .collect();
    for (name, values) in values_read_back(&w) {
        assert_eq!(values, want, "{name}");
    }
}
