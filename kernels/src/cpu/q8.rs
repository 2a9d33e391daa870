//! The 8-bit-activation path (llama.cpp's): each 32-value block of an input is rounded
//! to `i8` with one scale, and quantized weights meet it in integer dot products.
//!
//! Quantization follows GGML's x86 `quantize_row_q8_1` / `quantize_row_q8_0`:
//! `d = amax / 127`, `q = round_half_even(x * (127 / amax))`, `d` stored as f16, and for
//! Q8_1 also `s = d * sum(q)` stored as f16. A Q4_1 block then contributes
//! `d_w * d_x * sum(q_w * q_x) + m_w * s_x`, a Q8_0 block `d_w * d_x * sum(q_w * q_x)`.

use super::portable::{f16_at, BLOCK};
use super::Prepared;
use crate::WeightFormat;

/// Rounds `v` to f16 and back, as storing it in a GGML block header does.
fn through_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Quantizes `x` (a multiple of 32 long) into `prepared.q8` and per-block
/// `[d, s, 0, 0]` in `prepared.block_sums` (the layout the SIMD kernels load).
pub(crate) fn quantize(x: &[f32], prepared: &mut Prepared) {
    prepared.x.clear();
    prepared.q8.clear();
    prepared.block_sums.clear();
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for &v in block {
            // |v * id| <= 127 (up to rounding of id), so the cast cannot saturate.
            let q = (v * id).round_ties_even() as i8;
            sum += i32::from(q);
            prepared.q8.push(q);
        }
        let s = through_f16(d * sum as f32);
        prepared
            .block_sums
            .extend_from_slice(&[through_f16(d), s, 0.0, 0.0]);
    }
}

/// Prepares an input for the 8-bit path: quantized for block formats, plain otherwise
/// (f32 and bf16 weights keep the exact path).
pub(crate) fn prepare(format: WeightFormat, x: &[f32], prepared: &mut Prepared) {
    match format {
        WeightFormat::Q4_1 | WeightFormat::Q8_0 => quantize(x, prepared),
        WeightFormat::F32 | WeightFormat::Bf16 => prepared.copy_from(x),
    }
}

/// Integer dot product of one block's weight quants with the input's.
fn block_dot(weights: impl Iterator<Item = i32>, inputs: &[i8]) -> i32 {
    weights.zip(inputs).map(|(w, &x)| w * i32::from(x)).sum()
}

/// Portable row dot for the 8-bit path.
pub(crate) fn row_dot(format: WeightFormat, row: &[u8], input: &Prepared) -> f32 {
    let blocks = input
        .q8
        .chunks_exact(BLOCK)
        .zip(input.block_sums.chunks_exact(4));
    match format {
        WeightFormat::Q4_1 => row
            .chunks_exact(20)
            .zip(blocks)
            .map(|(w, (qx, ds))| {
                let nibbles = w[4..20].iter().map(|b| i32::from(b & 0x0F));
                let highs = w[4..20].iter().map(|b| i32::from(b >> 4));
                let dot = block_dot(nibbles.chain(highs), qx);
                f16_at(w, 0) * ds[0] * dot as f32 + f16_at(w, 2) * ds[1]
            })
            .sum(),
        WeightFormat::Q8_0 => row
            .chunks_exact(34)
            .zip(blocks)
            .map(|(w, (qx, ds))| {
                let dot = block_dot(w[2..34].iter().map(|&b| i32::from(b as i8)), qx);
                f16_at(w, 0) * ds[0] * dot as f32
            })
            .sum(),
        WeightFormat::F32 | WeightFormat::Bf16 => super::portable::row_dot(format, row, &input.x),
    }
}
