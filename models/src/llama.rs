//! The Llama architecture: RMSNorm, RoPE, grouped-query attention, SwiGLU.
//!
//! One [`Llama::forward`] runs a batch of sequences at once: the new tokens of every
//! sequence are stacked into one activation matrix, so each weight is multiplied once
//! per step for the whole batch; only attention runs per sequence, against that
//! sequence's own [`KvCache`]. Sequences of any lengths can share a step (a prompt being
//! prefilled next to others decoding one token), and callers own the caches, so
//! sequences join and leave between steps by creating and dropping caches.
//!
//! All numerical work goes through a [`Backend`]; this file only orders the calls and
//! keeps the shapes, in the spirit of llama2.c's `forward()`.

use std::sync::Arc;

use chrysalis_kernels::{AttentionShape, Backend, KernelError, WeightFormat, WeightMatrix};

use crate::config::{LlamaConfig, RopeLayout};
use crate::dir::{ModelDir, ModelError};
use crate::kv_cache::{self, AttentionScratch, KvCache, KvCacheError};

/// Why a model could not be built or a forward step could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// Reading the model directory failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A kernel refused its operands.
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// A sequence's cache has no room for the step.
    #[error(transparent)]
    Cache(#[from] KvCacheError),
    /// A weight matrix has the wrong shape for the config.
    #[error("weight {name}: expected {expected_rows}x{expected_cols}, found {rows}x{cols}")]
    WeightShape {
        /// Tensor name.
        name: String,
        /// Rows the config implies.
        expected_rows: usize,
        /// Columns the config implies.
        expected_cols: usize,
        /// Rows found.
        rows: usize,
        /// Columns found.
        cols: usize,
    },
    /// A norm weight vector has the wrong length.
    #[error("norm {name}: expected {expected} values, found {found}")]
    NormLength {
        /// Tensor name.
        name: String,
        /// Length the config implies.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// The config asks for something this implementation does not do.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A sequence in the batch has no new tokens.
    #[error("batch entry {index} has no tokens: every sequence in a step needs at least one")]
    EmptyStep {
        /// Position of the entry in the batch.
        index: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {token} outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id found.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A cache made for a different model shape was passed in.
    #[error(
        "cache for {layers} layers of width {kv_dim}: expected {expected_layers} layers of width {expected_kv_dim}"
    )]
    CacheShape {
        /// Layers of the cache.
        layers: usize,
        /// Width of the cache.
        kv_dim: usize,
        /// Layers of the model.
        expected_layers: usize,
        /// Width of the model's keys and values.
        expected_kv_dim: usize,
    },
}

/// Weights of one transformer block.
#[derive(Debug)]
pub struct LlamaLayer {
    /// RMSNorm before attention, `(dim,)`.
    pub attn_norm: Vec<f32>,
    /// Query projection `(q_dim, dim)`.
    pub wq: WeightMatrix,
    /// Key projection `(kv_dim, dim)`.
    pub wk: WeightMatrix,
    /// Value projection `(kv_dim, dim)`.
    pub wv: WeightMatrix,
    /// Attention output projection `(dim, q_dim)`.
    pub wo: WeightMatrix,
    /// RMSNorm before the feed-forward block, `(dim,)`.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate `(hidden, dim)`.
    pub w_gate: WeightMatrix,
    /// SwiGLU up projection `(hidden, dim)`.
    pub w_up: WeightMatrix,
    /// Down projection `(dim, hidden)`.
    pub w_down: WeightMatrix,
}

/// All weights of a Llama model, named after their GGUF tensors.
#[derive(Debug)]
pub struct LlamaWeights {
    /// Token embeddings `(vocab, dim)`; also the output head when tied.
    pub token_embd: WeightMatrix,
    /// Transformer blocks, first to last.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm, `(dim,)`.
    pub output_norm: Vec<f32>,
    /// Output head `(vocab, dim)`; `None` when tied to `token_embd`.
    pub output: Option<WeightMatrix>,
}

