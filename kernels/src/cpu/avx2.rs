//! AVX2/FMA/F16C kernels for x86-64.
//!
//! Every `#[target_feature]` function here is reached only through the safe wrappers at
//! the top, and those are installed in a [`super::Kernels`] table only by
//! `Kernels::for_isa(Isa::Avx2)`, which `CpuBackend` builds after `Isa::is_available`
//! confirmed AVX2, FMA and F16C at run time. The wrappers are `pub(super)`, so nothing
//! outside the CPU backend can call them on a CPU without those features.
//!
//! Q4_1 against f32 activations uses a permuted activation layout (see [`permute_q4_1`])
//! so a block's nibbles unpack with lane shifts instead of byte shuffles, and splits the
//! block sum as `d * sum(q * x) + m * sum(x)` with `sum(x)` computed once per input.

use std::arch::x86_64::*;

use super::ops::HeadRows;
use super::portable::BLOCK;
use crate::WeightFormat;

/// Bytes of one Q4_1 block.
const Q4_1_BYTES: usize = 20;
/// Bytes of one Q8_0 block.
const Q8_0_BYTES: usize = 34;

/// `out[j] = scale * dot(q, keys.row(j))` for each `j < out.len()`.
pub(super) fn scores(q: &[f32], keys: HeadRows<'_>, scale: f32, out: &mut [f32]) {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs).
    unsafe { scores_impl(q, keys, scale, out) }
}

/// `out = sum_j weights[j] * values.row(j)`.
pub(super) fn weighted_sum(weights: &[f32], values: HeadRows<'_>, out: &mut [f32]) {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs).
    unsafe { weighted_sum_impl(weights, values, out) }
}

/// Dequantizes a stored row into `out` (natural element order).
pub(super) fn dequantize_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    match format {
        // SAFETY: installed only after AVX2/FMA/F16C detection (module docs).
        WeightFormat::Q4_1 => unsafe { dequantize_q4_1_row(row, out) },
        _ => super::portable::dequantize_row(format, row, out),
    }
}

/// The register tile of the blocked matrix product for the first `tokens` (1 to 6)
/// tokens of a group; see [`super::gemm`]. A sequence's last, partial group gets a
/// narrower tile instead of FMAs on padding; every width runs the same per-output FMA
/// sequence.
pub(super) fn micro_kernel(panel: &[f32], xgroup: &[f32], tokens: usize, tile: &mut [f32; 96]) {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs).
    unsafe {
        match tokens {
            0 => {}
            1 => micro_kernel_impl::<1>(panel, xgroup, tile),
            2 => micro_kernel_impl::<2>(panel, xgroup, tile),
            3 => micro_kernel_impl::<3>(panel, xgroup, tile),
            4 => micro_kernel_impl::<4>(panel, xgroup, tile),
            5 => micro_kernel_impl::<5>(panel, xgroup, tile),
            _ => micro_kernel_impl::<6>(panel, xgroup, tile),
        }
    }
}

/// One stored row dotted with a prepared input.
pub(super) fn row_dot(format: WeightFormat, row: &[u8], input: &super::Prepared) -> f32 {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs). `matmul`
    // checked the input against the matrix's `cols`, and `row` is one row of that
    // matrix, so each kernel's length contract holds (Q4_1 inputs were permuted by
    // `permute_q4_1`, which keeps the length and adds 4 sums per block).
    unsafe {
        match format {
            WeightFormat::F32 => f32_row_dot(row, &input.x),
            WeightFormat::Bf16 => bf16_row_dot(row, &input.x),
            WeightFormat::Q4_1 => q4_1_row_dot(row, &input.x, &input.block_sums),
            WeightFormat::Q8_0 => q8_0_row_dot(row, &input.x),
        }
    }
}

