//! The CPU backend: portable scalar kernels plus AVX2/FMA kernels picked at run time,
//! spread over a fixed number of threads.
//!
//! The backend holds a [`Kernels`] table of inner loops chosen once at construction; the
//! loops over rows, tokens and heads (in this module and [`ops`]) are shared by every
//! instruction set, so the SIMD paths differ from the portable one only where they must.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod gemm;
mod ops;
mod portable;
mod q8;

use std::fmt;

use rayon::prelude::*;

use crate::{AttentionShape, Backend, KernelError, WeightFormat, WeightMatrix};

/// Which instruction set the CPU backend's inner loops use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust, any CPU: the reference the SIMD paths are tested against.
    Portable,
    /// x86-64 AVX2 and FMA (with F16C for the block scales).
    Avx2,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Self {
        if Self::Avx2.is_available() {
            Self::Avx2
        } else {
            Self::Portable
        }
    }

    /// Whether this CPU can run the instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2 => avx2_detected(),
        }
    }

    /// The backend name that goes with the instruction set.
    fn backend_name(self, precision: ActivationPrecision) -> &'static str {
        match (self, precision) {
            (Self::Portable, ActivationPrecision::F32) => "cpu-portable",
            (Self::Avx2, ActivationPrecision::F32) => "cpu-avx2",
            (Self::Portable, ActivationPrecision::Q8) => "cpu-portable-q8",
            (Self::Avx2, ActivationPrecision::Q8) => "cpu-avx2-q8",
        }
    }
}

/// How the CPU backend feeds activations to products with quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActivationPrecision {
    /// Exact: weights dequantized as GGML does, products and sums in f32. The default,
    /// and what llama.cpp's f32 reference outputs are compared against.
    #[default]
    F32,
    /// llama.cpp's quantized path: each 32-value block of activations rounded to `i8`
    /// with one f16 scale (Q8_1 against Q4_1 weights, Q8_0 against Q8_0), integer dot
    /// products per block. About twice as fast on decode; results follow llama.cpp's
    /// own Q4_1 outputs instead of the exact ones. f32 and bf16 weights stay exact.
    Q8,
}

#[cfg(target_arch = "x86_64")]
fn avx2_detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_detected() -> bool {
    false
}

