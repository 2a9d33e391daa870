//! Continuous batching on a dedicated engine thread.
//!
//! The engine is synchronous CPU (or GPU) work, so it runs on its own OS thread and the
//! async session tasks talk to it through channels: a session submits a [`Job`] and
//! receives [`Event`]s. Between two forward passes the thread admits waiting jobs and
//! retires finished or abandoned ones, so sequences join and leave the batch at every
//! step, and every active sequence advances by one token per forward pass.

use std::sync::mpsc as std_mpsc;
use std::thread;

use tokio::sync::mpsc;

use chrysalis_models::sampling::{Sampler, SamplingParams};
use chrysalis_protocol::Prompt;

use super::engine::{BatchEntry, StepEngine};

/// Limits the scheduler enforces per request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most prompt tokens (after the chat template) a request may have.
    pub max_prompt_tokens: usize,
    /// Most tokens a request may ask to generate.
    pub max_new_tokens: u32,
    /// Most sequences decoded together; more wait in the queue.
    pub max_batch: usize,
    /// Most prompt tokens prefilled in one step, so a long prompt does not stall decodes.
    pub prefill_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_tokens: 2048,
            max_new_tokens: 1024,
            max_batch: 64,
            prefill_budget: 1024,
        }
    }
}

/// What a session asks the engine to do.
#[derive(Clone, Debug)]
pub struct Job {
    /// What to complete.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_new_tokens: u32,
    /// How to pick tokens (greedy when the temperature is 0).
    pub sampling: SamplingParams,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced a stop token.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// Progress of one job, streamed back to its session.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One generated token and the text it completed (may be empty while a multi-byte
    /// character is still incomplete). A stop token is reported with empty text.
    Token {
        /// The token id.
        id: u32,
        /// Newly completed text.
        text: String,
    },
    /// The job ended; token counts are the metered usage.
    Finished {
        /// Prompt tokens after the chat template.
        prompt_tokens: u32,
        /// Generated tokens, the stop token included.
        completion_tokens: u32,
        /// Why it ended.
        reason: FinishReason,
    },
    /// The job was refused or failed; the message names what and why.
    Failed(JobError),
}

/// A refusal or failure of one job.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The prompt is longer than the limit.
    #[error("prompt has {found} tokens, the limit is {max}")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The request asked for more tokens than allowed.
    #[error("max_tokens is {found}, the limit is {max}")]
    TooManyNewTokens {
        /// What was asked.
        found: u32,
        /// The limit.
        max: u32,
    },
    /// The request asked for no tokens at all.
    #[error("max_tokens must be at least 1")]
    ZeroNewTokens,
    /// The sampling parameters are out of range.
    #[error("sampling parameters refused: {0}")]
    Sampling(String),
    /// The template or tokenizer refused the messages.
    #[error("could not tokenize the request: {0}")]
    Tokenize(String),
    /// The engine failed; the sequence was dropped.
    #[error("engine failure: {0}")]
    Engine(String),
    /// The engine thread is gone.
    #[error("the engine thread has stopped")]
    EngineGone,
}

impl JobError {
    /// A name for the kind of refusal that carries no request content, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::PromptTooLong { .. } => "prompt too long",
            JobError::TooManyNewTokens { .. } => "max_tokens over the limit",
            JobError::ZeroNewTokens => "max_tokens zero",
            JobError::Sampling(_) => "sampling parameters out of range",
            JobError::Tokenize(_) => "messages could not be tokenized",
            JobError::Engine(_) => "engine failure",
            JobError::EngineGone => "engine stopped",
        }
    }
}

/// The async side's handle to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    jobs: std_mpsc::Sender<Submission>,
    model_name: String,
}

struct Submission {
    job: Job,
    events: mpsc::UnboundedSender<Event>,
}

impl SchedulerHandle {
    /// Queues a job; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the job at the next step.
    pub fn submit(&self, job: Job) -> mpsc::UnboundedReceiver<Event> {
        let (events, rx) = mpsc::unbounded_channel();
        if let Err(returned) = self.jobs.send(Submission { job, events }) {
            let _ = returned.0.events.send(Event::Failed(JobError::EngineGone));
        }
        rx
    }

