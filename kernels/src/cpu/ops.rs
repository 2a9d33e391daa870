//! Element-wise and attention operations, written once over a [`Kernels`] table so the
//! portable and SIMD backends share their loops and differ only in inner products.
//!
//! Each follows the arithmetic of the GGML operation it replaces (noted per function),
//! so results line up with llama.cpp's f32 reference runs.

use super::Kernels;

/// RMSNorm of one row as GGML computes it: the mean of squares summed in f64, the
/// scale `1 / sqrt(mean + eps)` in f32, then `(x * scale) * weight`.
pub(crate) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// The cosines and sines of one position's rotation angles, `head_dim / 2` of each.
///
/// GGML's `rope_cache_init` builds the angle by repeated multiplication with
/// `theta_scale = base^(-2 / head_dim)` in f32; doing the same keeps angles bit-equal.
pub(crate) fn rope_angles(pos: u32, head_dim: usize, theta: f32, cos: &mut [f32], sin: &mut [f32]) {
    let theta_scale = theta.powf(-2.0 / head_dim as f32);
    let mut angle = pos as f32;
    for (c, s) in cos.iter_mut().zip(sin.iter_mut()) {
        *c = angle.cos();
        *s = angle.sin();
        angle *= theta_scale;
    }
}

/// Rotates each adjacent pair `(2i, 2i + 1)` of one head by the given angles.
pub(crate) fn rope_head(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * c - x1 * s;
        pair[1] = x0 * s + x1 * c;
    }
}

/// `gate = silu(gate) * up`, with GGML's `x / (1 + exp(-x))`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Softmax in place: subtract the maximum, exponentiate, sum in f64, scale by the
/// reciprocal of the sum (GGML's `soft_max`).
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// One KV head's rows in a cache: row `j` is `data[j * stride + offset..][..len]`.
#[derive(Clone, Copy)]
pub(crate) struct HeadRows<'a> {
    /// The whole cache, `(positions, stride)`.
    pub data: &'a [f32],
    /// Elements per cache row (`n_kv_heads * head_dim`).
    pub stride: usize,
    /// Offset of the head within a row.
    pub offset: usize,
}

impl<'a> HeadRows<'a> {
    /// Row `j`, `len` elements. The attention shape checks keep it in bounds.
    #[inline]
    pub fn row(&self, j: usize, len: usize) -> &'a [f32] {
        let at = j * self.stride + self.offset;
        &self.data[at..at + len]
    }
}

/// Attention for one query head `q`: scores against the first `scores.len()` keys,
/// softmax, then the weighted sum of as many values into `out` (`q.len()` long).
pub(crate) fn attend_head(
    kernels: &Kernels,
    q: &[f32],
    keys: HeadRows<'_>,
    values: HeadRows<'_>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let scale = 1.0 / (q.len() as f32).sqrt();
    (kernels.scores)(q, keys, scale, scores);
    (kernels.softmax)(scores);
    (kernels.weighted_sum)(scores, values, out);
}
