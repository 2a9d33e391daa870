//! The model directory: verified loading of weights, tokenizer, config and template.
//!
//! # Layout (what `cargo xtask fetch-model` writes and what the engine reads)
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | tensors under their GGUF names (`token_embd.weight`, `blk.{i}.attn_q.weight`, …, `output_norm.weight`, `output.weight` unless embeddings are tied). Block-quantized tensors are dtype `U8`, shape `[rows, row_bytes]`, holding the GGML blocks byte for byte; `__metadata__` names their layout: `"format.NAME": "q4_1"` or `"q8_0"` and `"shape.NAME": "ROWS,COLS"` (rows = output dimension, cols = input dimension). Scalar tensors are `F32` (or `BF16`) with their logical shape, `[rows, cols]` for matrices. |
//! | `config.json` | [`LlamaConfig`] |
//! | `tokenizer.json` | a `tokenizers` tokenizer (byte-level BPE with its special tokens) |
//! | `chat_template.jinja` | the model's own chat template (Jinja) |
//! | `manifest.json` | [`Manifest`]: every file above with size and SHA-256, and the model root |
//!
//! # Verification
//!
//! [`ModelDir::open`] reads every file listed in the manifest into memory, recomputes the
//! model root ([`crate::merkle`], chunks hashed in parallel) from those bytes, and
//! refuses the directory unless it equals the manifest's root, and the caller's expected
//! root when one is given ([`ModelDir::open_expecting`]). Everything returned afterwards
//! is parsed from those verified in-memory bytes, never read from disk again, so a file
//! changed after the check cannot reach the engine.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrysalis_kernels::{KernelError, WeightFormat, WeightMatrix};
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::gguf::GgufError;
use crate::manifest::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::merkle::{self, Hash};
use crate::tokenizer::Tokenizer;

/// File name of the weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the chat template.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Files a model directory must list in its manifest.
pub const REQUIRED_FILES: [&str; 4] = [
    CHAT_TEMPLATE_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_FILE,
];

/// Largest single model file accepted (64 GiB): a bound on what we read into memory.
const MAX_FILE_BYTES: u64 = 64 << 30;

/// Everything that can go wrong loading or importing a model, named by what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A JSON file did not parse into the expected structure.
    #[error("{file}: expected valid JSON of the documented shape: {reason}")]
    Json {
        /// Which file.
        file: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A config value is out of range or inconsistent.
    #[error("config.json: {field}: {reason}")]
    Config {
        /// Which field.
        field: &'static str,
        /// What was expected and found.
        reason: String,
    },
    /// The manifest is malformed.
    #[error("manifest.json: {reason}")]
    Manifest {
        /// What was expected and found.
        reason: String,
    },
    /// A required file is not listed in the manifest.
    #[error("manifest.json: expected an entry for {path}, found none")]
    MissingFile {
        /// The file that should have been listed.
        path: &'static str,
    },
    /// A file's length differs from the manifest.
    #[error("{path}: expected {expected} bytes (manifest), found {found}")]
    FileSize {
        /// The file.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// The recomputed root differs from the one required.
    #[error("model root mismatch: expected {expected} ({source_of_expected}), computed {found}")]
    RootMismatch {
        /// Where the expected root came from (the manifest or the caller).
        source_of_expected: &'static str,
        /// The expected root, hex.
        expected: String,
        /// The root computed from the files, hex.
        found: String,
    },
    /// `model.safetensors` did not parse.
    #[error("model.safetensors: {reason}")]
    Safetensors {
        /// The parser's message.
        reason: String,
    },
    /// A tensor the caller asked for is absent.
    #[error("model.safetensors: expected a tensor named {name}, found none")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor's dtype, shape or layout metadata is not what its use needs.
    #[error("model.safetensors: tensor {name}: expected {expected}, found {found}")]
    Tensor {
        /// The tensor name.
        name: String,
        /// What the caller needs.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A weight matrix was inconsistent with its format.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The tokenizer could not be built, loaded or run.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizers crate's message, or what was expected.
        reason: String,
    },
    /// The chat template is not UTF-8.
    #[error("chat_template.jinja: expected UTF-8 text")]
    TemplateEncoding,
    /// A GGUF file was malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A GGUF file parsed but cannot be imported.
    #[error("import: {reason}")]
    Import {
        /// What was expected and found.
        reason: String,
    },
}

/// Where one tensor's bytes are and what they mean.
#[derive(Clone, Debug)]
struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the weights file.
    start: usize,
    end: usize,
    /// For `U8` block tensors: the block format and logical `(rows, cols)`.
    blocks: Option<(WeightFormat, usize, usize)>,
}

