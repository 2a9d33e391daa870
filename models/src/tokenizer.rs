//! The tokenizer: built from GGUF `tokenizer.ggml.*` metadata at import, saved as
//! `tokenizer.json`, and loaded with the `tokenizers` crate.
//!
//! Supported GGUF vocabularies: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with
//! the pre-tokenizers llama.cpp calls `smollm` (every digit on its own, then GPT-2's
//! split regex: Hugging Face's `Digits(individual) + ByteLevel`) and `gpt-2`/`default`
//! (GPT-2's regex alone). Token types follow llama.cpp: 3 (control) becomes a special
//! added token, 4 (user-defined) a non-special added token, both matched verbatim in
//! input text so a rendered chat prompt's `<|im_start|>` is one token.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::dir::ModelError;

/// GGUF token type of a normal vocabulary entry.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type of a control token (`<|im_start|>`): special, never produced by BPE.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token: matched verbatim, not special.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The vocabulary as a GGUF file describes it.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (only `gpt2` is supported).
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// `tokenizer.ggml.tokens`, in id order (byte-level encoded strings).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`, highest priority first.
    pub merges: Vec<String>,
}

/// Builds a `tokenizers` tokenizer from a GGUF vocabulary.
pub fn build_from_gguf(vocab: &GgufVocab) -> Result<tokenizers::Tokenizer, ModelError> {
    let fail = |reason: String| ModelError::Tokenizer { reason };
    if vocab.model != "gpt2" {
        return Err(fail(format!(
            "tokenizer.ggml.model: expected \"gpt2\" (byte-level BPE), found {:?}",
            vocab.model
        )));
    }
    let pre_tokenizer = pre_tokenizer_for(&vocab.pre)?;
    if !vocab.token_types.is_empty() && vocab.token_types.len() != vocab.tokens.len() {
        return Err(fail(format!(
            "tokenizer.ggml.token_type: expected {} entries (one per token), found {}",
            vocab.tokens.len(),
            vocab.token_types.len()
        )));
    }
    let mut ids = Vocab::with_capacity(vocab.tokens.len());
    for (id, token) in (0u32..).zip(&vocab.tokens) {
        if ids.insert(token.clone(), id).is_some() {
            return Err(fail(format!(
                "tokenizer.ggml.tokens: token {token:?} appears twice"
            )));
        }
    }
    let merges = vocab
        .merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(l, r)| (l.to_owned(), r.to_owned()))
                .ok_or_else(|| {
                    fail(format!(
                        "tokenizer.ggml.merges: expected \"left right\", found {merge:?}"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .build()
        .map_err(|e| fail(format!("building the BPE model: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let added = added_tokens(vocab);
    tokenizer
        .add_special_tokens(added.iter().filter(|t| t.special).cloned())
        .map_err(|e| fail(format!("adding control tokens: {e}")))?;
    tokenizer
        .add_tokens(added.into_iter().filter(|t| !t.special))
        .map_err(|e| fail(format!("adding user-defined tokens: {e}")))?;
    Ok(tokenizer)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()),
        "gpt-2" | "default" => Ok(byte_level.into()),
        other => Err(ModelError::Tokenizer {
            reason: format!(
                "tokenizer.ggml.pre: expected one of \"smollm\", \"gpt-2\", \"default\", found {other:?}"
            ),
        }),
    }
}

/// Control and user-defined tokens as added tokens, matched verbatim (not normalized,
/// no whitespace stripping), in id order.
fn added_tokens(vocab: &GgufVocab) -> Vec<AddedToken> {
    vocab
        .tokens
        .iter()
        .zip(&vocab.token_types)
        .filter_map(|(token, &kind)| match kind {
            TOKEN_TYPE_CONTROL => Some(AddedToken::from(token.clone(), true)),
            TOKEN_TYPE_USER_DEFINED => Some(AddedToken::from(token.clone(), false)),
            _ => None,
        })
        .map(|t| t.normalized(false))
        .collect()
}

/// A loaded tokenizer: text to token ids and back.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Json {
            file: "tokenizer.json",
            reason: e.to_string(),
        })?;
        Ok(Self { inner })
    }

    /// Wraps an already built tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }

    /// Serializes to `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                reason: format!("serializing: {e}"),
            })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become
    /// their ids; nothing is added (no BOS: chat templates write it themselves).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                reason: format!("encoding: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are kept unless `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                reason: format!("decoding: {e}"),
            })
    }

    /// The id of a token written as in the vocabulary (`"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer (for streaming decode and the like).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocabulary: the bytes of "ab 12", merges for "ab", and one control token.
    fn tiny() -> GgufVocab {
        let tokens = ["<|end|>", "a", "b", "Ġ", "1", "2", "ab", "Ġ1"];
        GgufVocab {
            model: "gpt2".into(),
            pre: "smollm".into(),
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            token_types: vec![3, 1, 1, 1, 1, 1, 1, 1],
            merges: vec!["a b".into(), "Ġ 1".into()],
        }
    }

    #[test]
    fn merges_apply_digits_split_and_control_tokens_parse() {
        let t = Tokenizer::from_inner(build_from_gguf(&tiny()).expect("builds"));
        // "12" splits into single digits before BPE, so "Ġ1" cannot form across " 12";
        // with smollm's digit rule, the space stands alone.
        assert_eq!(t.encode("ab<|end|>ab 12").unwrap(), vec![6, 0, 6, 3, 4, 5]);
        assert_eq!(
            t.decode(&[6, 0, 6, 3, 4, 5], false).unwrap(),
            "ab<|end|>ab 12"
        );
        assert_eq!(t.decode(&[6, 0, 6], true).unwrap(), "abab");
        assert_eq!(t.token_id("<|end|>"), Some(0));
    }

    #[test]
    fn gpt2_pre_tokenizer_keeps_digits_together() {
        let mut vocab = tiny();
        vocab.pre = "gpt-2".into();
        let t = Tokenizer::from_inner(build_from_gguf(&vocab).expect("builds"));
        assert_eq!(t.encode(" 1").unwrap(), vec![7]);
    }

    #[test]
    fn refuses_unknown_models_and_malformed_metadata() {
        let mut v = tiny();
        v.model = "llama".into();
        assert!(build_from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("\"gpt2\""));
        let mut v = tiny();
        v.pre = "qwen2".into();
        assert!(build_from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("qwen2"));
        let mut v = tiny();
        v.merges.push("nospace".into());
        assert!(build_from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("nospace"));
        let mut v = tiny();
        v.token_types.pop();
        assert!(build_from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("one per token"));
        let mut v = tiny();
        v.tokens[2] = "a".into();
        assert!(build_from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn json_round_trip_keeps_ids() {
        let t = Tokenizer::from_inner(build_from_gguf(&tiny()).expect("builds"));
        let back = Tokenizer::from_json(t.to_json().unwrap().as_bytes()).expect("loads");
        assert_eq!(
            back.encode("ab<|end|> 12").unwrap(),
            t.encode("ab<|end|> 12").unwrap()
        );
    }
}
