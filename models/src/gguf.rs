//! GGUF (versions 2 and 3) parsing, for importing llama.cpp model files.
//!
//! Layout, all little-endian: magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! metadata count; metadata entries (`string` key, `u32` value type, value); tensor infos
//! (`string` name, `u32` dimension count, `u64` dims innermost first, `u32` GGML type,
//! `u64` offset); padding to `general.alignment` (default 32); tensor data, each tensor at
//! its offset from the start of the data section. Strings are `u64` length + UTF-8 bytes.
//!
//! The input is untrusted: every length and count is checked against the bytes that
//! remain before anything is allocated, arithmetic is checked, and every failure is an
//! error that names what was expected and where, never a panic. Typed arrays are kept as
//! typed vectors so a file cannot inflate its size in memory by much.

use std::collections::BTreeMap;

/// GGUF magic bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Largest `general.alignment` accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;

/// A malformed GGUF file, named by what was expected and where.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// The file ended early.
    #[error("gguf: {what} at byte {offset}: expected {needed} more bytes, found {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: usize,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left.
        available: usize,
    },
    /// Not a GGUF file.
    #[error("gguf: expected magic \"GGUF\", found {found:?}")]
    Magic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version this parser does not read.
    #[error("gguf: expected version 2 or 3, found {found}")]
    Version {
        /// The version field.
        found: u32,
    },
    /// A count larger than the remaining bytes could hold.
    #[error("gguf: {what}: count {found} cannot fit in the {available} bytes left")]
    Count {
        /// What was counted.
        what: &'static str,
        /// The count in the file.
        found: u64,
        /// Bytes left.
        available: usize,
    },
    /// An unknown metadata value type.
    #[error("gguf: metadata value type at byte {offset}: expected 0..=12, found {found}")]
    ValueType {
        /// Where.
        offset: usize,
        /// The type code.
        found: u32,
    },
    /// Arrays nested too deep.
    #[error("gguf: array at byte {offset}: expected at most {MAX_ARRAY_DEPTH} levels of nesting")]
    Nesting {
        /// Where.
        offset: usize,
    },
    /// A string that is not UTF-8.
    #[error("gguf: string at byte {offset}: expected UTF-8")]
    Utf8 {
        /// Where.
        offset: usize,
    },
    /// A metadata key given twice.
    #[error("gguf: metadata key {key:?} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A metadata value of the wrong type for its well-known key.
    #[error("gguf: metadata {key}: expected {expected}")]
    KeyType {
        /// The key.
        key: String,
        /// The type it should have.
        expected: &'static str,
    },
    /// A tensor name given twice.
    #[error("gguf: tensor {name:?} appears twice")]
    DuplicateTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor whose type, shape or placement is invalid.
    #[error("gguf: tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor name.
        name: String,
        /// What was expected and found.
        reason: String,
    },
    /// An alignment that is not a power of two up to 1 MiB.
    #[error(
        "gguf: general.alignment: expected a power of two up to {MAX_ALIGNMENT}, found {found}"
    )]
    Alignment {
        /// The value in the file.
        found: u64,
    },
}

/// GGML tensor storage types, with their block geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // GGML's own names
#[non_exhaustive]
pub enum GgmlType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// 4-bit, one scale per 32.
    Q4_0,
    /// 4-bit, scale and minimum per 32.
    Q4_1,
    /// 5-bit, one scale per 32.
    Q5_0,
    /// 5-bit, scale and minimum per 32.
    Q5_1,
    /// 8-bit, one scale per 32.
    Q8_0,
    /// 8-bit with sums, per 32.
    Q8_1,
    /// 2-bit k-quant.
    Q2_K,
    /// 3-bit k-quant.
    Q3_K,
    /// 4-bit k-quant.
    Q4_K,
    /// 5-bit k-quant.
    Q5_K,
    /// 6-bit k-quant.
    Q6_K,
    /// 8-bit k-quant.
    Q8_K,
    /// bfloat16.
    BF16,
}

impl GgmlType {
    /// The type for a GGML type code, if this parser knows its geometry.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// `(values per block, bytes per block)`.
    pub const fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2_K => (256, 84),
            Self::Q3_K => (256, 110),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
            Self::Q8_K => (256, 292),
        }
    }
}

