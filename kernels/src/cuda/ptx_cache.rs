//! PTX compiled once per (architecture, source): in memory for the process, and on disk
//! under `$CHRYSALIS_HOME/cache/ptx/` when that variable is set.
//!
//! The key is the SHA-256 of the NVRTC version, the architecture, the program name and
//! the CUDA C text, so an edited kernel or another NVRTC never reuses stale PTX. The disk
//! cache is a convenience for development hosts: PTX is code the GPU runs on plaintext,
//! so the directory must be as trusted as the binary (in the guest image it is unset and
//! only the in-memory cache is used).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::nvrtc::{Nvrtc, NvrtcError};
use super::KernelSource;

/// The process-wide cache of compiled kernel sources.
fn memory() -> &'static Mutex<HashMap<String, String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The hex cache key of `source` compiled by NVRTC `version` for `compute_{sm}`.
pub fn cache_key(version: (i32, i32), sm: u32, source: &KernelSource) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("nvrtc {}.{} sm {sm}\0", version.0, version.1));
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

/// The PTX of `source` for `compute_{sm}`: from memory, else from disk, else compiled
/// (and then stored in both).
pub fn ptx_for(nvrtc: &Nvrtc, source: &KernelSource, sm: u32) -> Result<String, NvrtcError> {
    let key = cache_key(nvrtc.version()?, sm, source);
    if let Some(ptx) = memory().lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(ptx);
    }
    let file = disk_dir().map(|dir| dir.join(format!("{}-sm{sm}-{key}.ptx", source.name)));
    let cached = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
    let ptx = match cached {
        // A truncated write (crash mid-store) would lack the entry points: recompile.
        Some(ptx) if has_entry_points(&ptx, source) => ptx,
        _ => {
            let ptx = nvrtc.compile_ptx(source.name, source.code, sm)?;
            if let Some(file) = &file {
                store(file, &ptx);
            }
            ptx
        }
    };
    if let Ok(mut m) = memory().lock() {
        m.insert(key, ptx.clone());
    }
    Ok(ptx)
}

/// Whether `ptx` defines every entry point `source` promises.
pub fn has_entry_points(ptx: &str, source: &KernelSource) -> bool {
    source
        .entry_points
        .iter()
        .all(|entry| ptx.contains(&format!(".entry {entry}(")))
}

/// Writes `ptx` to `file` through a temporary name, so readers never see half a file.
/// Failure only costs a recompilation next time, so it is not an error.
fn store(file: &Path, ptx: &str) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, ptx).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