/// One stored row dotted with an input quantized by [`super::q8::quantize`].
pub(super) fn row_dot_q8(format: WeightFormat, row: &[u8], input: &super::Prepared) -> f32 {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs). `matmul`
    // checked the input against the matrix's `cols`; quantizing keeps 32 quants and 4
    // scale floats per block, so each kernel's length contract holds.
    unsafe {
        match format {
            WeightFormat::Q4_1 => q4_1_q8_row_dot(row, &input.q8, &input.block_sums),
            WeightFormat::Q8_0 => q8_0_q8_row_dot(row, &input.q8, &input.block_sums),
            _ => row_dot(format, row, input),
        }
    }
}

/// Reorders one input vector (a multiple of 32 long) for [`q4_1_row_dot`]: within each
/// block, position `8k + l` holds element `4l + k` (for `l < 4`) or `16 + 4(l - 4) + k`,
/// the order in which shifting a broadcast 16-byte block by `8k` and `8k + 4` bits per
/// 32-bit lane produces the nibbles.
pub(super) fn permute_q4_1(x: &[f32], out: &mut Vec<f32>, block_sums: &mut Vec<f32>) {
    out.clear();
    block_sums.clear();
    for block in x.chunks_exact(BLOCK) {
        for k in 0..4 {
            for l in 0..8 {
                let source = if l < 4 {
                    4 * l + k
                } else {
                    16 + 4 * (l - 4) + k
                };
                out.push(block[source]);
            }
        }
        // Lane 1 lines up with `m` in the [d, m, 0, 0] vector F16C makes of a block head.
        block_sums.extend_from_slice(&[0.0, block.iter().sum(), 0.0, 0.0]);
    }
}

/// Horizontal sum of eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    hsum128(quad)
}

/// Horizontal sum of four lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum128(v: __m128) -> f32 {
    let pair = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at `i + offset` with `i + offset + 8 <= len`,
    // inside both slices.
    unsafe {
        while i + 32 <= len {
            for (j, lane) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                *lane = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(at)),
                    _mm256_loadu_ps(pb.add(at)),
                    *lane,
                );
            }
            i += 32;
        }
        while i + 8 <= len {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = a[i..len].iter().zip(&b[i..len]).map(|(x, y)| x * y).sum();
    hsum(sum) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_impl(alpha: f32, x: &[f32], y: &mut [f32]) {
    let len = x.len().min(y.len());
    let scale = _mm256_set1_ps(alpha);
    let mut i = 0;
    // SAFETY: each iteration reads and writes 8 floats below `len`, inside both slices.
    unsafe {
        while i + 8 <= len {
            let py = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                py,
                _mm256_fmadd_ps(
                    scale,
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(py),
                ),
            );
            i += 8;
        }
    }
    for (yi, xi) in y[i..len].iter_mut().zip(&x[i..len]) {
        *yi += alpha * xi;
    }
}

/// Softmax in place with the same steps as [`super::ops::softmax`] (max, exponentials,
/// f64 sum, reciprocal scale), eight lanes at a time.
pub(super) fn softmax(x: &mut [f32]) {
    // SAFETY: installed only after AVX2/FMA/F16C detection (module docs).
    unsafe { softmax_impl(x) }
}

