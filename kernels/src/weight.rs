//! Weight matrices in their storage formats.
//!
//! Quantized formats keep GGML's block layouts byte for byte, so GGUF tensors import
//! without re-quantization:
//! - `Q4_1`: blocks of 32 values, 20 bytes: `d: f16`, `m: f16`, then 16 bytes whose low
//!   nibbles are values 0..16 and high nibbles values 16..32; value = `d * q + m`.
//! - `Q8_0`: blocks of 32 values, 34 bytes: `d: f16`, then 32 `i8`; value = `d * q`.
//! - `Bf16` and `F32`: little-endian scalars.

use crate::KernelError;

/// How a weight matrix's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Little-endian IEEE f32.
    F32,
    /// Little-endian bfloat16.
    Bf16,
    /// GGML Q4_1 blocks (32 values, 20 bytes).
    Q4_1,
    /// GGML Q8_0 blocks (32 values, 34 bytes).
    Q8_0,
}

impl WeightFormat {
    /// Values per block (1 for scalar formats).
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::Bf16 => 1,
            Self::Q4_1 | Self::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of one row of `cols` values, or an error if `cols` splits a block.
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        let block = self.block_len();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::BlockAlignment {
                format: self,
                block,
                cols,
            });
        }
        Ok(cols / block * self.block_bytes())
    }
}

/// A `(rows, cols)` weight matrix in its storage format, row-major: each output row's
/// `cols` input weights are contiguous.
#[derive(Clone, Debug)]
pub struct WeightMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl WeightMatrix {
    /// Wraps raw bytes, checking that their length matches the format and shape.
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        let expected =
            format
                .row_bytes(cols)?
                .checked_mul(rows)
                .ok_or(KernelError::WeightBytes {
                    format,
                    rows,
                    cols,
                    expected: usize::MAX,
                    found: data.len(),
                })?;
        if data.len() != expected {
            return Err(KernelError::WeightBytes {
                format,
                rows,
                cols,
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Output dimension.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input dimension.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw bytes, `rows * row_bytes(cols)` long.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The raw bytes of row `r`. Panics if `r >= rows` (a caller bug, not input).
    pub fn row(&self, r: usize) -> &[u8] {
        let len = self.data.len() / self.rows.max(1);
        &self.data[r * len..(r + 1) * len]
    }
}
