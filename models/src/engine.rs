//! A small high-level API over a model directory: load, tokenize, template, run batched
//! steps over named sequences, and generate with sampling and stop tokens.
//!
//! Two ways in:
//! - [`Engine::generate`] runs one prompt to completion (the `generate` command).
//! - [`Engine::add_sequence`], [`Engine::step`] and [`Engine::remove_sequence`] let a
//!   scheduler keep many sequences and advance any subset of them in one batched
//!   forward pass; [`Engine::model`] gives the bare [`Llama`] to callers that own their
//!   caches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrysalis_kernels::Backend;

use crate::chat::{ChatError, ChatMessage, ChatTemplate, PromptPiece};
use crate::dir::{ModelDir, ModelError};
use crate::kv_cache::KvCache;
use crate::llama::{Llama, LlamaError, Logits, SeqBatch};
use crate::merkle::Hash;
use crate::sampling::{top_k_logits, Sampler, SamplingError, SamplingParams};
use crate::tokenizer::Tokenizer;

/// A caller's name for one sequence.
pub type SeqId = u64;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Loading, tokenizing or detokenizing failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The forward pass refused the step.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// The chat template failed.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The sampling parameters are invalid or the logits unusable.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// A step named a sequence that was never added (or was removed).
    #[error("unknown sequence {0}: add it before stepping it")]
    UnknownSequence(SeqId),
    /// A sequence was added twice, or named twice in one step.
    #[error("sequence {0} already exists (or appears twice in one step)")]
    DuplicateSequence(SeqId),
    /// A step started past the end of its sequence.
    #[error(
        "sequence {seq}: step starts at position {start}, but only {cached} positions are cached"
    )]
    StartPosition {
        /// The sequence.
        seq: SeqId,
        /// Requested start position.
        start: usize,
        /// Positions the sequence holds.
        cached: usize,
    },
    /// There is nothing to run.
    #[error("empty prompt: expected at least one token")]
    EmptyPrompt,
}

/// One sequence's part of an [`Engine::step`].
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// Which sequence.
    pub seq: SeqId,
    /// Its new tokens.
    pub tokens: &'a [u32],
    /// Position of the first new token: the sequence's length to continue it, or less to
    /// rewind it (positions from here on are forgotten first).
    pub start_pos: usize,
}

/// Options of [`Engine::generate`].
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token counts).
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced a stop token (it is the last of `token_ids`).
    StopToken,
    /// `max_tokens` were generated.
    MaxTokens,
}

/// One candidate of the first step's logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogit {
    /// Token id.
    pub id: u32,
    /// Its vocabulary string.
    pub token: String,
    /// Its logit.
    pub logit: f32,
}

/// The outcome of [`Engine::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt's tokens.
    pub prompt_token_ids: Vec<u32>,
    /// Generated tokens, the stop token included when there was one.
    pub token_ids: Vec<u32>,
    /// Generated text, special tokens left out.
    pub text: String,
    /// The five largest logits of the first step, largest first.
    pub first_top5: Vec<TopLogit>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Time of the prompt's forward pass.
    pub prefill_time: Duration,
    /// Time of the forward passes after the prompt.
    pub decode_time: Duration,
    /// Forward passes after the prompt (one token each).
    pub decode_steps: usize,
}

impl Generation {
    /// Prompt tokens processed per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_token_ids.len(), self.prefill_time)
    }

    /// Tokens decoded per second after the prompt.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_time)
    }
}

