//! `config.json`: the Llama hyper-parameters, in Hugging Face's field names.
//!
//! Two fields are ours: `rope_layout` says how Q/K weight rows pair up for RoPE
//! (`"normal"`: adjacent pairs `(2i, 2i+1)`, which is how GGUF stores llama Q/K after
//! llama.cpp's permutation; `"neox"`: halves `(i, i + head_dim/2)`, Hugging Face's
//! layout), and `stop_token_ids` lists every token that ends generation (the EOS token
//! and the model's other end-of-turn tokens, as llama.cpp's end-of-generation set).

use serde::{Deserialize, Serialize};

use crate::dir::ModelError;

/// How query/key rows pair up for rotary position embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i + 1)` within each head (GGUF llama, llama.cpp "normal").
    Normal,
    /// Split halves `(i, i + head_dim / 2)` (Hugging Face, llama.cpp "neox").
    Neox,
}

/// Hyper-parameters of a Llama-architecture model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Always `["LlamaForCausalLM"]` for this architecture.
    pub architectures: Vec<String>,
    /// `"llama"`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Elements per attention head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Which RoPE pairing the Q/K weights expect.
    pub rope_layout: RopeLayout,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token.
    pub bos_token_id: u32,
    /// End-of-sequence token.
    pub eos_token_id: u32,
    /// Whether the tokenizer prepends BOS itself (SmolLM2: no; the template does).
    pub add_bos_token: bool,
    /// Every token id that ends generation (includes `eos_token_id`).
    pub stop_token_ids: Vec<u32>,
    /// Whether the output projection reuses `token_embd.weight` (no `output.weight`).
    pub tie_word_embeddings: bool,
    /// Activation of the gated feed-forward layer: `"silu"`.
    pub hidden_act: String,
}

/// Upper bounds on sizes read from a config, so a hostile file cannot ask for
/// absurd allocations before the weights are even looked at.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1 << 12;
const MAX_VOCAB: usize = 1 << 24;
const MAX_CONTEXT: usize = 1 << 24;

impl LlamaConfig {
    /// Parses and checks `config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| ModelError::Json {
            file: "config.json",
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes are consistent and within bounds.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bounded = [
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_DIM),
            ("num_key_value_heads", self.num_key_value_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_CONTEXT,
            ),
        ];
        for (field, value, max) in bounded {
            if value == 0 || value > max {
                return Err(ModelError::Config {
                    field,
                    reason: format!("expected 1..={max}, found {value}"),
                });
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ModelError::Config {
                field: "num_key_value_heads",
                reason: format!(
                    "expected a divisor of num_attention_heads ({}), found {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::Config {
                field: "head_dim",
                reason: format!("RoPE needs an even head_dim, found {}", self.head_dim),
            });
        }
        let vocab = self.vocab_size;
        let ids = [self.bos_token_id, self.eos_token_id]
            .into_iter()
            .chain(self.stop_token_ids.iter().copied());
        for id in ids {
            if id as usize >= vocab {
                return Err(ModelError::Config {
                    field: "token ids",
                    reason: format!("token id {id} outside the vocabulary of {vocab}"),
                });
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(ModelError::Config {
                field: "rms_norm_eps",
                reason: format!("expected a positive number, found {}", self.rms_norm_eps),
            });
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::Config {
                field: "rope_theta",
                reason: format!("expected a positive number, found {}", self.rope_theta),
            });
        }
        Ok(())
    }

    /// Query projection output width: `num_attention_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Key/value projection output width: `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}
