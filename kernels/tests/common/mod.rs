//! Shared test helpers: a seeded generator, random weights in every format, naive
//! reference implementations (f64, written from the format descriptions, not from the
//! backend's code), and the list of backends to run each test on.
#![allow(dead_code)] // each test binary uses a different subset

use chrysalis_kernels::{CpuBackend, CpuOptions, Isa, WeightFormat, WeightMatrix};

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-1, 1)`.
    pub fn signed(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.signed()).collect()
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random bytes of a valid `(rows, cols)` matrix: finite scales, every quant value used.
pub fn random_weight(
    rng: &mut Rng,
    format: WeightFormat,
    rows: usize,
    cols: usize,
) -> WeightMatrix {
    let mut data = Vec::new();
    for _ in 0..rows * cols / format.block_len() {
        match format {
            WeightFormat::F32 => data.extend_from_slice(&rng.signed().to_le_bytes()),
            WeightFormat::Bf16 => {
                data.extend_from_slice(&half::bf16::from_f32(rng.signed()).to_le_bytes())
            }
            WeightFormat::Q4_1 => {
                data.extend_from_slice(&f16_bytes(rng.signed() * 0.1));
                data.extend_from_slice(&f16_bytes(rng.signed()));
                data.extend((0..16).map(|_| rng.next_u64() as u8));
            }
            WeightFormat::Q8_0 => {
                data.extend_from_slice(&f16_bytes(rng.signed() * 0.01));
                data.extend((0..32).map(|_| rng.next_u64() as u8));
            }
        }
    }
    WeightMatrix::new(format, rows, cols, data).expect("generator makes consistent bytes")
}

/// Naive dequantization of a whole matrix from the documented layouts.
pub fn naive_dequantize(w: &WeightMatrix) -> Vec<f64> {
    let f16 = |b: &[u8]| f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
    let bytes = w.data();
    let mut values = Vec::with_capacity(w.rows() * w.cols());
    match w.format() {
        WeightFormat::F32 => {
            for b in bytes.chunks(4) {
                values.push(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
        WeightFormat::Bf16 => {
            for b in bytes.chunks(2) {
                let bits = (u32::from(b[1]) << 24) | (u32::from(b[0]) << 16);
                values.push(f64::from(f32::from_bits(bits)));
            }
        }
        WeightFormat::Q4_1 => {
            for block in bytes.chunks(20) {
                let (d, m) = (f16(&block[0..2]), f16(&block[2..4]));
                for j in 0..32 {
                    let byte = block[4 + j % 16];
                    let q = if j < 16 { byte & 15 } else { byte >> 4 };
                    values.push(d * f64::from(q) + m);
                }
            }
        }
        WeightFormat::Q8_0 => {
            for block in bytes.chunks(34) {
                let d = f16(&block[0..2]);
                for j in 0..32 {
                    values.push(d * f64::from(block[2 + j] as i8));
                }
            }
        }
    }
    values
}

/// Naive `out (n, rows) = x (n, cols) @ w^T` in f64, plus the sum of absolute products
/// per output (the scale an f32 rounding error is measured against).
pub fn naive_matmul(w: &WeightMatrix, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (w.rows(), w.cols());
    let dense = naive_dequantize(w);
    let mut out = vec![0f64; n * rows];
    let mut magnitude = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            for c in 0..cols {
                let p = dense[r * cols + c] * f64::from(x[t * cols + c]);
                out[t * rows + r] += p;
                magnitude[t * rows + r] += p.abs();
            }
        }
    }
    (out, magnitude)
}

/// The backends every test runs on: portable, and each SIMD path this CPU has, at one
/// and two threads.
pub fn backends() -> Vec<CpuBackend> {
    let mut list = Vec::new();
    for isa in [Isa::Portable, Isa::Avx2] {
        if !isa.is_available() {
            eprintln!("note: {isa:?} not available on this CPU, not tested");
            continue;
        }
        for threads in [1, 2] {
            let options = CpuOptions {
                threads,
                isa: Some(isa),
            };
            list.push(CpuBackend::with_options(options).expect("available isa starts"));
        }
    }
    list
}

/// Asserts `|got - want| <= tol * scale + tiny` element-wise, naming the first failure.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * s + 1e-30,
            "{what}[{i}]: got {g}, want {w}, error {err:e} over scale {s:e} (tol {tol:e})"
        );
    }
}