/// The inner loops of one instruction set. Built only by [`Kernels::for_isa`], which
/// installs SIMD entries after checking the CPU supports them.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// Attention scores of one query against consecutive keys, scaled.
    pub scores: fn(&[f32], ops::HeadRows<'_>, f32, &mut [f32]),
    /// Softmax in place.
    pub softmax: fn(&mut [f32]),
    /// The probability-weighted sum of consecutive values.
    pub weighted_sum: fn(&[f32], ops::HeadRows<'_>, &mut [f32]),
    /// Lays out one input vector the way `row_dot` wants it for a weight format.
    pub prepare: fn(WeightFormat, &[f32], &mut Prepared),
    /// One stored weight row (of the given format) dotted with a prepared input.
    pub row_dot: fn(WeightFormat, &[u8], &Prepared) -> f32,
    /// One stored weight row to f32, natural order (the blocked product's panels).
    pub dequantize_row: fn(WeightFormat, &[u8], &mut [f32]),
    /// The register tile of the blocked product ([`gemm`]): the first `tokens` (up to
    /// 6) tokens of a packed group x 16 rows.
    pub micro_kernel: fn(&[f32], &[f32], usize, &mut [f32; 96]),
}

impl Kernels {
    fn new(isa: Isa, precision: ActivationPrecision) -> Self {
        let exact = Self::for_isa(isa);
        match (precision, isa) {
            (ActivationPrecision::F32, _) => exact,
            (ActivationPrecision::Q8, Isa::Portable) => Self {
                prepare: q8::prepare,
                row_dot: q8::row_dot,
                ..exact
            },
            #[cfg(target_arch = "x86_64")]
            (ActivationPrecision::Q8, Isa::Avx2) => Self {
                prepare: q8::prepare,
                row_dot: avx2::row_dot_q8,
                ..exact
            },
            #[cfg(not(target_arch = "x86_64"))]
            (ActivationPrecision::Q8, Isa::Avx2) => Self::new(Isa::Portable, precision),
        }
    }

    fn for_isa(isa: Isa) -> Self {
        match isa {
            Isa::Portable => Self {
                scores: portable::scores,
                softmax: ops::softmax,
                weighted_sum: portable::weighted_sum,
                prepare: |_, x, prepared| prepared.copy_from(x),
                row_dot: |format, row, input| portable::row_dot(format, row, &input.x),
                dequantize_row: portable::dequantize_row,
                micro_kernel: gemm::micro_kernel,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Self {
                scores: avx2::scores,
                softmax: avx2::softmax,
                weighted_sum: avx2::weighted_sum,
                prepare: |format, x, prepared| match format {
                    WeightFormat::Q4_1 => {
                        avx2::permute_q4_1(x, &mut prepared.x, &mut prepared.block_sums)
                    }
                    _ => prepared.copy_from(x),
                },
                row_dot: avx2::row_dot,
                dequantize_row: avx2::dequantize_row,
                micro_kernel: avx2::micro_kernel,
            },
            // `Isa::is_available` is false off x86-64, so no backend reaches this arm.
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => Self::for_isa(Isa::Portable),
        }
    }
}

/// One input vector laid out for a format's `row_dot`: possibly reordered within each
/// block, with per-block sums where the kernel splits off a block offset.
#[derive(Default)]
pub(crate) struct Prepared {
    /// The input, in the order the kernel reads it.
    pub x: Vec<f32>,
    /// Per-block values the kernel needs besides `x` (empty when it needs none).
    pub block_sums: Vec<f32>,
    /// The input rounded to `i8` blocks (8-bit activation path only).
    pub q8: Vec<i8>,
}

impl Prepared {
    fn new(kernels: &Kernels, format: WeightFormat, x: &[f32]) -> Self {
        let mut prepared = Self::default();
        (kernels.prepare)(format, x, &mut prepared);
        prepared
    }

    fn copy_from(&mut self, x: &[f32]) {
        self.x.clear();
        self.x.extend_from_slice(x);
        self.block_sums.clear();
        self.q8.clear();
    }
}

/// Construction options for [`CpuBackend`]; the default is every CPU, fastest ISA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Worker threads; 0 means one per available CPU.
    pub threads: usize,
    /// The instruction set; `None` picks the fastest available.
    pub isa: Option<Isa>,
}

/// The CPU compute backend.
pub struct CpuBackend {
    isa: Isa,
    precision: ActivationPrecision,
    kernels: Kernels,
    threads: usize,
    /// Worker pool when `threads > 1`; with one thread everything runs on the caller.
    pool: Option<rayon::ThreadPool>,
}

impl fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBackend")
            .field("isa", &self.isa)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Rows a task takes at least, so tiny matrices are not split into pointless work.
const MIN_ROWS_PER_TASK: usize = 16;

/// A sequence that brings at least this many tokens to a step (a prompt) has its
/// products run by the blocked tile ([`gemm`]); fewer (a decode step) by `row_dot`.
/// The choice depends only on the sequence's own count, never on the batch, so a
/// sequence's bits are the same alone or batched; the two paths round differently, so
/// a given prompt always takes the same one.
pub const BLOCKED_MIN_SEQ_TOKENS: usize = 4;

impl CpuBackend {
    /// The fastest instruction set, one thread per CPU. Falls back to a single thread
    /// if the operating system refuses to start workers.
    pub fn new() -> Self {
        Self::with_options(CpuOptions::default()).unwrap_or_else(|_| {
            let isa = Isa::detect();
            Self {
                isa,
                precision: ActivationPrecision::F32,
                kernels: Kernels::for_isa(isa),
                threads: 1,
                pool: None,
            }
        })
    }

    /// The fastest instruction set on `threads` threads (0: one per CPU).
    pub fn with_threads(threads: usize) -> Result<Self, KernelError> {
        Self::with_options(CpuOptions {
            threads,
            ..CpuOptions::default()
        })
    }

    /// A backend with explicit options; fails if the instruction set is not supported
    /// here or the worker threads cannot start.
    pub fn with_options(options: CpuOptions) -> Result<Self, KernelError> {
        let isa = options.isa.unwrap_or_else(Isa::detect);
        if !isa.is_available() {
            return Err(KernelError::Unavailable {
                backend: isa.backend_name(ActivationPrecision::F32),
                reason: "this CPU lacks the instruction set".into(),
            });
        }
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let pool = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("chrysalis-cpu-{i}"))
                .build()
                .map_err(|e| KernelError::Unavailable {
                    backend: isa.backend_name(ActivationPrecision::F32),
                    reason: format!("cannot start {threads} worker threads: {e}"),
                })?;
            Some(pool)
        } else {
            None
        };
        Ok(Self {
            isa,
            precision: ActivationPrecision::F32,
            kernels: Kernels::for_isa(isa),
            threads,
            pool,
        })
    }

    /// The same backend with activations fed to quantized products at `precision`
    /// (see [`ActivationPrecision`]; the default is the exact f32 path).
    pub fn with_activation_precision(mut self, precision: ActivationPrecision) -> Self {
        self.precision = precision;
        self.kernels = Kernels::new(self.isa, precision);
        self
    }

    /// How activations meet quantized weights.
    pub fn activation_precision(&self) -> ActivationPrecision {
        self.precision
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The number of threads kernels run on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `task(first_index, chunk)` for consecutive `chunk`-sized pieces of `out`,
    /// on the worker pool when there is one.
    fn for_each_chunk<F>(&self, out: &mut [f32], chunk: usize, task: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        let chunk = chunk.max(1);
        match &self.pool {
            None => out
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, piece)| task(i * chunk, piece)),
            Some(pool) => pool.install(|| {
                out.par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(i, piece)| task(i * chunk, piece))
            }),
        }
    }

    /// Row-streaming product: each weight row is read once and dotted with every token
    /// while it sits in L1; each token's dot is computed alone, so results do not depend
    /// on the batch or on the thread count (tasks split rows, never a dot). Shapes were
    /// checked by `matmul`.
    fn matmul_rows(&self, w: &WeightMatrix, x: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols, format) = (w.rows(), w.cols(), w.format());
        let inputs: Vec<Prepared> = x
            .chunks_exact(cols)
            .map(|xt| Prepared::new(&self.kernels, format, xt))
            .collect();
        let row_dot = self.kernels.row_dot;
        let chunk = self.rows_per_task(rows);
        if let [input] = inputs.as_slice() {
            self.for_each_chunk(out, chunk, |first, piece| {
                for (r, o) in piece.iter_mut().enumerate() {
                    *o = row_dot(format, w.row(first + r), input);
                }
            });
            return;
        }
        // Tasks own whole rows of the transposed product; transpose back afterwards.
        let mut transposed = vec![0f32; rows * n];
        self.for_each_chunk(&mut transposed, chunk * n, |first, piece| {
            for (r, per_token) in piece.chunks_exact_mut(n).enumerate() {
                let row = w.row(first / n + r);
                for (o, input) in per_token.iter_mut().zip(&inputs) {
                    *o = row_dot(format, row, input);
                }
            }
        });
        for (r, per_token) in transposed.chunks_exact(n).enumerate() {
            for (t, &value) in per_token.iter().enumerate() {
                out[t * rows + r] = value;
            }
        }
    }

    /// Runs `task` on each item, on the worker pool when there is one, keeping order.
    fn map_tasks<T, F>(&self, items: &[usize], task: F) -> Vec<T>
    where
        T: Send,
        F: Fn(usize) -> T + Sync + Send,
    {
        match &self.pool {
            None => items.iter().map(|&i| task(i)).collect(),
            Some(pool) => pool.install(|| items.par_iter().map(|&i| task(i)).collect()),
        }
    }

    /// Blocked product ([`gemm`]): tasks own column blocks of whole panels, so a task
    /// split never cuts a dot. Shapes were checked by the caller.
    fn matmul_blocked(&self, w: &WeightMatrix, x: &[f32], n: usize, out: &mut [f32]) {
        let rows = w.rows();
        let packed = gemm::pack_inputs(x, n, w.cols());
        let task_rows = rows
            .div_ceil(self.threads * 2)
            .next_multiple_of(gemm::PANEL_ROWS);
        let starts: Vec<usize> = (0..rows).step_by(task_rows).collect();
        let blocks = self.map_tasks(&starts, |first| {
            let count = task_rows.min(rows - first);
            gemm::column_block(&self.kernels, w, &packed, n, first, count)
        });
        for (&first, block) in starts.iter().zip(&blocks) {
            let count = task_rows.min(rows - first);
            for (out_t, block_t) in out.chunks_exact_mut(rows).zip(block.chunks_exact(count)) {
                out_t[first..first + count].copy_from_slice(block_t);
            }
        }
    }

    /// A step where some sequences take the blocked path and others the row path:
    /// gathers each path's tokens, runs each path once, scatters the rows back. Each
    /// token's result depends only on its own path, so the split does not change bits.
    fn matmul_mixed(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        seq_tokens: &[usize],
        blocked: &[bool],
        out: &mut [f32],
    ) {
        let (rows, cols) = (w.rows(), w.cols());
        // Index 0 gathers the row path's tokens, index 1 the blocked path's.
        let mut inputs = [Vec::new(), Vec::new()];
        let mut first = 0;
        for (&tokens, &is_blocked) in seq_tokens.iter().zip(blocked) {
            inputs[usize::from(is_blocked)]
                .extend_from_slice(&x[first * cols..(first + tokens) * cols]);
            first += tokens;
        }
        let [row_x, blocked_x] = inputs;
        let mut row_out = vec![0f32; row_x.len() / cols * rows];
        let mut blocked_out = vec![0f32; blocked_x.len() / cols * rows];
        self.matmul_rows(w, &row_x, row_x.len() / cols, &mut row_out);
        self.matmul_blocked(w, &blocked_x, blocked_x.len() / cols, &mut blocked_out);
        let mut taken = [0usize, 0usize];
        let mut first = 0;
        for (&tokens, &is_blocked) in seq_tokens.iter().zip(blocked) {
            let path = usize::from(is_blocked);
            let source = if is_blocked { &blocked_out } else { &row_out };
            let len = tokens * rows;
            out[first..first + len].copy_from_slice(&source[taken[path]..taken[path] + len]);
            taken[path] += len;
            first += len;
        }
    }

    /// Whether a sequence bringing `tokens` tokens runs the blocked tile: only for f32
    /// activations (the 8-bit path stays integer, row by row).
    fn blocked_for(&self, tokens: usize) -> bool {
        self.precision == ActivationPrecision::F32 && tokens >= BLOCKED_MIN_SEQ_TOKENS
    }

    /// Rows per task for a matrix of `rows` rows: a few tasks per thread for balance.
    fn rows_per_task(&self, rows: usize) -> usize {
        rows.div_ceil(self.threads * 4).max(MIN_ROWS_PER_TASK)
    }
}