fn rate(count: usize, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// A loaded model with its tokenizer, chat template, stop tokens and live sequences.
#[derive(Debug)]
pub struct Engine {
    name: String,
    root: Hash,
    llama: Llama,
    tokenizer: Tokenizer,
    /// The same tokenizer with special-token parsing off: message contents written as
    /// `<|im_start|>` stay plain text.
    plain_tokenizer: Tokenizer,
    chat: ChatTemplate,
    stop_tokens: Vec<u32>,
    sequences: BTreeMap<SeqId, KvCache>,
}

impl Engine {
    /// Builds the engine from a verified model directory, then drops the directory's
    /// in-memory files so the weights are held once.
    pub fn load(dir: ModelDir, backend: Arc<dyn Backend>) -> Result<Self, EngineError> {
        let llama = Llama::load(&dir, backend)?;
        let config = llama.config();
        let special = |id: u32| dir.tokenizer().token(id).unwrap_or_default();
        let chat = ChatTemplate::new(
            dir.chat_template(),
            &special(config.bos_token_id),
            &special(config.eos_token_id),
        )?;
        let mut stop_tokens = config.stop_token_ids.clone();
        stop_tokens.push(config.eos_token_id);
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        Ok(Self {
            name: dir.name().to_owned(),
            root: dir.root(),
            tokenizer: dir.tokenizer().clone(),
            plain_tokenizer: plain_text_tokenizer(dir.tokenizer()),
            chat,
            stop_tokens,
            llama,
            sequences: BTreeMap::new(),
        })
    }

    /// The model's name from its manifest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verified model root hash.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The model, for callers that own their caches ([`Llama::forward`]).
    pub fn model(&self) -> &Llama {
        &self.llama
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids that end a generation (EOS and the template's end-of-turn tokens).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// Whether `id` ends a generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_tokens.binary_search(&id).is_ok()
    }

    /// Tokens of an already rendered prompt; special tokens written in it are parsed.
    pub fn encode_prompt(&self, rendered: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(rendered)?)
    }

    /// Renders a conversation with the model's template (ending with the assistant's
    /// turn) and tokenizes it: the template's text with special tokens parsed, message
    /// contents as plain text, so no message can write a control token.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        for piece in self.chat.render_pieces(messages, true)? {
            match piece {
                PromptPiece::Template(text) => ids.extend(self.tokenizer.encode(&text)?),
                PromptPiece::Content(text) => ids.extend(self.plain_tokenizer.encode(&text)?),
            }
        }
        Ok(ids)
    }

    /// Starts an empty sequence named `seq`.
    pub fn add_sequence(&mut self, seq: SeqId) -> Result<(), EngineError> {
        if self.sequences.contains_key(&seq) {
            return Err(EngineError::DuplicateSequence(seq));
        }
        self.sequences.insert(seq, self.llama.new_cache());
        Ok(())
    }

    /// Ends a sequence and frees its cache; false if it did not exist.
    pub fn remove_sequence(&mut self, seq: SeqId) -> bool {
        self.sequences.remove(&seq).is_some()
    }

    /// Positions cached for `seq`, if it exists.
    pub fn sequence_len(&self, seq: SeqId) -> Option<usize> {
        self.sequences.get(&seq).map(KvCache::len)
    }

    /// One batched forward pass over the given sequences; returns the logits after each
    /// one's last new token, in the order of `steps`. A step naming an unknown or
    /// repeated sequence, or starting past its end, changes nothing; once those checks
    /// pass, rewinds (`start_pos` below a sequence's length) apply even if the forward
    /// pass then refuses the batch, which leaves every cache at its rewound length.
    pub fn step(&mut self, steps: &[SeqStep<'_>]) -> Result<Logits, EngineError> {
        let mut slots: Vec<Option<&mut KvCache>> = steps.iter().map(|_| None).collect();
        let index: BTreeMap<SeqId, usize> =
            steps.iter().enumerate().map(|(i, s)| (s.seq, i)).collect();
        if index.len() != steps.len() {
            let dup = steps
                .iter()
                .find(|s| steps.iter().filter(|t| t.seq == s.seq).count() > 1);
            return Err(EngineError::DuplicateSequence(dup.map_or(0, |s| s.seq)));
        }
        for (seq, cache) in self.sequences.iter_mut() {
            if let Some(&i) = index.get(seq) {
                slots[i] = Some(cache);
            }
        }
        for (step, slot) in steps.iter().zip(&slots) {
            let cached = slot
                .as_ref()
                .ok_or(EngineError::UnknownSequence(step.seq))?
                .len();
            if step.start_pos > cached {
                return Err(EngineError::StartPosition {
                    seq: step.seq,
                    start: step.start_pos,
                    cached,
                });
            }
        }
        let mut batch: Vec<SeqBatch<'_>> = steps
            .iter()
            .zip(slots)
            .filter_map(|(step, slot)| {
                let cache = slot?;
                cache.truncate(step.start_pos);
                Some(SeqBatch {
                    cache,
                    tokens: step.tokens,
                })
            })
            .collect();
        Ok(self.llama.forward(&mut batch)?)
    }

    /// Generates a continuation of `prompt` on a private sequence, calling `on_text`
    /// with each new piece of text as soon as it is complete UTF-8.
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut sampler = Sampler::new(options.sampling)?;
        let mut cache = self.llama.new_cache();
        let mut stream = self.tokenizer.inner().decode_stream(true);
        let mut history = prompt.to_vec();
        let mut token_ids = Vec::new();

        let started = Instant::now();
        let mut logits = self.forward_one(&mut cache, prompt)?;
        let prefill_time = started.elapsed();
        let first_top5 = self.top_logits(&logits, 5);

        let decode_started = Instant::now();
        let mut decode_steps = 0;
        let stop_reason = loop {
            if token_ids.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&mut logits, &history)?;
            token_ids.push(token);
            history.push(token);
            if let Some(piece) = stream.step(token).map_err(|e| ModelError::Tokenizer {
                reason: format!("decoding token {token}: {e}"),
            })? {
                on_text(&piece);
            }
            if self.is_stop(token) {
                break StopReason::StopToken;
            }
            if token_ids.len() < options.max_tokens {
                logits = self.forward_one(&mut cache, &[token])?;
                decode_steps += 1;
            }
        };
        let decode_time = decode_started.elapsed();
        let text = self.tokenizer.decode(&token_ids, true)?;
        Ok(Generation {
            prompt_token_ids: prompt.to_vec(),
            token_ids,
            text,
            first_top5,
            stop_reason,
            prefill_time,
            decode_time,
            decode_steps,
        })
    }

    /// Forward pass of one sequence; its logits row.
    fn forward_one(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let logits = self.llama.forward(&mut [SeqBatch { cache, tokens }])?;
        Ok(logits.into_rows().pop().unwrap_or_default())
    }

    /// The `k` largest logits with their token strings.
    pub fn top_logits(&self, logits: &[f32], k: usize) -> Vec<TopLogit> {
        top_k_logits(logits, k)
            .into_iter()
            .map(|(id, logit)| TopLogit {
                id,
                token: self.tokenizer.token(id).unwrap_or_default(),
                logit,
            })
            .collect()
    }
}

/// `tokenizer` with special tokens in the input encoded as the text they are written in.
fn plain_text_tokenizer(tokenizer: &Tokenizer) -> Tokenizer {
    let mut inner = tokenizer.inner().clone();
    inner.set_encode_special_tokens(true);
    Tokenizer::from_inner(inner)
}
