//! The kernel's configfs TSM report interface (`/sys/kernel/config/tsm/report`).
//!
//! Each report is an entry directory: create it, write REPORT_DATA to `inblob`, read
//! the report from `outblob` and the certificate table from `auxblob` (when the host
//! supplied one), check `generation` did not move (another writer would have raced
//! us), remove the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::AttestError;

/// Where the kernel mounts the TSM report interface.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Largest blob read from configfs (an SNP report is 1184 bytes, the certificate
/// table a few KiB).
const MAX_BLOB: u64 = 64 * 1024;

/// The TSM report interface rooted at a directory.
#[derive(Debug)]
pub struct TsmReports {
    root: PathBuf,
    next: AtomicU64,
}

/// What one TSM report entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmOutput {
    /// `outblob`: the report.
    pub report: Vec<u8>,
    /// `auxblob`: the host's certificate table, when present.
    pub auxblob: Option<Vec<u8>>,
}

/// One report entry directory.
#[derive(Debug)]
pub struct TsmEntry {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AttestError + '_ {
    move |source| AttestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, AttestError> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    // configfs reports size 4096 or 0 for binary attributes; read up to the bound.
    if len > MAX_BLOB {
        return Err(AttestError::Malformed {
            what: "TSM blob",
            found: format!("{len} bytes in {}", path.display()),
            expected: format!("at most {MAX_BLOB}"),
        });
    }
    fs::read(path).map_err(io_err(path))
}

impl TsmReports {
    /// The interface at its standard path, if the kernel provides it.
    pub fn detect() -> Option<Self> {
        let root = Path::new(TSM_REPORT_ROOT);
        root.is_dir().then(|| Self::at(root))
    }

    /// The interface rooted at `root` (tests point this at a temporary directory).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            next: AtomicU64::new(0),
        }
    }

    /// Creates a fresh entry directory.
    pub fn create_entry(&self) -> Result<TsmEntry, AttestError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join(format!("chrysalis-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(TsmEntry { dir })
    }

    /// Requests one report carrying `report_data`.
    pub fn report(&self, report_data: &[u8; 64]) -> Result<TsmOutput, AttestError> {
        let entry = self.create_entry()?;
        entry.write_inblob(report_data)?;
        entry.collect()
    }
}

impl TsmEntry {
    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes REPORT_DATA (the kernel generates the report on the next read).
    pub fn write_inblob(&self, report_data: &[u8; 64]) -> Result<(), AttestError> {
        let path = self.dir.join("inblob");
        fs::write(&path, report_data).map_err(io_err(&path))
    }

    fn generation(&self) -> Result<String, AttestError> {
        let path = self.dir.join("generation");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(text.trim().to_string())
    }

    /// Reads `outblob` and `auxblob`, checking `generation` stayed the same.
    pub fn collect(&self) -> Result<TsmOutput, AttestError> {
        let before = self.generation()?;
        let report = read_bounded(&self.dir.join("outblob"))?;
        let aux_path = self.dir.join("auxblob");
        let auxblob = match aux_path.exists() {
            true => Some(read_bounded(&aux_path)?).filter(|b| !b.is_empty()),
            false => None,
        };
        let after = self.generation()?;
        if before != after {
            return Err(AttestError::Malformed {
                what: "TSM report entry",
                found: format!("generation {before} then {after}"),
                expected: "no other writer during the request".into(),
            });
        }
        Ok(TsmOutput { report, auxblob })
    }
}

impl Drop for TsmEntry {
    fn drop(&mut self) {
        // On configfs, rmdir removes the entry with its attribute files (which cannot
        // be unlinked); a plain directory (tests) needs its files removed first.
        // Failure only leaks an entry.
        if fs::remove_dir(&self.dir).is_err() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory that imitates the configfs report root.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tsm-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// What the kernel does after `inblob` is written: fill the attribute files.
    fn kernel_answers(entry: &TsmEntry, report: &[u8], aux: Option<&[u8]>) {
        fs::write(entry.dir().join("outblob"), report).unwrap();
        fs::write(entry.dir().join("generation"), "1\n").unwrap();
        if let Some(aux) = aux {
            fs::write(entry.dir().join("auxblob"), aux).unwrap();
        }
    }

    #[test]
    fn an_entry_round_trips_report_data_and_blobs() {
        let root = FakeRoot::new("roundtrip");
        let tsm = TsmReports::at(&root.0);
        let entry = tsm.create_entry().unwrap();
        entry.write_inblob(&[0x5a; 64]).unwrap();
        assert_eq!(
            fs::read(entry.dir().join("inblob")).unwrap(),
            vec![0x5a; 64]
        );
        kernel_answers(&entry, &[1u8; 1184], Some(b"table"));
        let out = entry.collect().unwrap();
        assert_eq!(out.report, vec![1u8; 1184]);
        assert_eq!(out.auxblob.as_deref(), Some(&b"table"[..]));
        let dir = entry.dir().to_path_buf();
        drop(entry);
        assert!(!dir.exists(), "the entry is removed after use");
    }

    #[test]
    fn missing_auxblob_means_no_host_certificates() {
        let root = FakeRoot::new("noaux");
        let tsm = TsmReports::at(&root.0);
        let entry = tsm.create_entry().unwrap();
        kernel_answers(&entry, &[2u8; 1184], None);
        assert_eq!(entry.collect().unwrap().auxblob, None);
    }

    #[test]
    fn entries_get_distinct_names_and_missing_outblob_is_an_error() {
        let root = FakeRoot::new("names");
        let tsm = TsmReports::at(&root.0);
        let (a, b) = (tsm.create_entry().unwrap(), tsm.create_entry().unwrap());
        assert_ne!(a.dir(), b.dir());
        fs::write(a.dir().join("generation"), "0").unwrap();
        let err = a.collect().unwrap_err();
        assert!(err.to_string().contains("outblob"), "{err}");
    }
}