/// A typed metadata array.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Array {
    /// `u8` values.
    U8(Vec<u8>),
    /// `i8` values.
    I8(Vec<i8>),
    /// `u16` values.
    U16(Vec<u16>),
    /// `i16` values.
    I16(Vec<i16>),
    /// `u32` values.
    U32(Vec<u32>),
    /// `i32` values.
    I32(Vec<i32>),
    /// `f32` values.
    F32(Vec<f32>),
    /// `bool` values.
    Bool(Vec<bool>),
    /// Strings.
    String(Vec<String>),
    /// `u64` values.
    U64(Vec<u64>),
    /// `i64` values.
    I64(Vec<i64>),
    /// `f64` values.
    F64(Vec<f64>),
    /// Arrays of arrays.
    Array(Vec<Array>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Array(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9.
    Array(Array),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f64, if it is a float (or an integer exactly representable).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if it is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them: a matrix with
    /// `rows` outputs of `cols` inputs is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of its data from the start of the file.
    pub start: usize,
    /// Length of its data in bytes.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `(rows, cols)` of a matrix (1-D: one row); higher dimensions fold into rows.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        let rows = self.dims.iter().skip(1).product();
        (rows, cols)
    }
}

/// A parsed GGUF file, borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Offset of the data section from the start of the file.
    pub data_start: usize,
}

impl<'a> Gguf<'a> {
    /// Parses a whole GGUF file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(GgufError::Magic { found: magic });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { found: version });
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        // Smallest entries: a key of length 0 plus a type code and a u8 value (13 bytes);
        // a tensor info with an empty name and one dimension (32 bytes).
        r.check_count("metadata entries", kv_count, 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let value = r.value(0)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.insert(key, value);
        }
        let alignment = alignment_of(&metadata)?;
        r.check_count("tensor infos", tensor_count, 32)?;
        let mut raw = Vec::new();
        for _ in 0..tensor_count {
            raw.push(r.tensor_info()?);
        }
        let data_start = align_up(r.pos as u64, alignment)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s <= bytes.len())
            .ok_or(GgufError::Truncated {
                what: "padding before tensor data",
                offset: r.pos,
                needed: alignment,
                available: bytes.len() - r.pos,
            })?;
        let tensors = place_tensors(raw, alignment, data_start, bytes.len())?;
        Ok(Self {
            bytes,
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        })
    }

    /// The bytes of a tensor of this file.
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> &'a [u8] {
        // Ranges were checked against the file in `place_tensors`; `get` keeps a
        // `TensorInfo` from another file from panicking.
        self.bytes
            .get(tensor.start..tensor.start + tensor.len)
            .unwrap_or(&[])
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata `key` as an unsigned integer; errors if absent or of another type.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| key_type(key, "a non-negative integer"))
    }

    /// Metadata `key` as a float; errors if absent or of another type.
    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| key_type(key, "a number"))
    }

    /// Metadata `key` as a string; errors if absent or of another type.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| key_type(key, "a string"))
    }

    /// Metadata `key` as an array of strings; errors if absent or of another type.
    pub fn require_strings(&self, key: &str) -> Result<&[String], GgufError> {
        match self.get(key) {
            Some(Value::Array(Array::String(v))) => Ok(v),
            _ => Err(key_type(key, "an array of strings")),
        }
    }
}

fn key_type(key: &str, expected: &'static str) -> GgufError {
    GgufError::KeyType {
        key: key.to_owned(),
        expected,
    }
}

fn alignment_of(metadata: &BTreeMap<String, Value>) -> Result<u64, GgufError> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let found = value
        .as_u64()
        .ok_or_else(|| key_type("general.alignment", "an unsigned integer"))?;
    if found == 0 || !found.is_power_of_two() || found > MAX_ALIGNMENT {
        return Err(GgufError::Alignment { found });
    }
    Ok(found)
}

fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    pos.checked_add(alignment - 1)
        .map(|p| p / alignment * alignment)
}

/// A tensor info as read, before its offset is checked against the data section.
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
}

