//! Per-sequence key/value cache.
//!
//! Each sequence owns one [`KvCache`]: for every layer, the keys and values of all its
//! positions so far, row-major `(positions, n_kv_heads * head_dim)` f16. Memory grows
//! with the sequence and is bounded by the context length given at creation: a step that
//! would go past it is refused before anything is written.
//!
//! A forward step appends the new rows layer by layer ([`KvCache::append`]) and then
//! either [`KvCache::commit`]s them or, if the step failed half way,
//! [`KvCache::rollback`]s to the last committed length, so a cache never holds a
//! partial step.
//!
//! Keys and values are stored in f16, as llama.cpp does by default: half the memory of
//! f32, and the same rounding as the reference runs the engine is checked against.
//! [`attention`] reads such a cache with llama.cpp's rounding points (see there).

use chrysalis_kernels::{AttentionShape, Backend, KernelError};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// A step that does not fit the sequence's cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvCacheError {
    /// The step would take the sequence past its context length.
    #[error(
        "context full: {len} cached positions + {new} new exceeds the context length {max_len}"
    )]
    ContextFull {
        /// Positions already cached.
        len: usize,
        /// Positions the step adds.
        new: usize,
        /// The context length.
        max_len: usize,
    },
}

/// Keys and values of one sequence, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_dim: usize,
    max_len: usize,
    /// Committed positions.
    len: usize,
    /// Per layer, `(positions, kv_dim)` keys; may hold uncommitted rows during a step.
    keys: Vec<Vec<f16>>,
    /// Per layer, `(positions, kv_dim)` values, same shape as `keys`.
    values: Vec<Vec<f16>>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_dim` floats per position, holding at
    /// most `max_len` positions. Allocates nothing until positions are appended.
    pub fn new(n_layers: usize, kv_dim: usize, max_len: usize) -> Self {
        Self {
            kv_dim,
            max_len,
            len: 0,
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
        }
    }

    /// Committed positions: the position the next token will take.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers this cache was made for.
    pub fn layers(&self) -> usize {
        self.keys.len()
    }

    /// Values per position and layer (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// The most positions this cache may hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes of cached keys and values currently allocated.
    pub fn allocated_bytes(&self) -> usize {
        let floats: usize = self
            .keys
            .iter()
            .chain(&self.values)
            .map(Vec::capacity)
            .sum();
        floats * size_of::<f16>()
    }

    /// Checks that `new` more positions fit, before a step writes anything.
    pub fn check_room(&self, new: usize) -> Result<(), KvCacheError> {
        match self.len.checked_add(new) {
            Some(total) if total <= self.max_len => Ok(()),
            _ => Err(KvCacheError::ContextFull {
                len: self.len,
                new,
                max_len: self.max_len,
            }),
        }
    }

    /// Appends the rows `k, v (n_new, kv_dim)` of the current step to `layer`, rounded
    /// to f16, and returns all of that layer's keys and values, `(len + n_new, kv_dim)`
    /// each.
    ///
    /// The caller has checked room with [`KvCache::check_room`] and passes rows of
    /// `kv_dim` floats; both are invariants of the forward pass, not input.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> (&[f16], &[f16]) {
        debug_assert_eq!(k.len(), v.len());
        debug_assert_eq!(k.len() % self.kv_dim.max(1), 0);
        let keys = &mut self.keys[layer];
        let values = &mut self.values[layer];
        extend_rounded(keys, k);
        extend_rounded(values, v);
        (keys, values)
    }

    /// Makes the rows appended since the last commit part of the sequence: `n_new`
    /// positions, which every layer must have received.
    pub fn commit(&mut self, n_new: usize) {
        self.len += n_new;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.kv_dim));
    }

    /// Drops rows appended since the last commit (after a failed step).
    pub fn rollback(&mut self) {
        self.truncate(self.len);
    }

    /// Forgets every position from `len` on (no effect if `len >= self.len()`), so a
    /// sequence can be rewound and continued differently.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len * self.kv_dim;
        for rows in self.keys.iter_mut().chain(self.values.iter_mut()) {
            rows.truncate(keep);
        }
    }
}

/// Appends `new` to `rows`, each value rounded to the nearest f16.
fn extend_rounded(rows: &mut Vec<f16>, new: &[f32]) {
    let start = rows.len();
    rows.resize(start + new.len(), f16::ZERO);
    rows[start..].convert_from_f32_slice(new);
}

/// Buffers [`attention`] reuses between calls.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    queries: Vec<f32>,
    scores: Vec<f32>,
}

/// Causal attention of one sequence's queries against one layer of its f16 cache:
/// `q, out (n_new, n_heads * head_dim)`, `keys, values (first_pos + n_new, n_kv_heads *
/// head_dim)`, scale `1 / sqrt(head_dim)`, query head `h` reading KV head
/// `h / (n_heads / n_kv_heads)`.
///
/// The rounding points are those of llama.cpp's CPU attention over its default f16
/// cache (the non-flash path, two matrix products with an f16 left operand): the queries
/// are rounded to f16 for the `q . k` products, and the softmax probabilities are
/// rounded to f16 for the products with `v`; sums run in f32 and the softmax is the
/// backend's (GGML's `soft_max`). Measured on SmolLM2 against llama.cpp's
/// logits, leaving out either rounding roughly doubles the error (see
/// `tests/smollm2_llama.rs`).
///
/// The shapes are invariants of the forward pass, which checks them before a step.
pub fn attention(
    backend: &dyn Backend,
    shape: AttentionShape,
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    out: &mut [f32],
    s: &mut AttentionScratch,
) -> Result<(), KernelError> {
    let hd = shape.head_dim;
    let stride = shape.n_kv_heads * hd;
    debug_assert_eq!(q.len(), shape.n_new * shape.n_heads * hd);
    debug_assert_eq!(keys.len(), (shape.first_pos + shape.n_new) * stride);
    debug_assert_eq!(out.len(), q.len());
    if q.is_empty() {
        return Ok(());
    }
    widen(keys, &mut s.keys);
    widen(values, &mut s.values);
    s.queries.clear();
    s.queries
        .extend(q.iter().map(|&x| f16::from_f32(x).to_f32()));
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    for (index, out_head) in out.chunks_exact_mut(hd).enumerate() {
        let (token, head) = (index / shape.n_heads, index % shape.n_heads);
        let offset = (head / group) * hd;
        let q_head = &s.queries[index * hd..(index + 1) * hd];
        let visible = shape.first_pos + token + 1;
        s.scores.clear();
        s.scores.extend(
            s.keys
                .chunks_exact(stride)
                .take(visible)
                .map(|row| dot(q_head, &row[offset..offset + hd]) * scale),
        );
        backend.softmax(&mut s.scores)?;
        // llama.cpp converts the probabilities to the cache's type for the product with v.
        for p in s.scores.iter_mut() {
            *p = f16::from_f32(*p).to_f32();
        }
        out_head.fill(0.0);
        for (&p, row) in s.scores.iter().zip(s.values.chunks_exact(stride)) {
            for (o, &v) in out_head.iter_mut().zip(&row[offset..offset + hd]) {
                *o += p * v;
            }
        }
    }
    Ok(())
}

/// `wide = narrow` converted to f32, reusing `wide`'s allocation.
fn widen(narrow: &[f16], wide: &mut Vec<f32>) {
    wide.clear();
    wide.resize(narrow.len(), 0.0);
    narrow.convert_to_f32_slice(wide);
}

/// `a . b` in f32, over eight partial sums so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_commit_and_bounds() {
        let mut c = KvCache::new(2, 3, 4);
        assert!(c.is_empty());
        c.check_room(4).unwrap();
        let (k, v) = c.append(0, &[1.0; 6], &[2.0; 6]);
        assert_eq!((k.len(), v.len()), (6, 6));
        c.append(1, &[1.0; 6], &[2.0; 6]);
        c.commit(2);
        assert_eq!(c.len(), 2);
        let (k, _) = c.append(0, &[3.0; 3], &[4.0; 3]);
        assert_eq!(&k[6..], &[f16::from_f32(3.0); 3]);
        c.rollback();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.check_room(3),
            Err(KvCacheError::ContextFull {
                len: 2,
                new: 3,
                max_len: 4
            })
        );
        assert!(c.check_room(usize::MAX).is_err());
        let msg = c.check_room(3).unwrap_err().to_string();
        assert!(msg.contains("context length 4"), "{msg}");
    }

    #[test]
    fn rollback_restores_every_layer() {
        let mut c = KvCache::new(3, 2, 10);
        for layer in 0..3 {
            c.append(layer, &[1.0; 2], &[1.0; 2]);
        }
        c.commit(1);
        c.append(0, &[5.0; 4], &[5.0; 4]);
        c.append(1, &[5.0; 4], &[5.0; 4]);
        c.rollback();
        assert_eq!(c.len(), 1);
        c.truncate(5);
        assert_eq!(c.len(), 1, "truncate never grows");
        for layer in 0..3 {
            let (k, v) = c.append(layer, &[], &[]);
            assert_eq!((k, v), (&[f16::ONE; 2][..], &[f16::ONE; 2][..]));
        }
        c.rollback();
        c.truncate(0);
        assert!(c.is_empty());
        assert_eq!(c.append(2, &[], &[]).0.len(), 0);
    }

    /// Runs [`attention`] on the portable CPU backend.
    fn attend(shape: AttentionShape, q: &[f32], c: &KvCache, out: &mut [f32]) {
        let backend = chrysalis_kernels::CpuBackend::new();
        let (keys, values) = (&c.keys[0], &c.values[0]);
        attention(
            &backend,
            shape,
            q,
            keys,
            values,
            out,
            &mut AttentionScratch::default(),
        )
        .unwrap();
    }

    #[test]
    fn attention_is_causal_and_shares_kv_heads() {
        // Two query heads share one KV head of two elements; two new positions.
        let shape = AttentionShape {
            n_new: 2,
            first_pos: 0,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let mut c = KvCache::new(1, 2, 4);
        c.append(0, &[1.0, 0.0, 0.0, 1.0], &[2.0, 4.0, 6.0, 8.0]);
        // Token 0 sees only position 0: its output is value row 0 whatever the query.
        // Token 1's zero queries weigh both positions equally.
        let q = [5.0, -3.0, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0];
        let mut out = [0.0f32; 8];
        attend(shape, &q, &c, &mut out);
        assert_eq!(out, [2.0, 4.0, 2.0, 4.0, 4.0, 6.0, 4.0, 6.0]);
    }

    #[test]
    fn attention_weighs_by_scaled_scores() {
        let shape = AttentionShape {
            n_new: 1,
            first_pos: 1,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let mut c = KvCache::new(1, 2, 2);
        c.append(0, &[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]);
        let q = [1.0, 1.0];
        let mut out = [0.0f32; 2];
        attend(shape, &q, &c, &mut out);
        // Scores 0 and 2 / sqrt(2): the second position's weight, rounded to f16.
        let second = 1.0 / (1.0 + (-(2.0f32).sqrt()).exp());
        let want = f16::from_f32(second).to_f32();
        assert!((out[0] - want).abs() < 1e-6, "{} vs {want}", out[0]);
        assert_eq!(out[0], out[1]);
    }
}
