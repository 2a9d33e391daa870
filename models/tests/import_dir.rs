//! GGUF import and model-directory loading on a small synthetic Llama written by the
//! test itself (runs without the real model; `smollm2_dir.rs` covers the real one).

use std::path::Path;

use chrysalis_kernels::WeightFormat;
use chrysalis_models::dir::{ModelError, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use chrysalis_models::gguf::write::{encode, Tensor};
use chrysalis_models::gguf::{Array, GgmlType, Gguf, Value};
use chrysalis_models::import::{import_gguf, Progress};
use chrysalis_models::manifest::Manifest;
use chrysalis_models::{ModelDir, RopeLayout};

const HIDDEN: u64 = 64;
const FFN: u64 = 96;
const KV: u64 = 32;
const LAYERS: usize = 2;
const TOKENS: [&str; 7] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "a",
    "b",
    "ab",
    "Ġ",
];
const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}";

fn metadata() -> Vec<(&'static str, Value)> {
    let s = |v: &str| Value::String(v.to_owned());
    vec![
        ("general.architecture", s("llama")),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.rope.dimension_count", Value::U32(32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(TOKENS.len() as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(
                TOKENS.iter().map(|t| (*t).to_owned()).collect(),
            )),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 3, 3, 1, 1, 1, 1])),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(Array::String(vec!["a b".into()])),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", s(TEMPLATE)),
    ]
}

/// `(name, dims innermost first, type)` of every tensor of the tiny model.
fn tensor_specs() -> Vec<(String, Vec<u64>, GgmlType)> {
    let mut specs = vec![
        (
            "token_embd.weight".to_owned(),
            vec![HIDDEN, TOKENS.len() as u64],
            GgmlType::Q8_0,
        ),
        ("output_norm.weight".to_owned(), vec![HIDDEN], GgmlType::F32),
    ];
    for i in 0..LAYERS {
        let layer: [(&str, Vec<u64>, GgmlType); 9] = [
            ("attn_norm", vec![HIDDEN], GgmlType::F32),
            ("attn_q", vec![HIDDEN, HIDDEN], GgmlType::Q4_1),
            ("attn_k", vec![HIDDEN, KV], GgmlType::F16),
            ("attn_v", vec![HIDDEN, KV], GgmlType::Q4_1),
            ("attn_output", vec![HIDDEN, HIDDEN], GgmlType::Q4_1),
            ("ffn_norm", vec![HIDDEN], GgmlType::F32),
            ("ffn_gate", vec![HIDDEN, FFN], GgmlType::Q4_1),
            ("ffn_up", vec![HIDDEN, FFN], GgmlType::Q4_1),
            // GGUF dims [FFN, HIDDEN]: HIDDEN rows (outputs) of FFN inputs.
            ("ffn_down", vec![FFN, HIDDEN], GgmlType::Q4_1),
        ];
        specs.extend(
            layer
                .into_iter()
                .map(|(n, d, t)| (format!("blk.{i}.{n}.weight"), d, t)),
        );
    }
    specs
}

/// Deterministic bytes for a tensor; f16 data holds small finite values.
fn tensor_data(index: usize, dims: &[u64], ggml_type: GgmlType) -> Vec<u8> {
    let (block_len, block_bytes) = ggml_type.block();
    let elements: u64 = dims.iter().product();
    let len = (elements / block_len * block_bytes) as usize;
    match ggml_type {
        GgmlType::F16 => (0..len / 2)
            .flat_map(|i| half::f16::from_f32((i as f32 - 7.0) / 8.0).to_le_bytes())
            .collect(),
        GgmlType::F32 => (0..len / 4)
            .flat_map(|i| (i as f32 * 0.25 + index as f32).to_le_bytes())
            .collect(),
        _ => (0..len).map(|i| (i * 31 + index * 7) as u8).collect(),
    }
}

fn tiny_gguf(specs: &[(String, Vec<u64>, GgmlType)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, dims, t))| tensor_data(i, dims, *t))
        .collect();
    let tensors: Vec<Tensor<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((name, dims, t), bytes)| Tensor {
            name,
            dims: dims.clone(),
            ggml_type: *t,
            data: bytes,
        })
        .collect();
    encode(&metadata(), &tensors)
}