    /// The served model's name.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }
}

/// Starts the engine thread. It runs until every handle is dropped.
pub fn spawn<E: StepEngine>(engine: E, limits: Limits) -> std::io::Result<SchedulerHandle> {
    let (jobs, rx) = std_mpsc::channel();
    let model_name = engine.model_name();
    thread::Builder::new()
        .name("chrysalis-engine".into())
        .spawn(move || Scheduler::new(engine, limits).run(&rx))?;
    Ok(SchedulerHandle { jobs, model_name })
}

/// Notes sequences dropped because their session went away (counts only).
fn log_abandoned(count: usize) {
    if count > 0 {
        tracing::info!(
            count,
            "sequence abandoned by its session; dropped from the batch"
        );
    }
}

/// One admitted sequence.
struct Sequence<C> {
    cache: C,
    /// Tokens to feed at the next step: the prompt first, then the last sampled token.
    pending: Vec<u32>,
    prompt_tokens: u32,
    generated: Vec<u32>,
    /// Bytes of the decoded generation already sent.
    sent_text_len: usize,
    max_new_tokens: u32,
    sampler: Sampler,
    events: mpsc::UnboundedSender<Event>,
}

struct Scheduler<E: StepEngine> {
    engine: E,
    limits: Limits,
    active: Vec<Sequence<E::Cache>>,
    waiting: std::collections::VecDeque<Submission>,
}

impl<E: StepEngine> Scheduler<E> {
    fn new(engine: E, limits: Limits) -> Self {
        Self {
            engine,
            limits,
            active: Vec::new(),
            waiting: std::collections::VecDeque::new(),
        }
    }