/// `e^x` for eight lanes, Cephes' `expf` scheme: `x = n ln 2 + r` with `ln 2` split in
/// two for an exact reduction, a degree-5 polynomial for `e^r` on `|r| <= ln 2 / 2`,
/// and `2^n` built in the exponent bits. About 1 ulp; inputs are clamped to
/// `[-87.3, 88.4]`, so anything below gives about 1e-38 instead of 0.
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(88.376_26)),
        _mm256_set1_ps(-87.336_55),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e_r = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(e_r, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_impl(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut chunks = x.chunks_exact_mut(8);
    let mut sum = _mm256_setzero_pd();
    for chunk in chunks.by_ref() {
        // SAFETY: `chunk` holds exactly 8 floats.
        unsafe {
            let e = exp8(_mm256_sub_ps(
                _mm256_loadu_ps(chunk.as_ptr()),
                _mm256_set1_ps(max),
            ));
            _mm256_storeu_ps(chunk.as_mut_ptr(), e);
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` holds 4 doubles.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum) };
    let mut total: f64 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = (*v - max).exp();
        total += f64::from(*v);
    }
    let inv = _mm256_set1_ps((1.0 / total) as f32);
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in chunks.by_ref() {
        // SAFETY: `chunk` holds exactly 8 floats.
        unsafe {
            _mm256_storeu_ps(
                chunk.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(chunk.as_ptr()), inv),
            )
        };
    }
    for v in chunks.into_remainder() {
        *v *= (1.0 / total) as f32;
    }
}

/// Four keys at a time, so each query load feeds four FMAs.
#[target_feature(enable = "avx2,fma,f16c")]
fn scores_impl(q: &[f32], keys: HeadRows<'_>, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let body = d - d % 8;
    let done = out.len() - out.len() % 4;
    for (g, group) in out[..done].chunks_exact_mut(4).enumerate() {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| keys.row(4 * g + r, d));
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..body).step_by(8) {
            // SAFETY: `i + 8 <= body <= d`, the length of `q` and of every row.
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(row.as_ptr().add(i)), *a);
                }
            }
        }
        for ((score, a), row) in group.iter_mut().zip(acc).zip(&rows) {
            let tail = super::portable::dot(&q[body..], &row[body..]);
            *score = (hsum(a) + tail) * scale;
        }
    }
    for (j, score) in out.iter_mut().enumerate().skip(done) {
        *score = dot_impl(q, keys.row(j, d)) * scale;
    }
}

/// Four values at a time, so each output chunk is loaded and stored once per four.
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum_impl(weights: &[f32], values: HeadRows<'_>, out: &mut [f32]) {
    let d = out.len();
    let body = d - d % 8;
    out.fill(0.0);
    let mut groups = weights.chunks_exact(4);
    for (g, group) in groups.by_ref().enumerate() {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| values.row(4 * g + r, d));
        let p: [__m256; 4] = std::array::from_fn(|r| _mm256_set1_ps(group[r]));
        for i in (0..body).step_by(8) {
            // SAFETY: `i + 8 <= body <= d`, the length of `out` and of every row.
            unsafe {
                let dst = out.as_mut_ptr().add(i);
                let mut o = _mm256_loadu_ps(dst);
                for (pr, row) in p.iter().zip(&rows) {
                    o = _mm256_fmadd_ps(*pr, _mm256_loadu_ps(row.as_ptr().add(i)), o);
                }
                _mm256_storeu_ps(dst, o);
            }
        }
        for (&w, row) in group.iter().zip(&rows) {
            super::portable::axpy(w, &row[body..], &mut out[body..]);
        }
    }
    let done = weights.len() - groups.remainder().len();
    for (j, &w) in weights.iter().enumerate().skip(done) {
        axpy_impl(w, values.row(j, d), out);
    }
}

/// `[d, m, 0, 0]` (or `[d, x, 0, 0]` for Q8_0, whose second half is data) from the
/// first four bytes of the block at `$block` (a `*const u8` with 4 readable bytes; the
/// caller's `unsafe` block vouches for that). A macro so the per-block helpers are
/// expanded in the calling `#[target_feature]` function (see [`fold_alternating`]).
macro_rules! block_head {
    ($block:expr) => {
        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
            $block.cast::<i32>(),
        )))
    };
}

/// `sum(u8 * i8)` of 32 byte pairs as eight f32 lanes (pairs added in i16, which
/// cannot overflow for 4-bit or 7-bit magnitudes times `i8`). A macro for the same
/// reason as [`block_head`].
macro_rules! dot_u8_i8 {
    ($unsigned:expr, $signed:expr) => {{
        let pairs = _mm256_maddubs_epi16($unsigned, $signed);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }};
}

/// Folds a block step over blocks `0..$blocks` into two accumulators, even blocks into
/// the first and odd ones into the second, so consecutive blocks' FMA chains overlap;
/// evaluates to `(even, odd)`. Written as `fold_alternating!(blocks, zero, |b, acc| body)`.
///
/// A macro, not a generic function taking a closure: the body must be expanded inside
/// the calling `#[target_feature]` function. LLVM does not inline a closure carrying the
/// caller's target features into a helper without them, and in dev builds (which run
/// `cargo xtask bench`) that left a call and stack spills per block, three times slower.
macro_rules! fold_alternating {
    ($blocks:expr, $zero:expr, |$b:ident, $acc:pat_param| $body:expr) => {{
        let blocks: usize = $blocks;
        let (mut even, mut odd) = ($zero, $zero);
        let mut next = 0;
        while next + 2 <= blocks {
            even = {
                let ($b, $acc) = (next, even);
                $body
            };
            odd = {
                let ($b, $acc) = (next + 1, odd);
                $body
            };
            next += 2;
        }
        if next < blocks {
            even = {
                let ($b, $acc) = (next, even);
                $body
            };
        }
        (even, odd)
    }};
}

/// Q4_1 row times an input permuted by [`permute_q4_1`], two blocks per iteration
/// into independent accumulators.
///
/// # Safety
/// `row.len()` is a multiple of 20 and `xp.len() >= 32 * blocks`,
/// `block_sums.len() >= 4 * blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_row_dot(row: &[u8], xp: &[f32], block_sums: &[f32]) -> f32 {
    let blocks = row.len() / Q4_1_BYTES;
    debug_assert!(xp.len() >= blocks * BLOCK && block_sums.len() >= blocks * 4);
    let mask = _mm256_set1_epi32(0x0F);
    let high_half = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let (pr, px, ps) = (row.as_ptr(), xp.as_ptr(), block_sums.as_ptr());
    let zero = (_mm256_setzero_ps(), _mm_setzero_ps());
    let ((acc0, m0), (acc1, m1)) = fold_alternating!(blocks, zero, |b, (acc, m)| {
        // SAFETY: `b < blocks`, so the block's 20 bytes at `20b`, its 32 inputs at `32b`
        // and 4 sums at `4b` are in bounds by the function's contract.
        unsafe {
            let block = pr.add(b * Q4_1_BYTES);
            let x = px.add(b * BLOCK);
            let dm = block_head!(block);
            let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(4).cast()));
            let q = _mm256_srlv_epi32(packed, high_half);
            let v0 = _mm256_cvtepi32_ps(_mm256_and_si256(q, mask));
            let v1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<8>(q), mask));
            let v2 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<16>(q), mask));
            let v3 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<24>(q), mask));
            let s01 = _mm256_fmadd_ps(
                v1,
                _mm256_loadu_ps(x.add(8)),
                _mm256_mul_ps(v0, _mm256_loadu_ps(x)),
            );
            let s23 = _mm256_fmadd_ps(
                v3,
                _mm256_loadu_ps(x.add(24)),
                _mm256_mul_ps(v2, _mm256_loadu_ps(x.add(16))),
            );
            let acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_add_ps(s01, s23), acc);
            (acc, _mm_fmadd_ps(dm, _mm_loadu_ps(ps.add(b * 4)), m))
        }
    });
    hsum(_mm256_add_ps(acc0, acc1)) + hsum128(_mm_add_ps(m0, m1))
}

