//! Portable scalar kernels: the reference every SIMD path is tested against.
//!
//! Dequantization follows GGML exactly (`dequantize_row_q4_1`, `dequantize_row_q8_0`,
//! bf16 as the high half of an f32); accumulation is f32 in eight interleaved partial
//! sums, which the compiler can keep in one vector register.

use super::ops::HeadRows;
use crate::WeightFormat;

/// Values per quantized block (Q4_1 and Q8_0 alike).
pub(crate) const BLOCK: usize = 32;

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes one 20-byte Q4_1 block into 32 values: `d * q + m`.
#[inline]
pub(crate) fn dequantize_q4_1_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let (low, high) = out.split_at_mut(BLOCK / 2);
    for ((byte, lo), hi) in block[4..20].iter().zip(low).zip(high) {
        *lo = f32::from(byte & 0x0F) * d + m;
        *hi = f32::from(byte >> 4) * d + m;
    }
}

/// Dequantizes one 34-byte Q8_0 block into 32 values: `d * q`.
#[inline]
pub(crate) fn dequantize_q8_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (byte, value) in block[2..34].iter().zip(out) {
        *value = f32::from(*byte as i8) * d;
    }
}

/// Dequantizes a whole row of `format` (its `row_bytes` bytes) into `out`.
pub(crate) fn dequantize_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    match format {
        WeightFormat::F32 => {
            for (bytes, value) in row.chunks_exact(4).zip(out) {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        WeightFormat::Bf16 => {
            for (bytes, value) in row.chunks_exact(2).zip(out) {
                *value = half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        WeightFormat::Q4_1 => {
            for (block, values) in row.chunks_exact(20).zip(out.chunks_exact_mut(BLOCK)) {
                dequantize_q4_1_block(block, values);
            }
        }
        WeightFormat::Q8_0 => {
            for (block, values) in row.chunks_exact(34).zip(out.chunks_exact_mut(BLOCK)) {
                dequantize_q8_0_block(block, values);
            }
        }
    }
}

/// `sum(a[i] * b[i])` over the shorter of the two, f32, eight partial sums.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let a_chunks = a.chunks_exact(8);
    let b_chunks = b.chunks_exact(8);
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y[i] += alpha * x[i]` over the shorter of the two.
#[inline]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out[j] = scale * dot(q, keys.row(j))` for each `j < out.len()`.
pub(crate) fn scores(q: &[f32], keys: HeadRows<'_>, scale: f32, out: &mut [f32]) {
    for (j, score) in out.iter_mut().enumerate() {
        *score = dot(q, keys.row(j, q.len())) * scale;
    }
}

/// `out = sum_j weights[j] * values.row(j)`.
pub(crate) fn weighted_sum(weights: &[f32], values: HeadRows<'_>, out: &mut [f32]) {
    out.fill(0.0);
    for (j, &w) in weights.iter().enumerate() {
        axpy(w, values.row(j, out.len()), out);
    }
}

/// The dot product of one stored weight row with `x` (`cols` values), dequantizing a
/// block at a time so nothing larger than a block is materialised.
pub(crate) fn row_dot(format: WeightFormat, row: &[u8], x: &[f32]) -> f32 {
    let mut block = [0f32; BLOCK];
    match format {
        WeightFormat::F32 | WeightFormat::Bf16 => {
            let per_block = BLOCK * format.block_bytes();
            let mut sum = 0f32;
            for (bytes, xs) in row.chunks(per_block).zip(x.chunks(BLOCK)) {
                let values = &mut block[..xs.len()];
                dequantize_row(format, bytes, values);
                sum += dot(values, xs);
            }
            sum
        }
        WeightFormat::Q4_1 => row
            .chunks_exact(20)
            .zip(x.chunks_exact(BLOCK))
            .map(|(bytes, xs)| {
                dequantize_q4_1_block(bytes, &mut block);
                dot(&block, xs)
            })
            .sum(),
        WeightFormat::Q8_0 => row
            .chunks_exact(34)
            .zip(x.chunks_exact(BLOCK))
            .map(|(bytes, xs)| {
                dequantize_q8_0_block(bytes, &mut block);
                dot(&block, xs)
            })
            .sum(),
    }
}