/// Checks a matmul call's shapes (the [`Backend::matmul`] contract for `n` tokens);
/// returns false when the product is empty (no rows or no columns).
fn check_matmul(w: &WeightMatrix, x: &[f32], n: usize, out: &[f32]) -> Result<bool, KernelError> {
    let (rows, cols) = (w.rows(), w.cols());
    expect_len("matmul input x", elements(&[n, cols]), x.len())?;
    expect_len("matmul output", elements(&[n, rows]), out.len())?;
    Ok(rows > 0 && cols > 0)
}

/// Fails unless `found == expected`, naming the operand.
pub(crate) fn expect_len(
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::Shape {
            what,
            expected,
            found,
        })
    }
}

/// The product of shape factors, or `usize::MAX` on overflow (which then fails the
/// length comparison instead of wrapping).
pub(crate) fn elements(factors: &[usize]) -> usize {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .unwrap_or(usize::MAX)
}

/// Fails unless a shape parameter is valid, naming what was expected.
pub(crate) fn expect_param(
    what: &'static str,
    valid: bool,
    found: usize,
    expected: &'static str,
) -> Result<(), KernelError> {
    if valid {
        Ok(())
    } else {
        Err(KernelError::Parameter {
            what,
            expected,
            found,
        })
    }
}

/// Checks an RMSNorm call's shapes (the [`Backend::rms_norm`] contract); returns the
/// row length.
pub(crate) fn check_rms_norm(x: &[f32], weight: &[f32], out: &[f32]) -> Result<usize, KernelError> {
    let dim = weight.len();
    expect_param("rms_norm weight length", dim > 0, dim, "at least 1")?;
    expect_len("rms_norm output", x.len(), out.len())?;
    expect_param(
        "rms_norm input length",
        x.len().is_multiple_of(dim),
        x.len(),
        "a multiple of the weight length",
    )?;
    Ok(dim)
}