/// Checks each tensor's size, alignment and range, and turns offsets into file positions.
fn place_tensors(
    raw: Vec<RawTensor>,
    alignment: u64,
    data_start: usize,
    file_len: usize,
) -> Result<Vec<TensorInfo>, GgufError> {
    let mut seen = std::collections::HashSet::new();
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let bad = |reason: String| GgufError::Tensor {
            name: t.name.clone(),
            reason,
        };
        if !seen.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor { name: t.name });
        }
        let len = tensor_len(&t.dims, t.ggml_type).map_err(bad)?;
        if t.offset % alignment != 0 {
            return Err(bad(format!(
                "offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let available = (file_len - data_start) as u64;
        let fits = t
            .offset
            .checked_add(len)
            .is_some_and(|end| end <= available);
        if !fits {
            return Err(bad(format!(
                "data at {}..+{len} of the data section, which holds {available} bytes",
                t.offset
            )));
        }
        // Both fit in usize: they are bounded by the file's length.
        tensors.push(TensorInfo {
            name: t.name,
            dims: t.dims,
            ggml_type: t.ggml_type,
            start: data_start + t.offset as usize,
            len: len as usize,
        });
    }
    Ok(tensors)
}

/// Bytes a tensor of `dims` and `ggml_type` occupies.
fn tensor_len(dims: &[u64], ggml_type: GgmlType) -> Result<u64, String> {
    let (block_len, block_bytes) = ggml_type.block();
    let first = dims.first().copied().unwrap_or(1);
    if first % block_len != 0 {
        return Err(format!(
            "innermost dimension {first} is not a multiple of {ggml_type:?}'s block of {block_len}"
        ));
    }
    // Dimensions come from the file: every product is checked, the first one included.
    (first / block_len)
        .checked_mul(block_bytes)
        .and_then(|row| {
            dims.iter()
                .skip(1)
                .try_fold(row, |acc, &d| acc.checked_mul(d))
        })
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))
}

