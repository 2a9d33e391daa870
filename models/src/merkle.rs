//! The model root hash: a Merkle root over 1 MiB chunks of every model file.
//!
//! # Definition (version 1; changing it changes every published model root)
//!
//! - Chunk size `C` = 1 MiB = 1 048 576 bytes ([`CHUNK_SIZE`]).
//! - Files are taken in ascending byte order of their relative path (UTF-8, `/`-separated,
//!   as written in `manifest.json`).
//! - Each file is cut into chunks of `C` bytes; the last chunk may be shorter. An empty
//!   file has exactly one chunk, of zero bytes, so its presence still counts.
//! - Leaf for chunk `i` (counted from 0 within its file) of the file at `path`:
//!   `SHA-256(0x00 ‖ u32_le(len(path)) ‖ path ‖ u64_le(i) ‖ chunk bytes)`.
//!   The length prefix keeps `("ab", "c…")` and `("a", "bc…")` apart; the index and the
//!   path stop a chunk from being moved within or between files.
//! - Leaves are listed file by file in that order, chunks in index order.
//! - Each level pairs neighbours: `SHA-256(0x01 ‖ left ‖ right)`. A level with an odd
//!   count promotes its last node unchanged to the next level. The domain bytes 0x00 and
//!   0x01 keep a leaf from being passed off as an inner node.
//! - The root is the single node left. With no leaves at all, the root is
//!   `SHA-256(0x02)` (a manifest with no files is refused anyway).
//!
//! Leaves are independent, so a loader hashes chunks in parallel and only the small
//! tree on top is sequential.

use sha2::{Digest, Sha256};

/// Bytes per chunk: 1 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// The leaf hash of chunk `index` of the file at `path`.
pub fn leaf_hash(path: &str, index: u64, chunk: &[u8]) -> Hash {
    let path_len = u32::try_from(path.len()).unwrap_or(u32::MAX);
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(path_len.to_le_bytes());
    h.update(path.as_bytes());
    h.update(index.to_le_bytes());
    h.update(chunk);
    h.finalize().into()
}

/// The inner node over two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over leaves in order (see the module documentation for the odd-node rule).
pub fn root_of_leaves(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest([0x02]).into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [only] => *only,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

/// The `(index, bytes)` chunks of one file, as the definition cuts them (an empty file
/// has one empty chunk).
pub fn chunks(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let empty: &[u8] = &[];
    let whole = (!bytes.is_empty()).then_some(bytes.chunks(CHUNK_SIZE));
    let only_empty = bytes.is_empty().then_some((0u64, empty));
    whole
        .into_iter()
        .flatten()
        .zip(0u64..)
        .map(|(chunk, i)| (i, chunk))
        .chain(only_empty)
}

/// The model root of a set of `(path, bytes)` files, in any order (they are sorted here).
/// Leaves are hashed in parallel across all chunks of all files.
pub fn model_root<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Hash {
    use rayon::prelude::*;
    let mut files: Vec<(&str, &[u8])> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let all_chunks: Vec<(&str, u64, &[u8])> = files
        .iter()
        .flat_map(|&(path, bytes)| chunks(bytes).map(move |(i, chunk)| (path, i, chunk)))
        .collect();
    let leaves: Vec<Hash> = all_chunks
        .par_iter()
        .map(|&(path, i, chunk)| leaf_hash(path, i, chunk))
        .collect();
    root_of_leaves(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(parts: &[&[u8]]) -> Hash {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn leaf_follows_the_written_definition() {
        let expected = sha(&[
            &[0],
            &3u32.to_le_bytes(),
            b"a.b",
            &7u64.to_le_bytes(),
            b"xyz",
        ]);
        assert_eq!(leaf_hash("a.b", 7, b"xyz"), expected);
    }

    #[test]
    fn known_vectors_computed_with_python_hashlib() {
        // hashlib.sha256(b"\x00" + struct.pack("<I", 1) + b"a" + struct.pack("<Q", 0) + b"hi!")
        let one = model_root([("a", &b"hi!"[..])]);
        assert_eq!(
            hex::encode(one),
            "5bcd9627fe8e9b5f36ce870e9a4ed9437d0c3cea46e94b3a69bd84392cad1a47"
        );
        // Three files, given out of order: node(node(leaf a.json, leaf b.bin), leaf c).
        let three = model_root([
            ("c", &b"xyz"[..]),
            ("a.json", &b"{}"[..]),
            ("b.bin", &b""[..]),
        ]);
        assert_eq!(
            hex::encode(three),
            "fdf4b1c592b0a1dd61e0b200c2835ef36539e4e2832b1636e6a713aabb1fa521"
        );
    }

    #[test]
    fn three_leaves_promote_the_odd_one() {
        let l: Vec<Hash> = (0u8..3).map(|i| sha(&[&[i]])).collect();
        let expected = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        assert_eq!(root_of_leaves(&l), expected);
    }

    #[test]
    fn files_are_ordered_by_path_and_chunked() {
        let big = vec![7u8; CHUNK_SIZE + 5];
        let root = model_root([("b", &big[..]), ("a", &b""[..])]);
        let leaves = [
            leaf_hash("a", 0, &[]),
            leaf_hash("b", 0, &big[..CHUNK_SIZE]),
            leaf_hash("b", 1, &big[CHUNK_SIZE..]),
        ];
        assert_eq!(root, root_of_leaves(&leaves));
        assert_eq!(chunks(&big).count(), 2);
        assert_eq!(chunks(&[]).collect::<Vec<_>>(), vec![(0, &[][..])]);
    }

    #[test]
    fn any_flipped_byte_changes_the_root() {
        let mut data = vec![0u8; 2 * CHUNK_SIZE + 3];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let base = model_root([("w", &data[..])]);
        for pos in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 2] {
            let mut changed = data.clone();
            changed[pos] ^= 0x01;
            assert_ne!(model_root([("w", &changed[..])]), base, "byte {pos}");
        }
        assert_ne!(model_root([("v", &data[..])]), base, "renamed file");
        assert_ne!(
            model_root([("w", &data[..data.len() - 1])]),
            base,
            "truncated"
        );
    }

    #[test]
    fn empty_tree_has_a_defined_root() {
        assert_eq!(root_of_leaves(&[]), sha(&[&[2]]));
    }
}
