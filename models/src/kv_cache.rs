//! Per-sequence key/value cache.
//!
//! Each sequence owns one [`KvCache`]: for every layer, the keys and values of all its
//! positions so far, row-major `(positions, n_kv_heads * head_dim)` f32. Memory grows
//! with the sequence and is bounded by the context length given at creation: a step that
//! would go past it is refused before anything is written.
//!
//! A forward step appends the new rows layer by layer ([`KvCache::append`]) and then
//! either [`KvCache::commit`]s them or, if the step failed half way,
//! [`KvCache::rollback`]s to the last committed length, so a cache never holds a
//! partial step.

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
    keys: Vec<Vec<f32>>,
    /// Per layer, `(positions, kv_dim)` values, same shape as `keys`.
    values: Vec<Vec<f32>>,
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

    /// Floats per position and layer (`n_kv_heads * head_dim`).
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
        floats * size_of::<f32>()
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

    /// Appends the rows `k, v (n_new, kv_dim)` of the current step to `layer` and
    /// returns all of that layer's keys and values, `(len + n_new, kv_dim)` each.
    ///
    /// The caller has checked room with [`KvCache::check_room`] and passes rows of
    /// `kv_dim` floats; both are invariants of the forward pass, not input.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> (&[f32], &[f32]) {
        debug_assert_eq!(k.len(), v.len());
        debug_assert_eq!(k.len() % self.kv_dim.max(1), 0);
        let keys = &mut self.keys[layer];
        let values = &mut self.values[layer];
        keys.extend_from_slice(k);
        values.extend_from_slice(v);
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
        assert_eq!(&k[6..], &[3.0; 3]);
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
            assert_eq!((k, v), (&[1.0f32; 2][..], &[1.0f32; 2][..]));
        }
        c.rollback();
        c.truncate(0);
        assert!(c.is_empty());
        assert_eq!(c.append(2, &[], &[]).0.len(), 0);
    }
}
