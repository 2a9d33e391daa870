//! The 8-bit-activation path against a naive model of llama.cpp's arithmetic (Q8_1 /
//! Q8_0 activation blocks, integer block dots), on every backend and odd shapes.

mod common;

use chrysalis_kernels::{ActivationPrecision, Backend, CpuBackend, WeightFormat, WeightMatrix};
use common::{assert_close, backends, naive_dequantize, naive_matmul, random_weight, Rng};

fn q8_backends() -> Vec<CpuBackend> {
    backends()
        .into_iter()
        .map(|b| b.with_activation_precision(ActivationPrecision::Q8))
        .collect()
}

fn f16_round(v: f32) -> f64 {
    f64::from(half::f16::from_f32(v).to_f32())
}

/// One input block as llama.cpp's x86 code quantizes it: quants, f16 `d`, f16 `d * sum`.
fn naive_quantize(block: &[f32]) -> (Vec<i32>, f64, f64) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    let q: Vec<i32> = block
        .iter()
        .map(|&v| (v * id).round_ties_even() as i32)
        .collect();
    let sum: i32 = q.iter().sum();
    (q, f16_round(d), f16_round(d * sum as f32))
}

/// Naive llama.cpp-style product in f64 from the documented block layouts.
fn naive_q8_matmul(w: &WeightMatrix, x: &[f32], n: usize) -> Vec<f64> {
    let (rows, cols) = (w.rows(), w.cols());
    let dense = naive_dequantize(w);
    let bytes = w.data();
    let block_bytes = w.format().block_bytes();
    let mut out = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let mut total = 0f64;
            for b in 0..cols / 32 {
                let (qx, dx, sx) = naive_quantize(&x[t * cols + 32 * b..][..32]);
                let head = &bytes[(r * cols / 32 + b) * block_bytes..];
                let dw = f64::from(half::f16::from_le_bytes([head[0], head[1]]).to_f32());
                let values = &dense[r * cols + 32 * b..][..32];
                // Recover integer weight quants from the exact dequantized values.
                let (mw, q_of) = match w.format() {
                    WeightFormat::Q4_1 => {
                        let mw = f64::from(half::f16::from_le_bytes([head[2], head[3]]).to_f32());
                        (
                            mw,
                            Box::new(move |v: f64| ((v - mw) / dw).round())
                                as Box<dyn Fn(f64) -> f64>,
                        )
                    }
                    _ => (
                        0.0,
                        Box::new(move |v: f64| (v / dw).round()) as Box<dyn Fn(f64) -> f64>,
                    ),
                };
                let dot: f64 = values
                    .iter()
                    .zip(&qx)
                    .map(|(&v, &q)| q_of(v) * f64::from(q))
                    .sum();
                total += dw * dx * dot + mw * sx;
            }
            out[t * rows + r] = total;
        }
    }
    out
}

#[test]
fn q8_path_matches_llama_cpp_arithmetic_on_odd_shapes() {
    let mut rng = Rng::new(30);
    for backend in q8_backends() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for (rows, blocks, n) in [(1, 1, 1), (7, 3, 1), (33, 5, 3), (17, 18, 17), (9, 48, 2)] {
                let w = random_weight(&mut rng, format, rows, blocks * 32);
                // Scales vary per block so each block's own amax matters.
                let x: Vec<f32> = (0..n * blocks * 32)
                    .map(|i| rng.signed() * (1 + i / 32 % 5) as f32)
                    .collect();
                let mut out = vec![f32::NAN; n * rows];
                backend.matmul(&w, &x, n, &mut out).unwrap();
                let want = naive_q8_matmul(&w, &x, n);
                let (_, scale) = naive_matmul(&w, &x, n);
                let what = format!("{} {format:?} {rows}x{} n={n}", backend.name(), blocks * 32);
                assert_close(&what, &out, &want, &scale, 2e-5);
            }
        }
    }
}

/// The 8-bit path is an approximation of the exact one: close (within activation
/// rounding, under 1% of the products' magnitude) but not equal.
#[test]
fn q8_path_approximates_the_exact_path() {
    let mut rng = Rng::new(31);
    for backend in q8_backends() {
        let w = random_weight(&mut rng, WeightFormat::Q4_1, 40, 576);
        let x = rng.vec(576);
        let mut out = vec![0f32; 40];
        backend.matmul(&w, &x, 1, &mut out).unwrap();
        let (exact, scale) = naive_matmul(&w, &x, 1);
        assert_close(backend.name(), &out, &exact, &scale, 1e-2);
        let differs = out
            .iter()
            .zip(&exact)
            .any(|(&a, &b)| (f64::from(a) - b).abs() > 1e-6 * b.abs());
        assert!(
            differs,
            "{}: 8-bit results equal the exact ones, so the path did not run",
            backend.name()
        );
    }
}

#[test]
fn zero_blocks_and_exact_formats_stay_finite_and_exact() {
    let mut rng = Rng::new(32);
    for backend in q8_backends() {
        let w = random_weight(&mut rng, WeightFormat::Q4_1, 5, 64);
        let mut out = vec![f32::NAN; 5];
        backend.matmul(&w, &[0.0; 64], 1, &mut out).unwrap();
        assert_eq!(out, vec![0.0; 5], "{}", backend.name());
        // f32 weights keep the exact path even in 8-bit mode.
        let w = random_weight(&mut rng, WeightFormat::F32, 6, 45);
        let x = rng.vec(45);
        let mut got = vec![0f32; 6];
        backend.matmul(&w, &x, 1, &mut got).unwrap();
        let (want, scale) = naive_matmul(&w, &x, 1);
        assert_close(backend.name(), &got, &want, &scale, 2e-5);
    }
}