/// A verified model directory, held in memory.
pub struct ModelDir {
    path: PathBuf,
    manifest: Manifest,
    root: Hash,
    config: LlamaConfig,
    tokenizer: Tokenizer,
    chat_template: String,
    weights: Vec<u8>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for ModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDir")
            .field("path", &self.path)
            .field("name", &self.manifest.name)
            .field("root", &hex::encode(self.root))
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl ModelDir {
    /// Opens and verifies the model directory at `path` against its own manifest root.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::load(path.as_ref(), None)
    }

    /// Opens the directory and also requires its root to equal `expected_root` (the root
    /// the enclave was measured with).
    pub fn open_expecting(path: impl AsRef<Path>, expected_root: Hash) -> Result<Self, ModelError> {
        Self::load(path.as_ref(), Some(expected_root))
    }

    fn load(path: &Path, expected_root: Option<Hash>) -> Result<Self, ModelError> {
        let manifest_bytes = read_bounded(&path.join(MANIFEST_FILE), None, MAX_MANIFEST_BYTES)?;
        let manifest = Manifest::from_json(&manifest_bytes)?;
        for required in REQUIRED_FILES {
            if manifest.file(required).is_none() {
                return Err(ModelError::MissingFile { path: required });
            }
        }
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let bytes = read_bounded(&path.join(&entry.path), Some(entry.size), MAX_FILE_BYTES)?;
            files.insert(entry.path.clone(), bytes);
        }
        let root = verified_root(&manifest, &files, expected_root)?;
        let mut take = |name: &str| files.remove(name).unwrap_or_default();
        let config = LlamaConfig::from_json(&take(CONFIG_FILE))?;
        let tokenizer = Tokenizer::from_json(&take(TOKENIZER_FILE))?;
        let chat_template = String::from_utf8(take(CHAT_TEMPLATE_FILE))
            .map_err(|_| ModelError::TemplateEncoding)?;
        let weights = take(WEIGHTS_FILE);
        let tensors = index_tensors(&weights)?;
        let dir = Self {
            path: path.to_path_buf(),
            manifest,
            root,
            config,
            tokenizer,
            chat_template,
            weights,
            tensors,
        };
        dir.check_consistency()?;
        Ok(dir)
    }

    /// Cross-checks the files against each other (vocabulary sizes).
    fn check_consistency(&self) -> Result<(), ModelError> {
        let tokens = self.tokenizer.vocab_size();
        if tokens != self.config.vocab_size {
            return Err(ModelError::Tokenizer {
                reason: format!(
                    "expected {} tokens (config.json vocab_size), found {tokens}",
                    self.config.vocab_size
                ),
            });
        }
        Ok(())
    }

    /// The directory this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's short name from the manifest.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The verified model root hash.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template source (Jinja).
    pub fn chat_template(&self) -> &str {
        &self.chat_template
    }

    /// Whether a tensor of that name exists (for example `output.weight`).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The `(rows, cols)` weight matrix `name`, in its storage format (a copy).
    pub fn weight(&self, name: &str) -> Result<WeightMatrix, ModelError> {
        let entry = self.entry(name)?;
        let (format, rows, cols) = match (entry.blocks, entry.dtype, entry.shape.as_slice()) {
            (Some(layout), Dtype::U8, _) => layout,
            (None, Dtype::F32, &[rows, cols]) => (WeightFormat::F32, rows, cols),
            (None, Dtype::BF16, &[rows, cols]) => (WeightFormat::Bf16, rows, cols),
            _ => {
                return Err(tensor_error(
                    name,
                    "a matrix: 2-D F32/BF16, or U8 blocks with format and shape metadata",
                    format!("{:?} of shape {:?}", entry.dtype, entry.shape),
                ))
            }
        };
        let bytes = self.bytes(entry).to_vec();
        Ok(WeightMatrix::new(format, rows, cols, bytes)?)
    }

    /// The 1-D f32 tensor `name` (norm weights).
    pub fn f32_vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let entry = self.entry(name)?;
        if entry.dtype != Dtype::F32 || entry.shape.len() != 1 {
            return Err(tensor_error(
                name,
                "a 1-D F32 vector",
                format!("{:?} of shape {:?}", entry.dtype, entry.shape),
            ));
        }
        Ok(self
            .bytes(entry)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
            })
    }

    fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        // In range: index_tensors checked every range against the buffer.
        &self.weights[entry.start..entry.end]
    }
}

