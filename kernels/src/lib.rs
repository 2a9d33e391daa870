//! Chrysalis compute kernels.
//!
//! Model-agnostic numerical building blocks behind one [`Backend`] trait: matrix
//! products of quantized (Q4_1, Q8_0), bf16 and f32 weights against f32 activations,
//! RMSNorm, RoPE, SwiGLU, softmax and attention. The CPU backend picks AVX2/FMA paths at
//! run time and falls back to portable code; the CUDA backend (cudarc, NVRTC-compiled
//! kernels from `kernels/cuda/`, cuBLAS) moves request data through encrypted bounce
//! buffers. This crate depends on no other Chrysalis crate.
#![deny(missing_docs)]

pub mod bounce;
mod cpu;
pub mod cuda;
mod weight;

pub use cpu::{ActivationPrecision, CpuBackend, CpuOptions, Isa, BLOCKED_MIN_SEQ_TOKENS};
pub use weight::{WeightFormat, WeightMatrix};

/// Everything that can go wrong in a kernel call, named by what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer's length does not match the shape the call describes.
    #[error("{what}: expected {expected} elements, found {found}")]
    Shape {
        /// Which operand was wrong.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length that was passed.
        found: usize,
    },
    /// A weight's byte length does not match its format and shape.
    #[error("weight of {rows}x{cols} {format:?}: expected {expected} bytes, found {found}")]
    WeightBytes {
        /// The weight's storage format.
        format: WeightFormat,
        /// Output dimension.
        rows: usize,
        /// Input dimension.
        cols: usize,
        /// Bytes the format and shape imply.
        expected: usize,
        /// Bytes that were given.
        found: usize,
    },
    /// A block-quantized weight's input dimension is not a multiple of the block size.
    #[error("{format:?} needs cols divisible by {block}, found {cols}")]
    BlockAlignment {
        /// The weight's storage format.
        format: WeightFormat,
        /// The block size of the format.
        block: usize,
        /// The input dimension that was given.
        cols: usize,
    },
    /// A shape parameter is out of range (zero, odd, or not a divisor where one is needed).
    #[error("{what}: found {found}, expected {expected}")]
    Parameter {
        /// Which parameter was wrong.
        what: &'static str,
        /// What a valid value looks like.
        expected: &'static str,
        /// The value that was passed.
        found: usize,
    },
    /// A device call failed (driver error, out of device memory, a rejected transfer).
    #[error("backend {backend}: {reason}")]
    Device {
        /// The backend's name.
        backend: &'static str,
        /// What the driver or the transfer reported.
        reason: String,
    },
    /// The backend cannot run here (no driver, no device, not compiled in).
    #[error("backend {backend} unavailable: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why it cannot run.
        reason: String,
    },
}

/// The shape of one attention call for a single sequence.
///
/// Queries are the `n_new` newest tokens of the sequence, at positions
/// `first_pos .. first_pos + n_new`; the key and value caches hold positions
/// `0 .. first_pos + n_new`. Query `i` attends to cache rows `0 ..= first_pos + i`
/// (causal). Grouped-query attention: query head `h` reads KV head
/// `h / (n_heads / n_kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Number of query tokens.
    pub n_new: usize,
    /// Position of the first query token in its sequence.
    pub first_pos: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

/// A compute backend. Every buffer is row-major f32 in host memory; weights are
/// [`WeightMatrix`] values in their storage format.
///
/// Shapes in the docs read `name (rows, cols)`. Implementations must give the same
/// results as the portable CPU path within the tolerance of their arithmetic.
pub trait Backend: Send + Sync {
    /// A short name for logs and errors, such as `"cpu-avx2"`.
    fn name(&self) -> &'static str;

    /// `out (n, w.rows) = x (n, w.cols) @ w^T`, with `w (rows, cols)`.
    fn matmul(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError>;

    /// [`Backend::matmul`] for one step of several sequences: `x (n, w.cols)` stacks
    /// `seq_tokens[i]` consecutive tokens of sequence `i`, with `n` their sum.
    ///
    /// A backend may choose its arithmetic per sequence (a blocked product for a prompt,
    /// a per-token dot for a decode step), but only from that sequence's own token count,
    /// never from the batch, so a sequence's outputs are bitwise the same alone or
    /// batched. The default ignores the split and calls `matmul`, which is right for a
    /// backend whose `matmul` is per token already.
    fn matmul_seqs(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        seq_tokens: &[usize],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.matmul(w, x, total_tokens(seq_tokens)?, out)
    }

    /// Row-wise RMSNorm: `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight`, with
    /// `x, out (n, weight.len())`.
    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError>;

    /// Rotary position embedding in place on `x (positions.len(), n_heads * head_dim)`,
    /// rotating adjacent pairs `(2i, 2i + 1)` of each head by `pos * theta^(-2i / head_dim)`
    /// (the GGML "normal" layout that GGUF Llama weights use).
    fn rope(
        &self,
        x: &mut [f32],
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<(), KernelError>;

    /// SwiGLU in place: `gate = silu(gate) * up`, element-wise.
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError>;

    /// Numerically stable softmax in place over the whole slice.
    fn softmax(&self, x: &mut [f32]) -> Result<(), KernelError>;

    /// Causal scaled dot-product attention for one sequence:
    /// `q (n_new, n_heads * head_dim)`, `k, v (first_pos + n_new, n_kv_heads * head_dim)`,
    /// `out (n_new, n_heads * head_dim)`, scale `1 / sqrt(head_dim)`.
    fn attention(
        &self,
        shape: AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError>;
}

/// The tokens of a step split as `seq_tokens`, refusing a count that overflows `usize`.
pub(crate) fn total_tokens(seq_tokens: &[usize]) -> Result<usize, KernelError> {
    seq_tokens
        .iter()
        .try_fold(0usize, |sum, &t| sum.checked_add(t))
        .ok_or(KernelError::Parameter {
            what: "matmul_seqs token counts",
            expected: "a sum that fits in usize",
            found: usize::MAX,
        })
}