fn import_into(dir: &Path, gguf: &[u8]) -> Result<Manifest, ModelError> {
    let mut stages = Vec::new();
    let result = import_gguf(gguf, "tiny", dir, &mut |p: Progress| stages.push(p.stage));
    if result.is_ok() {
        assert!(stages.contains(&"converting") && stages.contains(&"writing"));
    }
    result
}

fn imported() -> (tempfile::TempDir, Vec<u8>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let gguf = tiny_gguf(&tensor_specs());
    import_into(&tmp.path().join("m"), &gguf).expect("import");
    (tmp, gguf)
}

#[test]
fn import_keeps_blocks_and_orients_matrices_rows_as_outputs() {
    let (tmp, gguf_bytes) = imported();
    let gguf = Gguf::parse(&gguf_bytes).expect("parses");
    let dir = ModelDir::open(tmp.path().join("m")).expect("opens");

    let down = dir.weight("blk.1.ffn_down.weight").expect("ffn_down");
    assert_eq!(
        (down.format(), down.rows(), down.cols()),
        (WeightFormat::Q4_1, 64, 96)
    );
    let gate = dir.weight("blk.0.ffn_gate.weight").expect("ffn_gate");
    assert_eq!((gate.rows(), gate.cols()), (96, 64));
    for name in [
        "blk.1.ffn_down.weight",
        "token_embd.weight",
        "blk.0.attn_v.weight",
    ] {
        let original = gguf.tensor_bytes(gguf.tensor(name).expect(name));
        assert_eq!(
            dir.weight(name).expect(name).data(),
            original,
            "{name} bytes"
        );
    }
    let embd = dir.weight("token_embd.weight").expect("embd");
    assert_eq!(
        (embd.format(), embd.rows(), embd.cols()),
        (WeightFormat::Q8_0, 7, 64)
    );

    let k = dir.weight("blk.0.attn_k.weight").expect("attn_k");
    assert_eq!(
        (k.format(), k.rows(), k.cols()),
        (WeightFormat::F32, 32, 64)
    );
    let k0 = f32::from_le_bytes(k.data()[..4].try_into().expect("4 bytes"));
    assert_eq!(k0, -7.0 / 8.0, "f16 widened exactly");

    let norm = dir.f32_vector("blk.1.ffn_norm.weight").expect("norm");
    let original = gguf.tensor_bytes(gguf.tensor("blk.1.ffn_norm.weight").expect("norm"));
    let expected: Vec<f32> = original
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(norm, expected);
    assert!(!dir.has_tensor("output.weight"));
}

#[test]
fn config_tokenizer_and_template_come_from_metadata() {
    let (tmp, _) = imported();
    let dir = ModelDir::open(tmp.path().join("m")).expect("opens");
    let c = dir.config();
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads
        ),
        (64, 96, 2, 2)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.vocab_size),
        (1, 32, 7)
    );
    assert_eq!((c.bos_token_id, c.eos_token_id), (1, 2));
    assert_eq!(c.stop_token_ids, vec![0, 2], "EOS and <|endoftext|>");
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_layout, RopeLayout::Normal);
    assert_eq!(dir.chat_template(), TEMPLATE);
    let t = dir.tokenizer();
    assert_eq!(
        t.encode("<|im_start|>ab a<|im_end|>").expect("encodes"),
        vec![1, 5, 6, 3, 2]
    );
    assert_eq!(
        t.decode(&[1, 5, 6, 3, 2], false).expect("decodes"),
        "<|im_start|>ab a<|im_end|>"
    );
    assert_eq!(hex::encode(dir.root()), dir.manifest().root);
}

