//! What the scheduler needs from a model: tokenization and one batched forward pass
//! per step.
//!
//! The scheduler is written against this small trait so that batching, limits and
//! streaming do not depend on the engine's internals; [`super::llama_engine`] implements
//! it with `chrysalis-models`' Llama.

use chrysalis_protocol::Prompt;

/// One sequence's share of a batched forward pass.
pub struct BatchEntry<'a, C> {
    /// The sequence's KV cache; the engine appends `tokens` to it.
    pub cache: &'a mut C,
    /// New tokens for this sequence: the whole prompt at admission, then one token.
    pub tokens: &'a [u32],
}

/// A model the scheduler can drive.
pub trait StepEngine: Send + 'static {
    /// Per-sequence state (the KV cache), created at admission and dropped at the end.
    type Cache: Send;

    /// A fresh, empty cache for a sequence of at most `max_len` tokens.
    fn new_cache(&mut self, max_len: usize) -> Result<Self::Cache, String>;

    /// Runs one forward pass over every entry (sequences of different lengths in one
    /// batch) and returns, per entry and in order, the logits after its last new token.
    fn forward(
        &mut self,
        batch: &mut [BatchEntry<'_, Self::Cache>],
    ) -> Result<Vec<Vec<f32>>, String>;

    /// Tokenizes a prompt; a chat is first rendered with the model's chat template.
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, String>;

    /// Detokenizes generated ids (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> Result<String, String>;

    /// Whether `id` ends a generation.
    fn is_stop(&self, id: u32) -> bool;

    /// The model's name for `/v1/models` and logs.
    fn model_name(&self) -> String;
}
