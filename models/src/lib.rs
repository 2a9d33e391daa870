//! Chrysalis models: from model files to logits.
//!
//! Loads a model directory (safetensors weights with quantized block tensors, a
//! `tokenizer.json`, `config.json`, the chat template and a `manifest.json`), verifying
//! every byte against the model root hash (a Merkle root over 1 MiB chunks) as it reads.
//! Implements the Llama architecture with a batch dimension and a KV cache, renders chat
//! templates, and samples tokens. It also imports GGUF files into that directory format.
//! Numerical work goes through `chrysalis-kernels`, the only Chrysalis crate it uses.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chat;
pub mod config;
pub mod dir;
pub mod engine;
pub mod gguf;
pub mod import;
pub mod kv_cache;
pub mod llama;
pub mod manifest;
pub mod merkle;
pub mod sampling;
pub mod tokenizer;

pub use config::{LlamaConfig, RopeLayout};
pub use dir::{ModelDir, ModelError};
pub use tokenizer::Tokenizer;