/// Q8_0 row times a plain input.
///
/// # Safety
/// `row.len()` is a multiple of 34 and `x.len() >= 32 * blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_row_dot(row: &[u8], x: &[f32]) -> f32 {
    let blocks = row.len() / Q8_0_BYTES;
    debug_assert!(x.len() >= blocks * BLOCK);
    let (pr, px) = (row.as_ptr(), x.as_ptr());
    let (acc0, acc1) = fold_alternating!(blocks, _mm256_setzero_ps(), |b, acc| {
        // SAFETY: `b < blocks`: the block's 34 bytes at `34b` (the head read takes 4, the
        // quant loads 8 at offsets 2, 10, 18, 26) and its 32 inputs at `32b` are in
        // bounds by the function's contract.
        unsafe {
            let block = pr.add(b * Q8_0_BYTES);
            let x = px.add(b * BLOCK);
            let d = _mm256_broadcastss_ps(block_head!(block));
            let mut s = _mm256_setzero_ps();
            for i in 0..4 {
                let bytes = _mm_loadl_epi64(block.add(2 + 8 * i).cast());
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                s = _mm256_fmadd_ps(q, _mm256_loadu_ps(x.add(8 * i)), s);
            }
            _mm256_fmadd_ps(d, s, acc)
        }
    });
    hsum(_mm256_add_ps(acc0, acc1))
}

