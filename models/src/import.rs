//! GGUF to model directory: the importer behind `cargo xtask fetch-model`.
//!
//! Quantized tensors keep their GGML blocks byte for byte (no re-quantization, so the
//! engine computes with exactly the weights llama.cpp uses); `F16` tensors widen to
//! `F32` exactly; names stay GGUF's. GGUF lists a matrix's dimensions innermost first, so
//! a tensor with dims `[cols, rows]` becomes the `(rows, cols)` matrix whose rows are
//! output features: `blk.0.ffn_down.weight`, dims `[1536, 576]`, is 576 rows of 1536.
//! The layout written is documented in [`crate::dir`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use chrysalis_kernels::WeightFormat;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::config::{LlamaConfig, RopeLayout};
use crate::dir::{ModelError, CHAT_TEMPLATE_FILE, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::gguf::{Array, GgmlType, Gguf, TensorInfo, Value};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::tokenizer::{self, GgufVocab, Tokenizer};

/// Texts of tokens that end a turn, as llama.cpp collects its end-of-generation set.
const END_OF_TURN_TOKENS: [&str; 6] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
];

/// Where an import is, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done.
    pub stage: &'static str,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// Imports the GGUF file `gguf_bytes` as model `name` into `out_dir` (created; must not
/// hold a previous import). Returns the manifest written. `progress` sees each stage.
pub fn import_gguf(
    gguf_bytes: &[u8],
    name: &str,
    out_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, ModelError> {
    let gguf = Gguf::parse(gguf_bytes)?;
    let mut config = llama_config(&gguf)?;
    let tokenizer = Tokenizer::from_inner(tokenizer::build_from_gguf(&gguf_vocab(&gguf)?)?);
    config.stop_token_ids = stop_tokens(&tokenizer, config.eos_token_id);
    config.validate()?;
    check_llama_tensors(&gguf, &config)?;
    let weights = safetensors_bytes(&gguf, progress)?;
    let template = gguf.require_str("tokenizer.chat_template")?.to_owned();
    let config_json =
        serde_json::to_string_pretty(&config).map_err(|e| import_error(e.to_string()))?;
    let tokenizer_json = tokenizer.to_json()?;
    let files: [(&str, &[u8]); 4] = [
        (CHAT_TEMPLATE_FILE, template.as_bytes()),
        (CONFIG_FILE, config_json.as_bytes()),
        (TOKENIZER_FILE, tokenizer_json.as_bytes()),
        (WEIGHTS_FILE, &weights),
    ];
    progress(Progress {
        stage: "hashing",
        done: 0,
        total: 1,
    });
    let manifest = Manifest::build(name, &files);
    progress(Progress {
        stage: "hashing",
        done: 1,
        total: 1,
    });
    write_files(out_dir, &files, &manifest, progress)?;
    Ok(manifest)
}

fn import_error(reason: String) -> ModelError {
    ModelError::Import { reason }
}

/// Creates `out_dir` and writes every file, synced, manifest last.
fn write_files(
    out_dir: &Path,
    files: &[(&str, &[u8])],
    manifest: &Manifest,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ModelError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let manifest_json = manifest.to_json();
    let all = files
        .iter()
        .copied()
        .chain([(MANIFEST_FILE, manifest_json.as_bytes())]);
    let total = files.len() as u64 + 1;
    for (done, (name, bytes)) in (1u64..).zip(all) {
        let path = out_dir.join(name);
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        progress(Progress {
            stage: "writing",
            done,
            total,
        });
    }
    Ok(())
}

/// The Llama hyper-parameters from `{arch}.*` and `tokenizer.ggml.*` metadata.
pub fn llama_config(gguf: &Gguf<'_>) -> Result<LlamaConfig, ModelError> {
    let arch = gguf.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(import_error(format!(
            "general.architecture: expected \"llama\", found {arch:?}"
        )));
    }
    let int = |key: &str| -> Result<usize, ModelError> {
        let value = gguf.require_u64(&format!("llama.{key}"))?;
        usize::try_from(value).map_err(|_| import_error(format!("llama.{key}: {value} too large")))
    };
    let hidden_size = int("embedding_length")?;
    let num_attention_heads = int("attention.head_count")?;
    let num_key_value_heads =
        int("attention.head_count_kv").or_else(|_| int("attention.head_count"))?;
    let head_dim = int("attention.key_length")
        .or_else(|_| int("rope.dimension_count"))
        .unwrap_or(hidden_size / num_attention_heads.max(1));
    let tokens = gguf.require_strings("tokenizer.ggml.tokens")?.len();
    let vocab_size = int("vocab_size").unwrap_or(tokens);
    if vocab_size != tokens {
        return Err(import_error(format!(
            "llama.vocab_size: expected {tokens} (the number of tokenizer.ggml.tokens), found {vocab_size}"
        )));
    }
    let token_id = |key: &str| -> Result<u32, ModelError> {
        let value = gguf.require_u64(key)?;
        u32::try_from(value).map_err(|_| import_error(format!("{key}: {value} is not a token id")))
    };
    let eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
    Ok(LlamaConfig {
        architectures: vec!["LlamaForCausalLM".to_owned()],
        model_type: "llama".to_owned(),
        hidden_size,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: gguf.require_f64("llama.attention.layer_norm_rms_epsilon")? as f32,
        rope_theta: gguf.require_f64("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        rope_layout: RopeLayout::Normal,
        vocab_size,
        max_position_embeddings: int("context_length")?,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id,
        add_bos_token: gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        stop_token_ids: vec![eos_token_id],
        tie_word_embeddings: gguf.tensor("output.weight").is_none(),
        hidden_act: "silu".to_owned(),
    })
}

/// The GGUF vocabulary fields the tokenizer builder needs.
fn gguf_vocab(gguf: &Gguf<'_>) -> Result<GgufVocab, ModelError> {
    let token_types = match gguf.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(Value::Array(Array::I32(types))) => types.clone(),
        Some(_) => {
            return Err(import_error(
                "tokenizer.ggml.token_type: expected an array of i32".to_owned(),
            ))
        }
    };
    Ok(GgufVocab {
        model: gguf.require_str("tokenizer.ggml.model")?.to_owned(),
        pre: gguf
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned(),
        tokens: gguf.require_strings("tokenizer.ggml.tokens")?.to_vec(),
        token_types,
        merges: gguf.require_strings("tokenizer.ggml.merges")?.to_vec(),
    })
}