impl LlamaWeights {
    /// Reads every tensor the config calls for from a model directory.
    pub fn load(config: &LlamaConfig, dir: &ModelDir) -> Result<Self, LlamaError> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let w = |part: &str| dir.weight(&format!("blk.{i}.{part}.weight"));
                let v = |part: &str| dir.f32_vector(&format!("blk.{i}.{part}.weight"));
                Ok(LlamaLayer {
                    attn_norm: v("attn_norm")?,
                    wq: w("attn_q")?,
                    wk: w("attn_k")?,
                    wv: w("attn_v")?,
                    wo: w("attn_output")?,
                    ffn_norm: v("ffn_norm")?,
                    w_gate: w("ffn_gate")?,
                    w_up: w("ffn_up")?,
                    w_down: w("ffn_down")?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output = if config.tie_word_embeddings {
            None
        } else {
            Some(dir.weight("output.weight")?)
        };
        Ok(Self {
            token_embd: dir.weight("token_embd.weight")?,
            layers,
            output_norm: dir.f32_vector("output_norm.weight")?,
            output,
        })
    }

    /// Checks every tensor's shape against the config.
    pub fn check_shapes(&self, c: &LlamaConfig) -> Result<(), LlamaError> {
        let (dim, hidden, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        expect_matrix("token_embd.weight", &self.token_embd, vocab, dim)?;
        if let Some(output) = &self.output {
            expect_matrix("output.weight", output, vocab, dim)?;
        }
        expect_norm("output_norm.weight", &self.output_norm, dim)?;
        for (i, l) in self.layers.iter().enumerate() {
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            expect_norm(&name("attn_norm"), &l.attn_norm, dim)?;
            expect_norm(&name("ffn_norm"), &l.ffn_norm, dim)?;
            expect_matrix(&name("attn_q"), &l.wq, q_dim, dim)?;
            expect_matrix(&name("attn_k"), &l.wk, kv_dim, dim)?;
            expect_matrix(&name("attn_v"), &l.wv, kv_dim, dim)?;
            expect_matrix(&name("attn_output"), &l.wo, dim, q_dim)?;
            expect_matrix(&name("ffn_gate"), &l.w_gate, hidden, dim)?;
            expect_matrix(&name("ffn_up"), &l.w_up, hidden, dim)?;
            expect_matrix(&name("ffn_down"), &l.w_down, dim, hidden)?;
        }
        if self.layers.len() != c.num_hidden_layers {
            return Err(LlamaError::Unsupported(format!(
                "{} layers of weights for num_hidden_layers = {}",
                self.layers.len(),
                c.num_hidden_layers
            )));
        }
        Ok(())
    }

    /// The matrix that maps the final hidden state to logits.
    fn output_head(&self) -> &WeightMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

fn expect_matrix(name: &str, w: &WeightMatrix, rows: usize, cols: usize) -> Result<(), LlamaError> {
    if (w.rows(), w.cols()) == (rows, cols) {
        return Ok(());
    }
    Err(LlamaError::WeightShape {
        name: name.to_owned(),
        expected_rows: rows,
        expected_cols: cols,
        rows: w.rows(),
        cols: w.cols(),
    })
}

fn expect_norm(name: &str, v: &[f32], len: usize) -> Result<(), LlamaError> {
    if v.len() == len {
        return Ok(());
    }
    Err(LlamaError::NormLength {
        name: name.to_owned(),
        expected: len,
        found: v.len(),
    })
}

/// One sequence's part of a batched step: its cache and the tokens that follow it.
/// The tokens take positions `cache.len() ..`.
#[derive(Debug)]
pub struct SeqBatch<'a> {
    /// The sequence's keys and values so far; the step appends to it.
    pub cache: &'a mut KvCache,
    /// New tokens: a prompt (or a chunk of one) at prefill, one token per decode step.
    pub tokens: &'a [u32],
}

/// Logits after the last new token of each sequence in a step: `(batch, vocab)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    vocab: usize,
    data: Vec<f32>,
}

impl Logits {
    /// Sequences in the step.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    /// True for an empty step.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Logits of the `i`-th sequence of the step. Panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// One vector per sequence, in batch order.
    pub fn into_rows(self) -> Vec<Vec<f32>> {
        self.data
            .chunks(self.vocab.max(1))
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// A Llama model on a compute backend.
pub struct Llama {
    config: LlamaConfig,
    weights: LlamaWeights,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Llama {
    /// A model from a config and weights whose shapes it checks.
    pub fn new(
        config: LlamaConfig,
        weights: LlamaWeights,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, LlamaError> {
        if config.rope_layout != RopeLayout::Normal {
            return Err(LlamaError::Unsupported(format!(
                "rope_layout {:?}: the kernels rotate adjacent pairs (\"normal\") only",
                config.rope_layout
            )));
        }
        if config.hidden_act != "silu" {
            return Err(LlamaError::Unsupported(format!(
                "hidden_act {:?}: expected \"silu\"",
                config.hidden_act
            )));
        }
        weights.check_shapes(&config)?;
        Ok(Self {
            config,
            weights,
            backend,
        })
    }

    /// Loads the config and weights of a model directory.
    pub fn load(dir: &ModelDir, backend: Arc<dyn Backend>) -> Result<Self, LlamaError> {
        let config = dir.config().clone();
        let weights = LlamaWeights::load(&config, dir)?;
        Self::new(config, weights, backend)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The backend doing the arithmetic.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// An empty cache for a new sequence, bounded by the model's context length.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_len(self.config.max_position_embeddings)
    }

    /// An empty cache bounded by `max_len` positions (at most the context length).
    pub fn new_cache_with_len(&self, max_len: usize) -> KvCache {
        let max_len = max_len.min(self.config.max_position_embeddings);
        KvCache::new(self.config.num_hidden_layers, self.config.kv_dim(), max_len)
    }

    /// Runs the new tokens of every sequence through the model, appends their keys and
    /// values to each sequence's cache and returns the logits after each sequence's last
    /// new token. On error no cache changes.
    pub fn forward(&self, batch: &mut [SeqBatch<'_>]) -> Result<Logits, LlamaError> {
        self.check_batch(batch)?;
        let result = self.forward_unchecked(batch);
        for entry in batch.iter_mut() {
            match &result {
                Ok(_) => entry.cache.commit(entry.tokens.len()),
                Err(_) => entry.cache.rollback(),
            }
        }
        result
    }

    /// Refuses a batch before any work: empty entries, unknown tokens, foreign or full
    /// caches.
    fn check_batch(&self, batch: &[SeqBatch<'_>]) -> Result<(), LlamaError> {
        let c = &self.config;
        for (index, entry) in batch.iter().enumerate() {
            if entry.tokens.is_empty() {
                return Err(LlamaError::EmptyStep { index });
            }
            if let Some(&token) = entry.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(LlamaError::TokenOutOfRange {
                    token,
                    vocab: c.vocab_size,
                });
            }
            let cache = &entry.cache;
            if (cache.layers(), cache.kv_dim()) != (c.num_hidden_layers, c.kv_dim()) {
                return Err(LlamaError::CacheShape {
                    layers: cache.layers(),
                    kv_dim: cache.kv_dim(),
                    expected_layers: c.num_hidden_layers,
                    expected_kv_dim: c.kv_dim(),
                });
            }
            cache.check_room(entry.tokens.len())?;
        }
        Ok(())
    }

    fn forward_unchecked(&self, batch: &mut [SeqBatch<'_>]) -> Result<Logits, LlamaError> {
        let c = &self.config;
        let n: usize = batch.iter().map(|e| e.tokens.len()).sum();
        // Position of every stacked row in its own sequence, for RoPE.
        let positions: Vec<u32> = batch
            .iter()
            .flat_map(|e| (e.cache.len()..e.cache.len() + e.tokens.len()).map(position))
            .collect();
        let tokens: Vec<u32> = batch
            .iter()
            .flat_map(|e| e.tokens.iter().copied())
            .collect();

        // x (n, dim): the residual stream of every new token of every sequence.
        let mut x = vec![0.0f32; n * c.hidden_size];
        for (row, &token) in x.chunks_exact_mut(c.hidden_size).zip(&tokens) {
            dequantize_row(&self.weights.token_embd, token as usize, row);
        }
        let mut s = Scratch::new(c, batch.iter().map(|e| e.tokens.len()).collect());
        for (layer, w) in self.weights.layers.iter().enumerate() {
            self.attention_block(layer, w, batch, &positions, &mut x, &mut s)?;
            self.feed_forward_block(w, &mut x, &mut s)?;
        }
        self.logits_of_last_rows(batch, &x)
    }

    /// `x += Wo @ attention(rope(Wq @ norm(x)), cache + rope(Wk @ norm(x)), cache + Wv @ norm(x))`.
    fn attention_block(
        &self,
        layer: usize,
        w: &LlamaLayer,
        batch: &mut [SeqBatch<'_>],
        positions: &[u32],
        x: &mut [f32],
        s: &mut Scratch,
    ) -> Result<(), LlamaError> {
        let c = &self.config;
        let b = self.backend.as_ref();
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        b.rms_norm(x, &w.attn_norm, c.rms_norm_eps, &mut s.xb)?;
        b.matmul_seqs(&w.wq, &s.xb, &s.seq_tokens, &mut s.q)?; // Wq (q_dim, dim) @ xb (n, dim) -> q (n, q_dim)
        b.matmul_seqs(&w.wk, &s.xb, &s.seq_tokens, &mut s.k)?; // Wk (kv_dim, dim) @ xb (n, dim) -> k (n, kv_dim)
        b.matmul_seqs(&w.wv, &s.xb, &s.seq_tokens, &mut s.v)?; // Wv (kv_dim, dim) @ xb (n, dim) -> v (n, kv_dim)
        b.rope(
            &mut s.q,
            positions,
            c.num_attention_heads,
            c.head_dim,
            c.rope_theta,
        )?;
        b.rope(
            &mut s.k,
            positions,
            c.num_key_value_heads,
            c.head_dim,
            c.rope_theta,
        )?;

        // Attention per sequence: its queries against its own cached keys and values.
        let mut row = 0;
        for entry in batch.iter_mut() {
            let n_new = entry.tokens.len();
            let shape = AttentionShape {
                n_new,
                first_pos: entry.cache.len(),
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            };
            let kv_rows = row * kv_dim..(row + n_new) * kv_dim;
            let q_rows = row * q_dim..(row + n_new) * q_dim;
            let (keys, values) = entry
                .cache
                .append(layer, &s.k[kv_rows.clone()], &s.v[kv_rows]);
            kv_cache::attention(
                b,
                shape,
                &s.q[q_rows.clone()],
                keys,
                values,
                &mut s.att[q_rows],
                &mut s.attention,
            )?;
            row += n_new;
        }

        b.matmul_seqs(&w.wo, &s.att, &s.seq_tokens, &mut s.xb)?; // Wo (dim, q_dim) @ att (n, q_dim) -> xb (n, dim)
        add_assign(x, &s.xb);
        Ok(())
    }

    /// `x += W_down @ (silu(W_gate @ norm(x)) * (W_up @ norm(x)))`.
    fn feed_forward_block(
        &self,
        w: &LlamaLayer,
        x: &mut [f32],
        s: &mut Scratch,
    ) -> Result<(), LlamaError> {
        let c = &self.config;
        let b = self.backend.as_ref();
        b.rms_norm(x, &w.ffn_norm, c.rms_norm_eps, &mut s.xb)?;
        b.matmul_seqs(&w.w_gate, &s.xb, &s.seq_tokens, &mut s.gate)?; // Wg (hidden, dim) @ xb (n, dim) -> gate (n, hidden)
        b.matmul_seqs(&w.w_up, &s.xb, &s.seq_tokens, &mut s.up)?; // Wu (hidden, dim) @ xb (n, dim) -> up (n, hidden)
        b.silu_mul(&mut s.gate, &s.up)?;
        b.matmul_seqs(&w.w_down, &s.gate, &s.seq_tokens, &mut s.xb)?; // Wd (dim, hidden) @ gate (n, hidden) -> xb (n, dim)
        add_assign(x, &s.xb);
        Ok(())
    }

    /// Final norm and output head, only for the last new row of each sequence.
    fn logits_of_last_rows(&self, batch: &[SeqBatch<'_>], x: &[f32]) -> Result<Logits, LlamaError> {
        let c = &self.config;
        let b = self.backend.as_ref();
        let dim = c.hidden_size;
        // last (batch, dim): the hidden state after each sequence's last new token.
        let mut last = Vec::with_capacity(batch.len() * dim);
        let mut end = 0;
        for entry in batch {
            end += entry.tokens.len();
            last.extend_from_slice(&x[(end - 1) * dim..end * dim]);
        }
        let mut normed = vec![0.0f32; last.len()];
        b.rms_norm(
            &last,
            &self.weights.output_norm,
            c.rms_norm_eps,
            &mut normed,
        )?;
        let mut data = vec![0.0f32; batch.len() * c.vocab_size];
        // W_out (vocab, dim) @ normed (batch, dim) -> logits (batch, vocab)
        b.matmul(self.weights.output_head(), &normed, batch.len(), &mut data)?;
        Ok(Logits {
            vocab: c.vocab_size,
            data,
        })
    }
}

/// Activation buffers of one step, `n` stacked rows each.
struct Scratch {
    /// Normalised input of a block, then a block's output before the residual add.
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output, `(n, q_dim)`.
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Buffers of the attention over the f16 cache.
    attention: AttentionScratch,
    /// New tokens of each sequence of the step, in batch order: the backend picks a
    /// product's arithmetic per sequence from these (see `Backend::matmul_seqs`).
    seq_tokens: Vec<usize>,
}

impl Scratch {
    fn new(c: &LlamaConfig, seq_tokens: Vec<usize>) -> Self {
        let n = seq_tokens.iter().sum::<usize>();
        let zeros = |width: usize| vec![0.0f32; n * width];
        Self {
            xb: zeros(c.hidden_size),
            q: zeros(c.q_dim()),
            k: zeros(c.kv_dim()),
            v: zeros(c.kv_dim()),
            att: zeros(c.q_dim()),
            gate: zeros(c.intermediate_size),
            up: zeros(c.intermediate_size),
            attention: AttentionScratch::default(),
            seq_tokens,
        }
    }
}

/// A sequence position as RoPE takes it. Positions are bounded by the cache's context
/// length, which the config bounds far below `u32::MAX`.
fn position(p: usize) -> u32 {
    u32::try_from(p).unwrap_or(u32::MAX)
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Writes row `r` of `w` as f32 into `out` (`w.cols()` long): the embedding lookup.
fn dequantize_row(w: &WeightMatrix, r: usize, out: &mut [f32]) {
    let bytes = w.row(r);
    match w.format() {
        WeightFormat::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WeightFormat::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        WeightFormat::Q8_0 => {
            for (o, block) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_le(block, 0);
                for (v, &q) in o.iter_mut().zip(&block[2..]) {
                    *v = d * f32::from(q as i8);
                }
            }
        }
        WeightFormat::Q4_1 => {
            for (o, block) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_le(block, 0), f16_le(block, 2));
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
                    *l = d * f32::from(q & 0x0F) + m;
                    *h = d * f32::from(q >> 4) + m;
                }
            }
        }
    }
}

fn f16_le(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantize_rows_of_each_format() {
        // Q8_0: d = 0.5, q = -3..29
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 3) as u8));
        let w = WeightMatrix::new(WeightFormat::Q8_0, 1, 32, q8).unwrap();
        let mut out = [0.0; 32];
        dequantize_row(&w, 0, &mut out);
        assert_eq!(out[0], -1.5);
        assert_eq!(out[31], 14.0);

        // Q4_1: d = 2, m = -1, byte j holds value j (low) and 15 - j (high)
        let mut q4 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        q4.extend(half::f16::from_f32(-1.0).to_le_bytes());
        q4.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let w = WeightMatrix::new(WeightFormat::Q4_1, 1, 32, q4).unwrap();
        dequantize_row(&w, 0, &mut out);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[16], 29.0);
        assert_eq!(out[31], -1.0);

        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let w = WeightMatrix::new(WeightFormat::Bf16, 1, 2, bf).unwrap();
        let mut two = [0.0; 2];
        dequantize_row(&w, 0, &mut two);
        assert_eq!(two, [1.5, -2.0]);
    }
}