/// Q4_1 row times a Q8_1-quantized input (GGML's `vec_dot_q4_1_q8_1`).
///
/// # Safety
/// `row.len()` is a multiple of 20, `qx.len() >= 32 * blocks`, `ds.len() >= 4 * blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_row_dot(row: &[u8], qx: &[i8], ds: &[f32]) -> f32 {
    let blocks = row.len() / Q4_1_BYTES;
    debug_assert!(qx.len() >= blocks * BLOCK && ds.len() >= blocks * 4);
    let mask = _mm256_set1_epi8(0x0F);
    let high_half = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let (pr, px, ps) = (row.as_ptr(), qx.as_ptr(), ds.as_ptr());
    let zero = (_mm256_setzero_ps(), _mm_setzero_ps());
    let ((acc0, m0), (acc1, m1)) = fold_alternating!(blocks, zero, |b, (acc, m)| {
        // SAFETY: `b < blocks`: 20 weight bytes at `20b`, 32 quants at `32b` and 4 scale
        // floats at `4b` are in bounds by the function's contract.
        unsafe {
            let block = pr.add(b * Q4_1_BYTES);
            // [d_w * d_x, m_w * s_x, 0, 0]
            let scales = _mm_mul_ps(block_head!(block), _mm_loadu_ps(ps.add(b * 4)));
            let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(4).cast()));
            let qw = _mm256_and_si256(_mm256_srlv_epi32(packed, high_half), mask);
            let xy = dot_u8_i8!(qw, _mm256_loadu_si256(px.add(b * BLOCK).cast()));
            let acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), xy, acc);
            (acc, _mm_add_ps(m, scales))
        }
    });
    let m = _mm_add_ps(m0, m1);
    // Lane 1 holds the sum of m_w * s_x; lane 0 the scale products, not wanted here.
    hsum(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(m))
}

/// Q8_0 row times a Q8_0-quantized input (GGML's `vec_dot_q8_0_q8_0`).
///
/// # Safety
/// `row.len()` is a multiple of 34, `qx.len() >= 32 * blocks`, `ds.len() >= 4 * blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_q8_row_dot(row: &[u8], qx: &[i8], ds: &[f32]) -> f32 {
    let blocks = row.len() / Q8_0_BYTES;
    debug_assert!(qx.len() >= blocks * BLOCK && ds.len() >= blocks * 4);
    let (pr, px, ps) = (row.as_ptr(), qx.as_ptr(), ds.as_ptr());
    let (acc0, acc1) = fold_alternating!(blocks, _mm256_setzero_ps(), |b, acc| {
        // SAFETY: `b < blocks`: 34 weight bytes at `34b` (head read 4, quants 32 at +2),
        // 32 quants at `32b` and the scale at `4b` are in bounds by the contract.
        unsafe {
            let block = pr.add(b * Q8_0_BYTES);
            let scale = _mm_mul_ss(block_head!(block), _mm_load_ss(ps.add(b * 4)));
            let qw = _mm256_loadu_si256(block.add(2).cast());
            let qxv = _mm256_loadu_si256(px.add(b * BLOCK).cast());
            // maddubs needs one unsigned side: |w| against x carrying w's sign.
            let xy = dot_u8_i8!(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qxv, qw));
            _mm256_fmadd_ps(_mm256_broadcastss_ps(scale), xy, acc)
        }
    });
    hsum(_mm256_add_ps(acc0, acc1))
}

