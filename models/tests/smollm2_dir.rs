//! The imported SmolLM2-135M-Instruct directory: verification, shapes, tokenizer.
//!
//! Needs the real model: `cargo xtask fetch-model smollm2-135m` (it lands under
//! `$CHRYSALIS_HOME/models/smollm2-135m`, by default `~/.cache/chrysalis`).

use std::path::PathBuf;

use chrysalis_kernels::WeightFormat;
use chrysalis_models::ModelDir;

fn chrysalis_home() -> PathBuf {
    std::env::var_os("CHRYSALIS_HOME").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache").join("chrysalis")
        },
        PathBuf::from,
    )
}

fn model() -> ModelDir {
    let dir = chrysalis_home().join("models").join("smollm2-135m");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} is missing: run `cargo xtask fetch-model smollm2-135m` first",
        dir.display()
    );
    ModelDir::open(&dir).expect("the imported model verifies")
}

/// The reference prompt and its ids, from the fixture llama.cpp produced.
fn fixture() -> (String, Vec<u32>) {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        here.join("tests/data/capital_of_france.f32.json"),
        here.join("../../shared/fixtures/smollm2/capital_of_france.f32.json"),
    ];
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .expect("capital_of_france.f32.json fixture");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON");
    let ids = v["prompt_token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    (v["prompt"].as_str().expect("prompt").to_owned(), ids)
}

#[test]
fn tokenizer_reproduces_llama_cpp_prompt_ids_and_round_trips() {
    let dir = model();
    let (prompt, expected) = fixture();
    let ids = dir.tokenizer().encode(&prompt).expect("encodes");
    assert_eq!(ids, expected);
    assert_eq!(
        dir.tokenizer().decode(&ids, false).expect("decodes"),
        prompt
    );
    assert_eq!(dir.tokenizer().token_id("<|im_end|>"), Some(2));
    let text = "Numbers 12345, ünïcödé, emoji 🦀, and   spaces\n\ttabs.";
    let ids = dir.tokenizer().encode(text).expect("encodes");
    assert_eq!(dir.tokenizer().decode(&ids, false).expect("decodes"), text);
}

#[test]
fn config_and_shapes_match_the_published_architecture() {
    let dir = model();
    let c = dir.config();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads
        ),
        (30, 576, 1536, 9)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.vocab_size),
        (3, 64, 49152)
    );
    assert_eq!(
        (c.rope_theta, c.rms_norm_eps, c.max_position_embeddings),
        (100000.0, 1e-5, 8192)
    );
    assert_eq!(
        (c.bos_token_id, c.eos_token_id, c.add_bos_token),
        (1, 2, false)
    );
    assert!(c.tie_word_embeddings && !dir.has_tensor("output.weight"));
    let shapes = [
        ("token_embd.weight", WeightFormat::Q8_0, 49152, 576),
        ("blk.0.attn_q.weight", WeightFormat::Q4_1, 576, 576),
        ("blk.0.attn_k.weight", WeightFormat::Q4_1, 192, 576),
        ("blk.29.ffn_down.weight", WeightFormat::Q4_1, 576, 1536),
        ("blk.29.ffn_up.weight", WeightFormat::Q4_1, 1536, 576),
    ];
    for (name, format, rows, cols) in shapes {
        let w = dir.weight(name).expect(name);
        assert_eq!(
            (w.format(), w.rows(), w.cols()),
            (format, rows, cols),
            "{name}"
        );
    }
    assert_eq!(
        dir.f32_vector("output_norm.weight").expect("norm").len(),
        576
    );
    assert!(dir.chat_template().contains("<|im_start|>"));
}

#[test]
fn weights_are_the_gguf_blocks_byte_for_byte() {
    let dir = model();
    let gguf_path = chrysalis_home().join("gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&gguf_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo xtask fetch-model smollm2-135m`",
            gguf_path.display()
        )
    });
    let gguf = chrysalis_models::gguf::Gguf::parse(&bytes).expect("GGUF parses");
    for name in [
        "token_embd.weight",
        "blk.7.ffn_down.weight",
        "blk.0.attn_v.weight",
    ] {
        let original = gguf.tensor_bytes(gguf.tensor(name).expect(name));
        assert_eq!(dir.weight(name).expect(name).data(), original, "{name}");
    }
}