#[test]
fn a_flipped_byte_in_any_file_is_refused() {
    let (tmp, _) = imported();
    let src = tmp.path().join("m");
    for file in [
        WEIGHTS_FILE,
        CONFIG_FILE,
        TOKENIZER_FILE,
        "chat_template.jinja",
    ] {
        let copy = tmp.path().join(format!("copy-{file}"));
        copy_dir(&src, &copy);
        let path = copy.join(file);
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&path, bytes).expect("write");
        let err = ModelDir::open(&copy).expect_err(file);
        assert!(
            matches!(
                err,
                ModelError::RootMismatch {
                    source_of_expected: "manifest.json",
                    ..
                }
            ),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_root_other_than_the_expected_one_is_refused() {
    let (tmp, _) = imported();
    let dir = tmp.path().join("m");
    let root = ModelDir::open(&dir).expect("opens").root();
    ModelDir::open_expecting(&dir, root).expect("same root opens");
    let mut other = root;
    other[31] ^= 1;
    let err = ModelDir::open_expecting(&dir, other).expect_err("other root");
    assert!(err.to_string().contains("expected by the caller"), "{err}");
}

#[test]
fn manifest_mismatches_are_named() {
    let (tmp, _) = imported();
    let src = tmp.path().join("m");
    let manifest_path = |d: &Path| d.join("manifest.json");
    let read = |d: &Path| {
        Manifest::from_json(&std::fs::read(manifest_path(d)).expect("read")).expect("valid")
    };

    let missing = tmp.path().join("missing");
    copy_dir(&src, &missing);
    let mut m = read(&missing);
    m.files.retain(|f| f.path != TOKENIZER_FILE);
    std::fs::write(manifest_path(&missing), m.to_json()).expect("write");
    let err = ModelDir::open(&missing).expect_err("missing tokenizer");
    assert!(
        matches!(
            err,
            ModelError::MissingFile {
                path: TOKENIZER_FILE
            }
        ),
        "{err}"
    );

    let grown = tmp.path().join("grown");
    copy_dir(&src, &grown);
    let mut config = std::fs::read(grown.join(CONFIG_FILE)).expect("read");
    config.push(b'\n');
    std::fs::write(grown.join(CONFIG_FILE), config).expect("write");
    let err = ModelDir::open(&grown).expect_err("grown config");
    assert!(matches!(err, ModelError::FileSize { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn import_refuses_wrong_shapes_and_unsupported_types() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut specs = tensor_specs();
    let q = specs
        .iter_mut()
        .find(|s| s.0 == "blk.0.attn_q.weight")
        .expect("attn_q");
    q.1 = vec![HIDDEN, KV];
    let err = import_into(&tmp.path().join("a"), &tiny_gguf(&specs)).expect_err("bad shape");
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
    assert!(err.to_string().contains("[64, 64]"), "{err}");

    let mut specs = tensor_specs();
    specs.push(("extra.weight".to_owned(), vec![256], GgmlType::Q4_K));
    let err = import_into(&tmp.path().join("b"), &tiny_gguf(&specs)).expect_err("Q4_K");
    assert!(
        err.to_string().contains("extra.weight") && err.to_string().contains("Q4_K"),
        "{err}"
    );

    let mut specs = tensor_specs();
    specs.retain(|s| s.0 != "blk.1.ffn_norm.weight");
    let err = import_into(&tmp.path().join("c"), &tiny_gguf(&specs)).expect_err("missing");
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// The bytes of every file in `dir`, by name.
fn dir_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read model dir")
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read file"))
        })
        .collect()
}

#[test]
fn imports_of_one_gguf_are_byte_identical_with_sorted_metadata() {
    // Each import builds its maps afresh, so a hash-map order anywhere in the output
    // shows up as differing bytes across these imports.
    let gguf = tiny_gguf(&tensor_specs());
    let tmp = tempfile::tempdir().expect("temp dir");
    let first = tmp.path().join("import-0");
    import_into(&first, &gguf).expect("import");
    let reference = dir_bytes(&first);
    for run in 1..8 {
        let dir = tmp.path().join(format!("import-{run}"));
        import_into(&dir, &gguf).expect("import");
        assert_eq!(
            dir_bytes(&dir),
            reference,
            "import {run} differs from import 0"
        );
    }

    let weights = &reference[WEIGHTS_FILE];
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let written = serde_json::to_string(&header["__metadata__"]).unwrap();
    let keys: Vec<&str> = header["__metadata__"]
        .as_object()
        .expect("__metadata__ object")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.len() >= 2,
        "the tiny model has quantized tensors: {written}"
    );
    // The raw header text holds the keys in sorted order.
    let raw = std::str::from_utf8(&weights[8..8 + header_len]).unwrap();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| raw.find(&format!("\"{k}\"")).unwrap())
        .collect();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort_unstable();
    let mut by_position: Vec<(usize, &str)> = positions.into_iter().zip(keys).collect();
    by_position.sort_unstable();
    let in_file: Vec<&str> = by_position.into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        in_file, sorted_keys,
        "__metadata__ keys are not sorted in the file"
    );
}
