//! The real engine behind the scheduler: `chrysalis-models`' Llama on the CPU or CUDA
//! backend (`--device`).

use std::sync::Arc;

use anyhow::Context;
use chrysalis_kernels::cuda::DeviceSpec;
use chrysalis_models::chat::ChatMessage;
use chrysalis_models::engine::Engine;
use chrysalis_models::kv_cache::KvCache;
use chrysalis_models::llama::SeqBatch;
use chrysalis_protocol::{Prompt, Role};

use super::engine::{BatchEntry, StepEngine};

/// A loaded, verified model; the scheduler owns each sequence's KV cache.
pub struct LlamaEngine {
    engine: Engine,
}

impl LlamaEngine {
    /// Loads and verifies the model directory on `device` (`threads`: CPU threads, 0 or
    /// `None` for all cores); with `expected_root`, its Merkle root must equal that one.
    pub fn load(
        name_or_dir: &str,
        expected_root: Option<[u8; 32]>,
        device: DeviceSpec,
        threads: Option<usize>,
    ) -> anyhow::Result<Self> {
        let backend = device
            .open_with(threads.unwrap_or(0))
            .with_context(|| format!("starting the {device} backend"))?;
        let dir = crate::generate::open_model_expecting(name_or_dir, expected_root)?;
        let engine = Engine::load(dir, Arc::from(backend)).context("building the model")?;
        Ok(Self { engine })
    }

    /// The verified model root hash.
    pub fn model_root(&self) -> [u8; 32] {
        self.engine.root()
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl StepEngine for LlamaEngine {
    type Cache = KvCache;

    fn new_cache(&mut self, max_len: usize) -> Result<KvCache, String> {
        let model = self.engine.model();
        let limit = model.config().max_position_embeddings;
        if max_len > limit {
            return Err(format!(
                "prompt plus max_tokens is {max_len} tokens, the model's context is {limit}"
            ));
        }
        Ok(model.new_cache_with_len(max_len))
    }

    fn forward(&mut self, batch: &mut [BatchEntry<'_, KvCache>]) -> Result<Vec<Vec<f32>>, String> {
        let mut seqs: Vec<SeqBatch<'_>> = batch
            .iter_mut()
            .map(|e| SeqBatch {
                cache: &mut *e.cache,
                tokens: e.tokens,
            })
            .collect();
        let logits = self
            .engine
            .model()
            .forward(&mut seqs)
            .map_err(|e| e.to_string())?;
        Ok(logits.into_rows())
    }

    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, String> {
        let ids = match prompt {
            Prompt::Chat(turns) => {
                let messages: Vec<ChatMessage> = turns
                    .iter()
                    .map(|t| ChatMessage::new(role_name(t.role), t.content.as_str()))
                    .collect();
                self.engine.encode_chat(&messages)
            }
            Prompt::Text(text) => self.engine.encode_prompt(text),
        };
        ids.map_err(|e| e.to_string())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.engine
            .tokenizer()
            .decode(ids, true)
            .map_err(|e| e.to_string())
    }

    fn is_stop(&self, id: u32) -> bool {
        self.engine.is_stop(id)
    }

    fn model_name(&self) -> String {
        self.engine.name().to_owned()
    }
}