fn tensor_error(name: &str, expected: &str, found: String) -> ModelError {
    ModelError::Tensor {
        name: name.to_owned(),
        expected: expected.to_owned(),
        found,
    }
}

/// Reads a whole file, refusing one whose length differs from `expected` or exceeds `max`.
fn read_bounded(path: &Path, expected: Option<u64>, max: u64) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let found = file.metadata().map_err(io)?.len();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let limit = expected.unwrap_or(max).min(max);
    if expected.is_some_and(|e| e != found) || found > limit {
        return Err(ModelError::FileSize {
            path: name,
            expected: limit,
            found,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(found).unwrap_or(0));
    // One byte past the limit shows a file that grew since `metadata`.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    let read = bytes.len() as u64;
    if read > limit || expected.is_some_and(|e| e != read) {
        return Err(ModelError::FileSize {
            path: name,
            expected: limit,
            found: read,
        });
    }
    Ok(bytes)
}

/// Recomputes the root from the files' bytes (chunks in parallel) and compares it with
/// the manifest's root and the caller's.
fn verified_root(
    manifest: &Manifest,
    files: &BTreeMap<String, Vec<u8>>,
    expected_root: Option<Hash>,
) -> Result<Hash, ModelError> {
    let found = merkle::model_root(manifest.files.iter().map(|entry| {
        (
            entry.path.as_str(),
            files.get(&entry.path).map_or(&[][..], Vec::as_slice),
        )
    }));
    let claims = [
        (Some(manifest.root_bytes()?), "manifest.json"),
        (expected_root, "expected by the caller"),
    ];
    for (claim, source_of_expected) in claims {
        if let Some(expected) = claim {
            if expected != found {
                return Err(ModelError::RootMismatch {
                    source_of_expected,
                    expected: hex::encode(expected),
                    found: hex::encode(found),
                });
            }
        }
    }
    Ok(found)
}

/// Indexes `model.safetensors`: each tensor's byte range and, for block tensors, the
/// layout its metadata names.
fn index_tensors(weights: &[u8]) -> Result<BTreeMap<String, TensorEntry>, ModelError> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(weights).map_err(|e| ModelError::Safetensors {
            reason: e.to_string(),
        })?;
    let data_start = 8 + header_len;
    let extra = metadata.metadata().clone().unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let (start, end) = (data_start + start, data_start + end);
        if start > end || end > weights.len() {
            return Err(ModelError::Safetensors {
                reason: format!("tensor {name}: byte range {start}..{end} outside the file"),
            });
        }
        let blocks = match info.dtype {
            Dtype::U8 => Some(block_layout(&name, &info.shape, &extra)?),
            _ => None,
        };
        tensors.insert(
            name,
            TensorEntry {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
                blocks,
            },
        );
    }
    Ok(tensors)
}

/// Reads `format.NAME` and `shape.NAME` for a `U8` block tensor and checks them against
/// its stored `[rows, row_bytes]` shape.
fn block_layout(
    name: &str,
    stored: &[usize],
    extra: &std::collections::HashMap<String, String>,
) -> Result<(WeightFormat, usize, usize), ModelError> {
    let format_text = extra.get(&format!("format.{name}")).map(String::as_str);
    let format = match format_text {
        Some("q4_1") => WeightFormat::Q4_1,
        Some("q8_0") => WeightFormat::Q8_0,
        other => {
            return Err(tensor_error(
                name,
                "metadata format.NAME of q4_1 or q8_0",
                format!("{other:?}"),
            ))
        }
    };
    let shape_text = extra.get(&format!("shape.{name}")).map(String::as_str);
    let (rows, cols) = shape_text.and_then(parse_rows_cols).ok_or_else(|| {
        tensor_error(
            name,
            "metadata shape.NAME of \"ROWS,COLS\"",
            format!("{shape_text:?}"),
        )
    })?;
    let row_bytes = format.row_bytes(cols)?;
    if stored != [rows, row_bytes] {
        return Err(tensor_error(
            name,
            &format!("stored shape [{rows}, {row_bytes}] for {rows}x{cols} {format_text:?}"),
            format!("{stored:?}"),
        ));
    }
    Ok((format, rows, cols))
}

/// Parses `"ROWS,COLS"`.
pub(crate) fn parse_rows_cols(text: &str) -> Option<(usize, usize)> {
    let (rows, cols) = text.split_once(',')?;
    Some((rows.trim().parse().ok()?, cols.trim().parse().ok()?))
}