/// bf16 row times a plain input.
///
/// # Safety
/// `x.len() >= row.len() / 2`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_row_dot(row: &[u8], x: &[f32]) -> f32 {
    let len = row.len() / 2;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: 8 bf16 values (16 bytes) at element `i`, `i + 8 <= len`; 8 inputs.
        unsafe {
            let raw = _mm256_cvtepu16_epi32(_mm_loadu_si128(row.as_ptr().add(2 * i).cast()));
            let w = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(raw));
            acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), acc);
        }
        i += 8;
    }
    let mut tail = [0f32; 8];
    super::portable::dequantize_row(WeightFormat::Bf16, &row[2 * i..], &mut tail);
    hsum(acc) + super::portable::dot(&tail[..len - i], &x[i..len])
}

/// f32 row (little-endian bytes) times a plain input.
///
/// # Safety
/// `x.len() >= row.len() / 4`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_row_dot(row: &[u8], x: &[f32]) -> f32 {
    let len = row.len() / 4;
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: 8 floats (32 bytes, unaligned load) at element `i`, `i + 8 <= len`.
        unsafe {
            let w = _mm256_loadu_ps(row.as_ptr().add(4 * i).cast());
            acc[(i / 8) & 1] =
                _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), acc[(i / 8) & 1]);
        }
        i += 8;
    }
    let mut tail = [0f32; 8];
    super::portable::dequantize_row(WeightFormat::F32, &row[4 * i..], &mut tail);
    hsum(_mm256_add_ps(acc[0], acc[1])) + super::portable::dot(&tail[..len - i], &x[i..len])
}

/// Q4_1 row to f32 in natural order, `d * q + m` as GGML computes it.
///
/// # Safety
/// `row.len()` is a multiple of 20 and `out.len() >= 32 * blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_q4_1_row(row: &[u8], out: &mut [f32]) {
    let blocks = row.len() / Q4_1_BYTES;
    assert!(out.len() >= blocks * BLOCK, "caller sizes the output");
    let mask = _mm_set1_epi8(0x0F);
    for b in 0..blocks {
        // SAFETY: block `b` spans bytes `20b .. 20b + 20`; outputs `32b .. 32b + 32`.
        unsafe {
            let block = row.as_ptr().add(b * Q4_1_BYTES);
            let dm = block_head!(block);
            let (d, m) = (
                _mm256_broadcastss_ps(dm),
                _mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dm))),
            );
            let packed = _mm_loadu_si128(block.add(4).cast());
            let low = _mm_and_si128(packed, mask);
            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
            let dst = out.as_mut_ptr().add(b * BLOCK);
            for (part, bytes) in [
                low,
                _mm_srli_si128::<8>(low),
                high,
                _mm_srli_si128::<8>(high),
            ]
            .into_iter()
            .enumerate()
            {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                _mm256_storeu_ps(dst.add(8 * part), _mm256_add_ps(_mm256_mul_ps(q, d), m));
            }
        }
    }
}

/// `T` tokens x 16 rows (`T <= 6`): `tile[t * 16 + r] = sum_k xgroup[6k + t] *
/// panel[16k + r]`, each sum one FMA per `k` in order from zero, so the result for a
/// token is the same for every `T` that covers it.
#[target_feature(enable = "avx2,fma,f16c")]
fn micro_kernel_impl<const T: usize>(panel: &[f32], xgroup: &[f32], tile: &mut [f32; 96]) {
    const { assert!(T <= 6) };
    let depth = (panel.len() / 16).min(xgroup.len() / 6);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let (pw, px) = (panel.as_ptr(), xgroup.as_ptr());
    for k in 0..depth {
        // SAFETY: `k < depth` keeps the 16 panel floats at `16k` and the 6 inputs at `6k`
        // inside their slices.
        unsafe {
            let w0 = _mm256_loadu_ps(pw.add(16 * k));
            let w1 = _mm256_loadu_ps(pw.add(16 * k + 8));
            for (t, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*px.add(6 * k + t));
                row[0] = _mm256_fmadd_ps(xv, w0, row[0]);
                row[1] = _mm256_fmadd_ps(xv, w1, row[1]);
            }
        }
    }
    for (t, row) in acc.iter().enumerate() {
        // SAFETY: `tile` holds 96 floats; row `t < T <= 6` writes 16 of them at `16t`.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(16 * t), row[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(16 * t + 8), row[1]);
        }
    }
}
