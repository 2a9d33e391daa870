//! `manifest.json`: the list of model files, their sizes and SHA-256s, and the root.
//!
//! ```json
//! { "name": "smollm2-135m",
//!   "files": [{ "path": "config.json", "size": 712, "sha256": "…" }, …],
//!   "chunk_size": 1048576,
//!   "root": "…64 hex digits…" }
//! ```
//!
//! The manifest itself is not covered by the root: it is an index that says which files
//! the root covers. A loader recomputes the root from the files' bytes and compares it
//! with `root` (and with a root it was told to expect), so a tampered manifest can only
//! make loading fail, never make other bytes acceptable.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dir::ModelError;
use crate::merkle::{self, Hash, CHUNK_SIZE};

/// The name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Most files a manifest may list.
pub const MAX_FILES: usize = 64;

/// Longest file path a manifest may name.
const MAX_PATH_LEN: usize = 255;

/// Largest manifest we read (it is a small JSON index).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// One model file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the model directory: a plain file name.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// The model directory's index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's short name (for example `smollm2-135m`).
    pub name: String,
    /// Every file the root covers, sorted by path.
    pub files: Vec<FileEntry>,
    /// Chunk size of the Merkle leaves; always [`CHUNK_SIZE`].
    pub chunk_size: u64,
    /// The model root hash, lowercase hex.
    pub root: String,
}

impl Manifest {
    /// Builds the manifest of `files` (`(path, bytes)`), computing sizes, digests and root.
    pub fn build(name: &str, files: &[(&str, &[u8])]) -> Self {
        let mut entries: Vec<FileEntry> = files
            .iter()
            .map(|(path, bytes)| FileEntry {
                path: (*path).to_owned(),
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            })
            .collect();
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let root = merkle::model_root(files.iter().copied());
        Self {
            name: name.to_owned(),
            files: entries,
            chunk_size: CHUNK_SIZE as u64,
            root: hex::encode(root),
        }
    }

    /// Parses manifest bytes and checks their shape (not the files: see `ModelDir`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| ModelError::Json {
            file: MANIFEST_FILE,
            reason: e.to_string(),
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The root as bytes.
    pub fn root_bytes(&self) -> Result<Hash, ModelError> {
        parse_hash(&self.root).ok_or_else(|| ModelError::Manifest {
            reason: format!("root: expected 64 hex digits, found {:?}", self.root),
        })
    }

    /// Checks paths, counts, order and hex fields.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::Manifest { reason });
        if self.chunk_size != CHUNK_SIZE as u64 {
            return bad(format!(
                "chunk_size: expected {CHUNK_SIZE}, found {}",
                self.chunk_size
            ));
        }
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return bad(format!(
                "files: expected 1..={MAX_FILES} entries, found {}",
                self.files.len()
            ));
        }
        for pair in self.files.windows(2) {
            if pair[0].path.as_bytes() >= pair[1].path.as_bytes() {
                return bad(format!(
                    "files: expected unique paths in ascending order, found {:?} before {:?}",
                    pair[0].path, pair[1].path
                ));
            }
        }
        for file in &self.files {
            check_path(&file.path)?;
            if parse_hash(&file.sha256).is_none() {
                return bad(format!(
                    "{}: sha256: expected 64 hex digits, found {:?}",
                    file.path, file.sha256
                ));
            }
        }
        self.root_bytes().map(|_| ())
    }

    /// The entry for `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Serializes with two-space indentation and a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// A manifest path must be a plain file name: no separators, no `.`/`..`, printable ASCII.
fn check_path(path: &str) -> Result<(), ModelError> {
    let plain = !path.is_empty()
        && path.len() <= MAX_PATH_LEN
        && path != "."
        && path != ".."
        && path != MANIFEST_FILE
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Ok(())
    } else {
        Err(ModelError::Manifest {
            reason: format!(
                "path: expected a plain file name (letters, digits, '.', '_', '-'; not the \
                 manifest itself), found {path:?}"
            ),
        })
    }
}

/// Parses 64 lowercase or uppercase hex digits.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::build("m", &[("b.json", b"{}"), ("a.bin", b"xyz")])
    }

    #[test]
    fn build_sorts_and_round_trips() {
        let m = sample();
        assert_eq!(m.files[0].path, "a.bin");
        assert_eq!(m.files[0].size, 3);
        let back = Manifest::from_json(m.to_json().as_bytes()).expect("valid manifest");
        assert_eq!(back, m);
    }

    #[test]
    fn refuses_paths_that_leave_the_directory() {
        for path in ["../x", "/etc/passwd", "a/b", "..", "", "manifest.json"] {
            let mut m = sample();
            m.files.truncate(1);
            m.files[0].path = path.to_owned();
            let err = m.validate().expect_err(path);
            assert!(err.to_string().contains("plain file name"), "{path}: {err}");
        }
    }

    #[test]
    fn refuses_other_chunk_sizes_duplicates_and_bad_hex() {
        let mut m = sample();
        m.chunk_size = 4096;
        assert!(m.validate().unwrap_err().to_string().contains("chunk_size"));
        let mut m = sample();
        m.files[1].path = m.files[0].path.clone();
        assert!(m.validate().unwrap_err().to_string().contains("ascending"));
        let mut m = sample();
        m.root = "zz".into();
        assert!(m.validate().unwrap_err().to_string().contains("root"));
        let mut m = sample();
        m.files.clear();
        assert!(m.validate().unwrap_err().to_string().contains("entries"));
    }
}