/// A cursor over untrusted bytes; every read checks what remains.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, what: &'static str, n: u64) -> Result<&[u8], GgufError> {
        let available = self.remaining();
        let truncated = GgufError::Truncated {
            what,
            offset: self.pos,
            needed: n,
            available,
        };
        let n = usize::try_from(n).map_err(|_| truncated.clone())?;
        if n > available {
            return Err(truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(what, N as u64)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Refuses a count of items of at least `min_size` bytes each that cannot fit.
    fn check_count(&self, what: &'static str, count: u64, min_size: u64) -> Result<(), GgufError> {
        let available = self.remaining();
        if count.saturating_mul(min_size) > available as u64 {
            return Err(GgufError::Count {
                what,
                found: count,
                available,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.pos;
        let bytes = self.take(what, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Utf8 { offset })
    }

    fn value(&mut self, depth: u32) -> Result<Value, GgufError> {
        let offset = self.pos;
        let code = self.u32("metadata value type")?;
        self.value_of(code, offset, depth)
    }

    fn value_of(&mut self, code: u32, offset: usize, depth: u32) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match code {
            0 => Value::U8(self.array::<1>(W)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(W)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            4 => Value::U32(self.u32(W)?),
            5 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            7 => Value::Bool(self.array::<1>(W)?[0] != 0),
            8 => Value::String(self.string(W)?),
            9 => Value::Array(self.array_value(depth)?),
            10 => Value::U64(self.u64(W)?),
            11 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            found => return Err(GgufError::ValueType { offset, found }),
        })
    }

    fn array_value(&mut self, depth: u32) -> Result<Array, GgufError> {
        let offset = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::Nesting { offset });
        }
        let code = self.u32("array element type")?;
        let count = self.u64("array length")?;
        let min_size = match code {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10 | 11 | 12 => 8,
            9 => 12,
            found => return Err(GgufError::ValueType { offset, found }),
        };
        self.check_count("array elements", count, min_size)?;
        // Bounded by the check above: at most `remaining` elements.
        let n = count as usize;
        macro_rules! scalars {
            ($variant:ident, $ty:ty) => {{
                let bytes = self.take("array elements", count * min_size)?;
                Array::$variant(
                    bytes
                        .chunks_exact(min_size as usize)
                        .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                )
            }};
        }
        Ok(match code {
            0 => Array::U8(self.take("array elements", count)?.to_vec()),
            1 => scalars!(I8, i8),
            2 => scalars!(U16, u16),
            3 => scalars!(I16, i16),
            4 => scalars!(U32, u32),
            5 => scalars!(I32, i32),
            6 => scalars!(F32, f32),
            7 => Array::Bool(
                self.take("array elements", count)?
                    .iter()
                    .map(|&b| b != 0)
                    .collect(),
            ),
            8 => Array::String(
                (0..n)
                    .map(|_| self.string("array string"))
                    .collect::<Result<_, _>>()?,
            ),
            10 => scalars!(U64, u64),
            11 => scalars!(I64, i64),
            12 => scalars!(F64, f64),
            _ => Array::Array(
                (0..n)
                    .map(|_| self.array_value(depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn tensor_info(&mut self) -> Result<RawTensor, GgufError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Tensor {
                name,
                reason: format!("expected 1..={MAX_DIMS} dimensions, found {n_dims}"),
            });
        }
        let dims = (0..n_dims)
            .map(|_| self.u64("tensor dimension"))
            .collect::<Result<Vec<_>, _>>()?;
        let code = self.u32("tensor type")?;
        let ggml_type = GgmlType::from_code(code).ok_or_else(|| GgufError::Tensor {
            name: name.clone(),
            reason: format!("expected a known GGML type code, found {code}"),
        })?;
        let offset = self.u64("tensor offset")?;
        Ok(RawTensor {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

/// Writes GGUF v3 files: for tests and tools that need small, well-formed inputs.
pub mod write {
    use super::{Array, GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};

    /// One tensor to write: name, dims innermost first, type code, raw bytes.
    pub struct Tensor<'a> {
        /// Name.
        pub name: &'a str,
        /// Dimensions, innermost first.
        pub dims: Vec<u64>,
        /// Storage type.
        pub ggml_type: GgmlType,
        /// Raw data (its length is not checked here).
        pub data: &'a [u8],
    }

    /// The type code of a storage type.
    pub fn type_code(t: GgmlType) -> u32 {
        (0..=30)
            .find(|&c| GgmlType::from_code(c) == Some(t))
            .unwrap_or(u32::MAX)
    }

    /// Encodes a GGUF v3 file with the default alignment.
    pub fn encode(metadata: &[(&str, Value)], tensors: &[Tensor<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            string(&mut out, key);
            out.extend_from_slice(&value_code(value).to_le_bytes());
            value_body(&mut out, value);
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut offset = 0usize;
        for t in tensors {
            string(&mut out, t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&type_code(t.ggml_type).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        for t in tensors {
            out.resize(out.len().div_ceil(align) * align, 0);
            out.extend_from_slice(t.data);
        }
        out
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn value_code(value: &Value) -> u32 {
        match value {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn array_code(array: &Array) -> u32 {
        match array {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }

    fn value_body(out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => string(out, s),
            Value::Array(a) => array_body(out, a),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    fn array_body(out: &mut Vec<u8>, array: &Array) {
        out.extend_from_slice(&array_code(array).to_le_bytes());
        out.extend_from_slice(&(array.len() as u64).to_le_bytes());
        macro_rules! each {
            ($v:expr) => {
                for x in $v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            };
        }
        match array {
            Array::U8(v) => out.extend_from_slice(v),
            Array::I8(v) => each!(v),
            Array::U16(v) => each!(v),
            Array::I16(v) => each!(v),
            Array::U32(v) => each!(v),
            Array::I32(v) => each!(v),
            Array::F32(v) => each!(v),
            Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Array::String(v) => v.iter().for_each(|s| string(out, s)),
            Array::Array(v) => v.iter().for_each(|a| array_body(out, a)),
            Array::U64(v) => each!(v),
            Array::I64(v) => each!(v),
            Array::F64(v) => each!(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write::{encode, Tensor};
    use super::*;
    use proptest::prelude::*;

    fn every_value_type() -> Vec<(&'static str, Value)> {
        vec![
            ("u8", Value::U8(200)),
            ("i8", Value::I8(-5)),
            ("u16", Value::U16(60000)),
            ("i16", Value::I16(-30000)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-7)),
            ("f32", Value::F32(1.5e-5)),
            ("bool", Value::Bool(true)),
            ("str", Value::String("héllo".into())),
            ("u64", Value::U64(u64::MAX)),
            ("i64", Value::I64(i64::MIN)),
            ("f64", Value::F64(-2.25)),
            (
                "a.str",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            ("a.i32", Value::Array(Array::I32(vec![1, -2, 3]))),
            ("a.f64", Value::Array(Array::F64(vec![0.5]))),
            ("a.bool", Value::Array(Array::Bool(vec![true, false]))),
            ("a.u8", Value::Array(Array::U8(vec![]))),
            (
                "a.nested",
                Value::Array(Array::Array(vec![
                    Array::U16(vec![1, 2]),
                    Array::I64(vec![-1]),
                ])),
            ),
        ]
    }

    fn sample() -> Vec<u8> {
        let q = [7u8; 40]; // two Q4_1 blocks: 2 rows x 32 cols
        let f = [0u8; 12]; // three f32
        encode(
            &every_value_type(),
            &[
                Tensor {
                    name: "w",
                    dims: vec![32, 2],
                    ggml_type: GgmlType::Q4_1,
                    data: &q,
                },
                Tensor {
                    name: "n",
                    dims: vec![3],
                    ggml_type: GgmlType::F32,
                    data: &f,
                },
            ],
        )
    }

    #[test]
    fn round_trips_every_value_type_and_tensor_placement() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).expect("valid file");
        assert_eq!(g.version, 3);
        for (key, value) in every_value_type() {
            assert_eq!(g.get(key), Some(&value), "{key}");
        }
        let w = g.tensor("w").expect("w");
        assert_eq!(
            (w.ggml_type, w.rows_cols(), w.len),
            (GgmlType::Q4_1, (2, 32), 40)
        );
        assert_eq!(g.tensor_bytes(w), &[7u8; 40]);
        let n = g.tensor("n").expect("n");
        assert_eq!(n.start % 32, 0);
        assert_eq!(g.tensor_bytes(n).len(), 12);
    }

    #[test]
    fn version_two_is_read_and_one_refused() {
        let mut bytes = sample();
        bytes[4] = 2;
        assert_eq!(Gguf::parse(&bytes).expect("v2").version, 2);
        bytes[4] = 1;
        assert_eq!(
            Gguf::parse(&bytes).unwrap_err(),
            GgufError::Version { found: 1 }
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                Gguf::parse(&bytes[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = sample();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::Count { .. })));
        let array = encode(&[("k", Value::Array(Array::U64(vec![1])))], &[]);
        let mut bad = array.clone();
        let len_at = array.len() - 16;
        bad[len_at..len_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(Gguf::parse(&bad), Err(GgufError::Count { .. })));
    }

    #[test]
    fn misplaced_tensors_and_bad_alignment_are_named() {
        let data = [0u8; 20];
        let t = |dims: Vec<u64>| Tensor {
            name: "x",
            dims,
            ggml_type: GgmlType::Q4_1,
            data: &data,
        };
        let err = Gguf::parse(&encode(&[], &[t(vec![33])])).unwrap_err();
        assert!(
            err.to_string().contains("multiple of Q4_1's block of 32"),
            "{err}"
        );
        let err = Gguf::parse(&encode(&[], &[t(vec![32, 2])])).unwrap_err();
        assert!(err.to_string().contains("data section"), "{err}");
        let err = Gguf::parse(&encode(&[], &[t(vec![32, u64::MAX])])).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        let err = Gguf::parse(&encode(&[("general.alignment", Value::U32(3))], &[])).unwrap_err();
        assert_eq!(err, GgufError::Alignment { found: 3 });
        let twice = encode(&[], &[t(vec![32]), t(vec![32])]);
        assert!(matches!(
            Gguf::parse(&twice),
            Err(GgufError::DuplicateTensor { .. })
        ));
        let keys = encode(&[("k", Value::U8(1)), ("k", Value::U8(2))], &[]);
        assert!(matches!(
            Gguf::parse(&keys),
            Err(GgufError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut a = Array::U8(vec![1]);
        for _ in 0..MAX_ARRAY_DEPTH {
            a = Array::Array(vec![a]);
        }
        let bytes = encode(&[("deep", Value::Array(a))], &[]);
        assert!(matches!(
            Gguf::parse(&bytes),
            Err(GgufError::Nesting { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Gguf::parse(&bytes);
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
        ) {
            let mut bytes = sample();
            for (pos, value) in edits {
                let at = pos % bytes.len();
                bytes[at] = value;
            }
            if let Ok(g) = Gguf::parse(&bytes) {
                for t in &g.tensors {
                    prop_assert_eq!(g.tensor_bytes(t).len(), t.len);
                }
            }
        }

        #[test]
        fn prefixed_magic_and_random_tail_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
            bytes.extend_from_slice(&tail);
            let _ = Gguf::parse(&bytes);
        }
    }
}
