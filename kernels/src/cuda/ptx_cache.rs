//! Compiled kernels (CUBIN, or PTX as the fallback) built once per (architecture,
//! source): in memory for the process, and on disk under `$CHRYSALIS_HOME/cache/ptx/`
//! when that variable is set.
//!
//! The key is the SHA-256 of the output kind, the NVRTC version, the architecture, the
//! program name and the CUDA C text, so an edited kernel or another NVRTC never reuses a
//! stale build. The disk cache is a convenience for development hosts: this is code the
//! GPU runs on plaintext, so the directory must be as trusted as the binary (in the
//! guest image it is unset and only the in-memory cache is used).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::nvrtc::{Nvrtc, NvrtcError};
use super::KernelSource;

/// What NVRTC is asked to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Machine code for `sm_NN`: loads on any driver of the same CUDA major version.
    Cubin,
    /// PTX for `compute_NN`, JIT-compiled by the driver (needs a driver as new as NVRTC).
    Ptx,
}

impl Output {
    fn extension(self) -> &'static str {
        match self {
            Self::Cubin => "cubin",
            Self::Ptx => "ptx",
        }
    }
}

/// The process-wide cache of compiled kernel sources, by key.
fn memory() -> &'static Mutex<HashMap<String, Vec<u8>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The hex cache key of `source` compiled to `output` by NVRTC `version` for `sm`.
pub fn cache_key(output: Output, version: (i32, i32), sm: u32, source: &KernelSource) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{} nvrtc {}.{} sm {sm}\0",
        output.extension(),
        version.0,
        version.1
    ));
    hasher.update(source.name.as_bytes());
    hasher.update([0]);
    hasher.update(source.code.as_bytes());
    hasher.finalize().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// `$CHRYSALIS_HOME/cache/ptx`, if `CHRYSALIS_HOME` is set.
fn disk_dir() -> Option<PathBuf> {
    std::env::var_os("CHRYSALIS_HOME").map(|home| Path::new(&home).join("cache/ptx"))
}

/// `source` compiled to `output` for `sm`: from memory, else from disk, else compiled
/// (and then stored in both).
pub fn build(
    nvrtc: &Nvrtc,
    source: &KernelSource,
    sm: u32,
    output: Output,
) -> Result<Vec<u8>, NvrtcError> {
    let key = cache_key(output, nvrtc.version()?, sm, source);
    if let Some(hit) = memory().lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(hit);
    }
    let file = disk_dir().map(|dir| {
        dir.join(format!(
            "{}-sm{sm}-{key}.{}",
            source.name,
            output.extension()
        ))
    });
    let cached = file.as_ref().and_then(|f| std::fs::read(f).ok());
    let built = match cached {
        // A truncated write (crash mid-store) would lack the entry points: rebuild.
        Some(bytes) if has_entry_points(&bytes, source) => bytes,
        _ => {
            let bytes = match output {
                Output::Cubin => nvrtc.compile_cubin(source.name, source.code, sm)?,
                Output::Ptx => nvrtc
                    .compile_ptx(source.name, source.code, sm)?
                    .into_bytes(),
            };
            if let Some(file) = &file {
                store(file, &bytes);
            }
            bytes
        }
    };
    if let Ok(mut m) = memory().lock() {
        m.insert(key, built.clone());
    }
    Ok(built)
}

/// Whether a build names every entry point `source` promises (PTX `.entry` lines, or
/// the symbol names in a CUBIN's string table).
pub fn has_entry_points(build: &[u8], source: &KernelSource) -> bool {
    source.entry_points.iter().all(|entry| {
        build
            .windows(entry.len() + 1)
            .any(|w| w.starts_with(entry.as_bytes()) && matches!(w[entry.len()], 0 | b'('))
    })
}

/// Writes `bytes` to `file` through a temporary name, so readers never see half a
/// file. Failure only costs a rebuild next time, so it is not an error.
fn store(file: &Path, bytes: &[u8]) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