/// EOS plus every end-of-turn token the vocabulary has, sorted.
fn stop_tokens(tokenizer: &Tokenizer, eos: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = END_OF_TURN_TOKENS
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .chain([eos])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Checks that every tensor the Llama forward pass reads is present with the shape the
/// config implies, so a bad file fails at import rather than at the first token.
fn check_llama_tensors(gguf: &Gguf<'_>, c: &LlamaConfig) -> Result<(), ModelError> {
    let (h, ff, q, kv, vocab) = (
        c.hidden_size,
        c.intermediate_size,
        c.q_dim(),
        c.kv_dim(),
        c.vocab_size,
    );
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, h]),
        ("output_norm.weight".into(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        expected.push(("output.weight".into(), vec![vocab, h]));
    }
    for i in 0..c.num_hidden_layers {
        let per_layer: [(&str, Vec<usize>); 9] = [
            ("attn_norm", vec![h]),
            ("attn_q", vec![q, h]),
            ("attn_k", vec![kv, h]),
            ("attn_v", vec![kv, h]),
            ("attn_output", vec![h, q]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![ff, h]),
            ("ffn_up", vec![ff, h]),
            ("ffn_down", vec![h, ff]),
        ];
        expected.extend(
            per_layer
                .into_iter()
                .map(|(n, s)| (format!("blk.{i}.{n}.weight"), s)),
        );
    }
    for (name, shape) in expected {
        let tensor = gguf
            .tensor(&name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        let found = logical_shape(tensor);
        if found != shape {
            return Err(ModelError::Tensor {
                name,
                expected: format!("logical shape {shape:?} (rows = outputs, cols = inputs)"),
                found: format!("{found:?} (GGUF dims {:?})", tensor.dims),
            });
        }
    }
    Ok(())
}

/// Outermost-first shape: GGUF dims reversed (`[cols, rows]` becomes `[rows, cols]`).
/// Dims were bounded by the file's length when parsed, so they fit in `usize`.
fn logical_shape(tensor: &TensorInfo) -> Vec<usize> {
    tensor.dims.iter().rev().map(|&d| d as usize).collect()
}

/// One tensor converted for safetensors: dtype, stored shape, bytes.
struct Converted<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// Serializes every tensor of the GGUF file, with the block-layout metadata.
fn safetensors_bytes(
    gguf: &Gguf<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<u8>, ModelError> {
    let total = gguf.tensors.len() as u64;
    let mut metadata = BTreeMap::new();
    let mut converted = Vec::with_capacity(gguf.tensors.len());
    for (done, tensor) in (1u64..).zip(&gguf.tensors) {
        converted.push(convert(gguf, tensor, &mut metadata)?);
        progress(Progress {
            stage: "converting",
            done,
            total,
        });
    }
    let views = converted
        .iter()
        .map(|c| {
            TensorView::new(c.dtype, c.shape.clone(), &c.data)
                .map(|view| (c.name.clone(), view))
                .map_err(|e| import_error(format!("tensor {}: {e}", c.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hashed: HashMap<String, String> = metadata.clone().into_iter().collect();
    let mut bytes = safetensors::serialize(views, Some(hashed))
        .map_err(|e| import_error(format!("writing model.safetensors: {e}")))?;
    canonicalize_metadata(&mut bytes, &metadata)?;
    Ok(bytes)
}

/// Rewrites the header's `__metadata__` object with its keys sorted.
///
/// `safetensors::serialize` takes the metadata as a `HashMap` and writes it in that map's
/// iteration order, which is random per process, so two imports of one GGUF gave two
/// files and two model roots (and no fresh machine could rebuild the published launch
/// digest, which has the root on its measured command line). The sorted object holds the
/// same entries, so it has the same length and replaces the unordered one in place; the
/// span is checked to hold exactly those entries first.
fn canonicalize_metadata(
    bytes: &mut [u8],
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let sorted = serde_json::to_vec(metadata).map_err(|e| import_error(e.to_string()))?;
    let start = 8 + PREFIX.len();
    let span = bytes
        .get(8..start + sorted.len())
        .filter(|head| head.starts_with(PREFIX))
        .map(|head| &head[PREFIX.len()..])
        .ok_or_else(|| {
            import_error("safetensors header does not start with __metadata__".to_owned())
        })?;
    let written: BTreeMap<String, String> = serde_json::from_slice(span).map_err(|e| {
        import_error(format!(
            "safetensors __metadata__ is not where expected: {e}"
        ))
    })?;
    if written != *metadata {
        return Err(import_error(
            "safetensors __metadata__ does not hold the entries written".to_owned(),
        ));
    }
    bytes[start..start + sorted.len()].copy_from_slice(&sorted);
    Ok(())
}

/// Converts one tensor, recording block layouts in `metadata`.
fn convert<'a>(
    gguf: &Gguf<'a>,
    tensor: &TensorInfo,
    metadata: &mut BTreeMap<String, String>,
) -> Result<Converted<'a>, ModelError> {
    let bytes = gguf.tensor_bytes(tensor);
    let shape = logical_shape(tensor);
    let name = tensor.name.clone();
    let (dtype, shape, data) = match tensor.ggml_type {
        GgmlType::F32 => (Dtype::F32, shape, Cow::Borrowed(bytes)),
        GgmlType::BF16 => (Dtype::BF16, shape, Cow::Borrowed(bytes)),
        GgmlType::F16 => (Dtype::F32, shape, Cow::Owned(f16_to_f32_bytes(bytes))),
        GgmlType::Q4_1 | GgmlType::Q8_0 => {
            let (format, label) = match tensor.ggml_type {
                GgmlType::Q4_1 => (WeightFormat::Q4_1, "q4_1"),
                _ => (WeightFormat::Q8_0, "q8_0"),
            };
            let (rows, cols) = tensor.rows_cols();
            // Bounded by the file's length when parsed.
            let (rows, cols) = (rows as usize, cols as usize);
            let row_bytes = format.row_bytes(cols)?;
            metadata.insert(format!("format.{name}"), label.to_owned());
            metadata.insert(format!("shape.{name}"), format!("{rows},{cols}"));
            (Dtype::U8, vec![rows, row_bytes], Cow::Borrowed(bytes))
        }
        other => {
            return Err(ModelError::Tensor {
                name,
                expected: "GGML type F32, F16, BF16, Q4_1 or Q8_0".to_owned(),
                found: format!("{other:?}"),
            })
        }
    };
    Ok(Converted {
        name,
        dtype,
        shape,
        data,
    })
}

/// Widens little-endian f16 values to little-endian f32, exactly.
fn f16_to_f32_bytes(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(2)
        .flat_map(|b| {
            half::f16::from_le_bytes([b[0], b[1]])
                .to_f32()
                .to_le_bytes()
        })
        .collect()
}
