//! `image.lock`: every external input of the guest image, pinned by version and SHA-256.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The lock file's name at the workspace root.
pub const LOCK_FILE: &str = "image.lock";

/// The parsed lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageLock {
    /// Free text for readers of the file.
    #[serde(default)]
    pub comment: String,
    /// Format version; only 1 exists.
    pub lock_version: u32,
    /// Where Debian packages come from.
    pub debian: DebianSource,
    /// The guest kernel package.
    pub kernel: KernelPin,
    /// The edk2 source package OVMF is built from.
    pub edk2: Edk2Pin,
    /// The pinned Debian root OVMF is compiled in (compiler, assembler, iasl, Python).
    pub build_root: super::build_root::BuildRootPin,
    /// The Rust toolchain the enclave is built with.
    pub rust: RustPin,
}

/// Debian archive settings of the private apt directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// Release name, e.g. `trixie`.
    pub suite: String,
    /// `URI SUITE COMPONENT` lines; each becomes a `deb` and a `deb-src` entry.
    pub mirrors: Vec<String>,
    /// The keyring that signs the suite's Release files.
    pub keyring: String,
}

/// The pinned kernel binary package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Binary package name.
    pub package: String,
    /// Exact Debian version.
    pub version: String,
    /// The `.deb` file name apt downloads.
    pub file: String,
    /// SHA-256 of the `.deb`.
    pub sha256: String,
    /// `uname -r` of the kernel: the directory under `/usr/lib/modules` and the vmlinuz suffix.
    pub release: String,
    /// Modules the enclave needs; their dependencies are added from `depends=`.
    pub modules: Vec<String>,
}

/// The pinned edk2 source package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edk2Pin {
    /// Source package name.
    pub source: String,
    /// Exact Debian version.
    pub version: String,
    /// The orig and debian tarballs (the `.dsc` is not needed: the build applies the
    /// patches itself).
    pub files: Vec<PinnedFile>,
    /// The platform description built.
    pub platform: String,
    /// The fixed absolute directory the build runs in (edk2 embeds paths).
    pub build_dir: String,
}

/// One pinned download.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedFile {
    /// File name as in the archive.
    pub file: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The pinned Rust toolchain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustPin {
    /// Must equal `rust-toolchain.toml`'s channel.
    pub toolchain: String,
    /// The enclave's target triple.
    pub target: String,
    /// `SOURCE_DATE_EPOCH` for every build step.
    pub source_date_epoch: u64,
}

impl ImageLock {
    /// Reads and checks the lock file at the workspace root `root`.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let path = root.join(LOCK_FILE);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("could not read the image lock {}", path.display()))?;
        let lock: ImageLock = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid image lock", path.display()))?;
        lock.check(root)?;
        Ok(lock)
    }

    /// Writes the lock back to the workspace root `root` (through a temporary file, so
    /// an interrupted write leaves the old lock whole).
    pub fn write(&self, root: &Path) -> anyhow::Result<()> {
        let path = root.join(LOCK_FILE);
        let tmp = root.join(format!("{LOCK_FILE}.partial"));
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        fs::write(&tmp, text).with_context(|| format!("could not write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("could not replace {}", path.display()))
    }

    fn check(&self, root: &Path) -> anyhow::Result<()> {
        if self.lock_version != 1 {
            bail!(
                "image lock version {} is unknown: expected 1",
                self.lock_version
            );
        }
        let toolchain = fs::read_to_string(root.join("rust-toolchain.toml"))
            .context("could not read rust-toolchain.toml")?;
        let pinned = format!("channel = \"{}\"", self.rust.toolchain);
        if !toolchain.contains(&pinned) {
            bail!(
                "rust-toolchain.toml does not pin {pinned:?} as image.lock does: \
                 update both together"
            );
        }
        for hash in
            std::iter::once(&self.kernel.sha256).chain(self.edk2.files.iter().map(|f| &f.sha256))
        {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("image lock hash {hash:?} is not 64 hex characters");
            }
        }
        Ok(())
    }
}

/// SHA-256 of a file, lowercase hex, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("could not read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fails unless `path` exists and hashes to `expected`.
pub fn verify_file(path: &Path, expected: &str) -> anyhow::Result<()> {
    let found = sha256_file(path)?;
    if found != expected {
        bail!(
            "{} has SHA-256 {found}, but image.lock pins {expected}: refusing a changed input",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_lock_parses_and_matches_the_toolchain() {
        let lock = ImageLock::load(&crate::util::workspace_root()).expect("image.lock is valid");
        assert!(lock.kernel.file.starts_with(&lock.kernel.package));
        assert_eq!(lock.edk2.files.len(), 2, "orig and debian tarballs");
        assert!(Path::new(&lock.edk2.build_dir).is_absolute());
    }

    #[test]
    fn a_changed_file_is_refused_naming_both_hashes() {
        let dir = std::env::temp_dir().join(format!("chrysalis-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("input");
        fs::write(&file, b"pinned bytes").expect("write");
        let good = sha256_hex(b"pinned bytes");
        verify_file(&file, &good).expect("unchanged file passes");
        fs::write(&file, b"pinned bytez").expect("write");
        let err = verify_file(&file, &good).expect_err("changed file fails");
        let text = err.to_string();
        assert!(
            text.contains(&good) && text.contains(&sha256_hex(b"pinned bytez")),
            "{text}"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