    fn run(mut self, jobs: &std_mpsc::Receiver<Submission>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                // Idle: block until work arrives or every handle is gone.
                match jobs.recv() {
                    Ok(sub) => self.waiting.push_back(sub),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            self.admit();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Moves waiting jobs into the batch while there is room and prefill budget.
    fn admit(&mut self) {
        let mut budget = self.limits.prefill_budget;
        while self.active.len() < self.limits.max_batch {
            let Some(sub) = self.waiting.pop_front() else {
                return;
            };
            if sub.events.is_closed() {
                continue;
            }
            match self.prepare(&sub.job) {
                Ok(prompt) if prompt.len() > budget && budget < self.limits.prefill_budget => {
                    // Over this step's budget: it goes first next step.
                    self.waiting.push_front(sub);
                    return;
                }
                Ok(prompt) => {
                    budget = budget.saturating_sub(prompt.len());
                    self.start(sub, prompt);
                }
                Err(e) => {
                    let _ = sub.events.send(Event::Failed(e));
                }
            }
        }
    }

    /// Checks a job's limits and tokenizes its prompt.
    fn prepare(&self, job: &Job) -> Result<Vec<u32>, JobError> {
        job.sampling
            .validate()
            .map_err(|e| JobError::Sampling(e.to_string()))?;
        if job.max_new_tokens == 0 {
            return Err(JobError::ZeroNewTokens);
        }
        if job.max_new_tokens > self.limits.max_new_tokens {
            return Err(JobError::TooManyNewTokens {
                found: job.max_new_tokens,
                max: self.limits.max_new_tokens,
            });
        }
        let prompt = self
            .engine
            .encode(&job.prompt)
            .map_err(JobError::Tokenize)?;
        if prompt.is_empty() || prompt.len() > self.limits.max_prompt_tokens {
            return Err(JobError::PromptTooLong {
                found: prompt.len(),
                max: self.limits.max_prompt_tokens,
            });
        }
        Ok(prompt)
    }

    fn start(&mut self, sub: Submission, prompt: Vec<u32>) {
        let max_len = prompt.len() + sub.job.max_new_tokens as usize;
        let sampler = match Sampler::new(sub.job.sampling) {
            Ok(sampler) => sampler,
            Err(e) => {
                let _ = sub
                    .events
                    .send(Event::Failed(JobError::Sampling(e.to_string())));
                return;
            }
        };
        match self.engine.new_cache(max_len) {
            Ok(cache) => self.active.push(Sequence {
                sampler,
                cache,
                prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
                pending: prompt,
                generated: Vec::new(),
                sent_text_len: 0,
                max_new_tokens: sub.job.max_new_tokens,
                events: sub.events,
            }),
            Err(e) => {
                let _ = sub.events.send(Event::Failed(JobError::Engine(e)));
            }
        }
    }

    /// One forward pass over every active sequence, then sampling and retirement.
    fn step(&mut self) {
        // Abandoned sequences (client gone) leave before we spend compute on them.
        let before = self.active.len();
        self.active.retain(|s| !s.events.is_closed());
        log_abandoned(before - self.active.len());
        if self.active.is_empty() {
            return;
        }
        let logits = {
            let mut batch: Vec<BatchEntry<'_, E::Cache>> = self
                .active
                .iter_mut()
                .map(|s| BatchEntry {
                    cache: &mut s.cache,
                    tokens: &s.pending,
                })
                .collect();
            self.engine.forward(&mut batch)
        };
        match logits {
            Ok(logits) if logits.len() == self.active.len() => {
                let active = std::mem::take(&mut self.active);
                self.active = active
                    .into_iter()
                    .zip(logits)
                    .filter_map(|(seq, mut l)| self.advance(seq, &mut l))
                    .collect();
            }
            Ok(logits) => self.fail_all(&format!(
                "forward returned {} logit rows for {} sequences",
                logits.len(),
                self.active.len()
            )),
            Err(e) => self.fail_all(&e),
        }
    }

    /// Samples the next token of one sequence; returns it if it goes on.
    fn advance(
        &self,
        mut seq: Sequence<E::Cache>,
        logits: &mut [f32],
    ) -> Option<Sequence<E::Cache>> {
        let id = match seq.sampler.sample(logits, &seq.generated) {
            Ok(id) => id,
            Err(e) => {
                let _ = seq
                    .events
                    .send(Event::Failed(JobError::Engine(e.to_string())));
                return None;
            }
        };
        seq.generated.push(id);
        let stop = self.engine.is_stop(id);
        let text = if stop {
            String::new()
        } else {
            self.new_text(&mut seq)
        };
        if seq.events.send(Event::Token { id, text }).is_err() {
            log_abandoned(1);
            return None;
        }
        let reason = if stop {
            Some(FinishReason::Stop)
        } else if seq.generated.len() >= seq.max_new_tokens as usize {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = reason {
            let _ = seq.events.send(Event::Finished {
                prompt_tokens: seq.prompt_tokens,
                completion_tokens: u32::try_from(seq.generated.len()).unwrap_or(u32::MAX),
                reason,
            });
            return None;
        }
        seq.pending.clear();
        seq.pending.push(id);
        Some(seq)
    }

    /// Text completed by the newest token. Decoding the whole generation and sending the
    /// difference keeps multi-byte characters split across tokens intact.
    fn new_text(&self, seq: &mut Sequence<E::Cache>) -> String {
        let Ok(text) = self.engine.decode(&seq.generated) else {
            return String::new();
        };
        // Hold back a trailing replacement character: its bytes may still be arriving.
        let complete = text.strip_suffix('\u{FFFD}').unwrap_or(&text);
        match complete.get(seq.sent_text_len..) {
            Some(new) if complete.len() > seq.sent_text_len => {
                let new = new.to_owned();
                seq.sent_text_len = complete.len();
                new
            }
            _ => String::new(),
        }
    }

    fn fail_all(&mut self, why: &str) {
        for seq in self.active.drain(..) {
            let _ = seq
                .events
                .send(Event::Failed(JobError::Engine(why.to_owned())));
        }
    }
}