/// Checks a RoPE call's shapes (the [`Backend::rope`] contract); returns the row width
/// `n_heads * head_dim`.
pub(crate) fn check_rope(
    x: &[f32],
    positions: &[u32],
    n_heads: usize,
    head_dim: usize,
) -> Result<usize, KernelError> {
    expect_param(
        "rope head_dim",
        head_dim > 0 && head_dim.is_multiple_of(2),
        head_dim,
        "a positive even number",
    )?;
    let width = elements(&[n_heads, head_dim]);
    expect_len("rope input", elements(&[positions.len(), width]), x.len())?;
    Ok(width)
}

/// Checks an attention call's shapes (the [`Backend::attention`] contract); returns
/// the number of query (and output) elements.
pub(crate) fn check_attention(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
) -> Result<usize, KernelError> {
    let AttentionShape {
        n_new,
        first_pos,
        n_heads,
        n_kv_heads,
        head_dim,
    } = shape;
    expect_param("attention head_dim", head_dim > 0, head_dim, "at least 1")?;
    expect_param(
        "attention n_kv_heads",
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        n_kv_heads,
        "a positive divisor of n_heads",
    )?;
    let total = first_pos.saturating_add(n_new);
    let q_len = elements(&[n_new, n_heads, head_dim]);
    let kv_len = elements(&[total, n_kv_heads, head_dim]);
    expect_len("attention q", q_len, q.len())?;
    expect_len("attention k", kv_len, k.len())?;
    expect_len("attention v", kv_len, v.len())?;
    expect_len("attention output", q_len, out.len())?;
    Ok(q_len)
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        self.isa.backend_name(self.precision)
    }

    fn matmul(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if !check_matmul(w, x, n, out)? {
            out.fill(0.0);
            return Ok(());
        }
        // Every product, whatever `n`, dots each token with each row on its own, so a
        // token's outputs do not depend on how many tokens share the call: continuous
        // batching must give a single stream's logits bit for bit. (A blocked f32 GEMM
        // whose per-output FMA chain matched for all `n` was tried and made batch-1
        // decode ten times slower, because the weights must be transposed into panels.)
        self.matmul_rows(w, x, n, out);
        Ok(())
    }

    fn matmul_seqs(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        seq_tokens: &[usize],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let n = crate::total_tokens(seq_tokens)?;
        if !check_matmul(w, x, n, out)? {
            out.fill(0.0);
            return Ok(());
        }
        let blocked: Vec<bool> = seq_tokens.iter().map(|&t| self.blocked_for(t)).collect();
        if blocked.iter().all(|&b| b) {
            self.matmul_blocked(w, x, n, out);
        } else if !blocked.contains(&true) {
            self.matmul_rows(w, x, n, out);
        } else {
            self.matmul_mixed(w, x, seq_tokens, &blocked, out);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let dim = check_rms_norm(x, weight, out)?;
        for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            ops::rms_norm_row(xr, weight, eps, or);
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut [f32],
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<(), KernelError> {
        let width = check_rope(x, positions, n_heads, head_dim)?;
        if width == 0 {
            return Ok(());
        }
        let mut cos = vec![0f32; head_dim / 2];
        let mut sin = vec![0f32; head_dim / 2];
        for (&pos, token) in positions.iter().zip(x.chunks_exact_mut(width)) {
            ops::rope_angles(pos, head_dim, theta, &mut cos, &mut sin);
            for head in token.chunks_exact_mut(head_dim) {
                ops::rope_head(head, &cos, &sin);
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        expect_len("silu_mul up", gate.len(), up.len())?;
        ops::silu_mul(gate, up);
        Ok(())
    }

    fn softmax(&self, x: &mut [f32]) -> Result<(), KernelError> {
        if !x.is_empty() {
            (self.kernels.softmax)(x);
        }
        Ok(())
    }

    fn attention(
        &self,
        shape: AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let AttentionShape {
            first_pos,
            n_heads,
            n_kv_heads,
            head_dim,
            ..
        } = shape;
        if check_attention(shape, q, k, v, out)? == 0 {
            return Ok(());
        }
        let group = n_heads / n_kv_heads;
        let kernels = &self.kernels;
        let stride = n_kv_heads * head_dim;
        let attend = |scores: &mut Vec<f32>, index: usize, out_head: &mut [f32]| {
            let (token, head) = (index / n_heads, index % n_heads);
            let offset = (head / group) * head_dim;
            let keys = ops::HeadRows {
                data: k,
                stride,
                offset,
            };
            let values = ops::HeadRows {
                data: v,
                stride,
                offset,
            };
            scores.resize(first_pos + token + 1, 0.0);
            let q_head = &q[index * head_dim..(index + 1) * head_dim];
            ops::attend_head(kernels, q_head, keys, values, scores, out_head);
        };
        match &self.pool {
            None => {
                let mut scores = Vec::new();
                for (index, out_head) in out.chunks_exact_mut(head_dim).enumerate() {
                    attend(&mut scores, index, out_head);
                }
            }
            Some(pool) => pool.install(|| {
                out.par_chunks_exact_mut(head_dim)
                    .enumerate()
                    .for_each_init(Vec::new, |scores, (index, out_head)| {
                        attend(scores, index, out_head)
                    })
            }),
        }
        Ok(())
    }
}
