//! Blocked matrix product for the tokens of sequences that bring many tokens in one step
//! (prefill).
//!
//! Weights are dequantized once per panel of [`PANEL_ROWS`] rows into a k-major f32
//! panel, which then serves every token; inputs are packed once per call into groups of
//! [`GROUP_TOKENS`] tokens, k-major. A register tile of 6 tokens x 16 rows accumulates
//! over the whole input dimension, so each weight loaded from the panel feeds 6 FMAs and
//! each input broadcast feeds 16 products. Shapes that do not fill a tile are padded
//! with zeros in the packed copies and cut off when the tile is stored. Each output is
//! one multiply-add chain over `k` in order from zero, so a token's results do not
//! depend on the other tokens of the call, on padding or on the thread count; they do
//! differ from the row path's (`row_dot`), which is why the backend chooses the path
//! per sequence ([`super::CpuBackend`]'s `matmul_seqs`).

use super::Kernels;
use crate::WeightMatrix;

/// Output rows per panel (two 8-lane vectors).
pub(crate) const PANEL_ROWS: usize = 16;
/// Tokens per register tile.
pub(crate) const GROUP_TOKENS: usize = 6;

/// `x (n, cols)` packed as `ceil(n / 6)` groups of `(cols, 6)`, zero-padded.
pub(crate) fn pack_inputs(x: &[f32], n: usize, cols: usize) -> Vec<f32> {
    let groups = n.div_ceil(GROUP_TOKENS);
    let mut packed = vec![0f32; groups * cols * GROUP_TOKENS];
    for (t, token) in x.chunks_exact(cols).take(n).enumerate() {
        let group = &mut packed[(t / GROUP_TOKENS) * cols * GROUP_TOKENS..];
        for (k, &value) in token.iter().enumerate() {
            group[k * GROUP_TOKENS + t % GROUP_TOKENS] = value;
        }
    }
    packed
}

/// Dequantizes rows `first .. first + 16` (those that exist) into `panel (cols, 16)`.
fn pack_panel(
    kernels: &Kernels,
    w: &WeightMatrix,
    first: usize,
    row_buf: &mut [f32],
    panel: &mut [f32],
) {
    let rows = PANEL_ROWS.min(w.rows() - first);
    if rows < PANEL_ROWS {
        panel.fill(0.0);
    }
    for r in 0..rows {
        (kernels.dequantize_row)(w.format(), w.row(first + r), row_buf);
        for (k, &value) in row_buf.iter().enumerate() {
            panel[k * PANEL_ROWS + r] = value;
        }
    }
}

/// Output columns `first .. first + count` of `x @ w^T` for all `n` tokens, as a
/// `(n, count)` block; `first` and the panel walk are multiples of 16.
pub(crate) fn column_block(
    kernels: &Kernels,
    w: &WeightMatrix,
    packed: &[f32],
    n: usize,
    first: usize,
    count: usize,
) -> Vec<f32> {
    let cols = w.cols();
    let mut block = vec![0f32; n * count];
    let mut row_buf = vec![0f32; cols];
    let mut panel = vec![0f32; cols * PANEL_ROWS];
    let mut tile = [0f32; GROUP_TOKENS * PANEL_ROWS];
    for panel_start in (first..first + count).step_by(PANEL_ROWS) {
        pack_panel(kernels, w, panel_start, &mut row_buf, &mut panel);
        let width = PANEL_ROWS.min(first + count - panel_start);
        let offset = panel_start - first;
        for (g, group) in packed.chunks_exact(cols * GROUP_TOKENS).enumerate() {
            let tokens = GROUP_TOKENS.min(n - g * GROUP_TOKENS);
            (kernels.micro_kernel)(&panel, group, tokens, &mut tile);
            for (t, tile_row) in tile.chunks_exact(PANEL_ROWS).take(tokens).enumerate() {
                let at = (g * GROUP_TOKENS + t) * count + offset;
                block[at..at + width].copy_from_slice(&tile_row[..width]);
            }
        }
    }
    block
}

/// The portable register tile: same contract as the SIMD ones. Only the first `tokens`
/// rows of `tile` are computed (the rest are left as they were); each output is
/// `acc = acc + x[k] * w[k]` for `k` in order from zero, whatever `tokens` is, so a
/// token's results do not depend on how many tokens share the group.
pub(crate) fn micro_kernel(panel: &[f32], xgroup: &[f32], tokens: usize, tile: &mut [f32; 96]) {
    let tokens = tokens.min(GROUP_TOKENS);
    let mut acc = [[0f32; PANEL_ROWS]; GROUP_TOKENS];
    for (weights, inputs) in panel
        .chunks_exact(PANEL_ROWS)
        .zip(xgroup.chunks_exact(GROUP_TOKENS))
    {
        for (row, &x) in acc.iter_mut().zip(inputs).take(tokens) {
            for (a, &w) in row.iter_mut().zip(weights) {
                *a += x * w;
            }
        }
    }
    for (dst, row) in tile.chunks_exact_mut(PANEL_ROWS).zip(&acc) {
        dst.copy_from_slice(row);
    }
}
