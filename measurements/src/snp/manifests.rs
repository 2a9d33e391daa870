//! Published image manifests as reference values: the launch digests a client allows,
//! the minimum TCB per CPU generation, and where both came from.
//!
//! The manifests in `measurements/published/` are built into this crate
//! ([`Manifests::builtin`]), so every client compares the launch measurement by
//! default; [`Manifests::load`] reads others from a file or a directory instead.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::launch::MinTcbEntry;
use crate::snp::error::VerifyError;
use crate::snp::expect::{parse_hex_array, AllowedMeasurement, MinTcb};
use crate::snp::report::Processor;

/// Most bytes read from one manifest file; the published ones are a few KiB.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Every `*.json` file of `measurements/published/` at build time, sorted by name:
/// `(file name, contents)`. Written by `build.rs`, which reruns when the directory
/// changes.
pub const PUBLISHED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/published.rs"));

/// Where a list of manifests came from, named in every refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// Built into this binary from `measurements/published/` (the file names).
    BuiltIn(Vec<String>),
    /// Read at run time from a file or a directory (the files read).
    Path(PathBuf, Vec<String>),
}

impl fmt::Display for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn(names) => write!(f, "the built-in manifests ({})", list(names)),
            Self::Path(path, names) => {
                write!(f, "the manifests at {} ({})", path.display(), list(names))
            }
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names.join(", ")
}

/// A minimum TCB for each CPU generation; a generation left at the default is not
/// constrained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcbFloors {
    /// EPYC 7003.
    pub milan: MinTcb,
    /// EPYC 9004.
    pub genoa: MinTcb,
    /// EPYC 9005.
    pub turin: MinTcb,
}

impl TcbFloors {
    /// The minimum for one generation.
    pub fn get(&self, processor: Processor) -> MinTcb {
        match processor {
            Processor::Milan => self.milan,
            Processor::Genoa => self.genoa,
            Processor::Turin => self.turin,
        }
    }

    fn slot(&mut self, processor: Processor) -> &mut MinTcb {
        match processor {
            Processor::Milan => &mut self.milan,
            Processor::Genoa => &mut self.genoa,
            Processor::Turin => &mut self.turin,
        }
    }

    /// Raises the minimum of `processor` (every generation when `None`) to at least
    /// `min`, component by component. Nothing is ever lowered.
    pub fn raise(&mut self, processor: Option<Processor>, min: MinTcb) {
        let targets = match processor {
            Some(p) => vec![p],
            None => Processor::ALL.to_vec(),
        };
        for p in targets {
            let slot = self.slot(p);
            *slot = slot.raise(min);
        }
    }
}

/// A `--min-tcb` argument: `[milan:|genoa:|turin:]bootloader=N,tee=N,snp=N,microcode=N`
/// (any subset, `fmc` too). Without a generation it applies to all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinTcbSpec {
    /// The generation it applies to; `None` for all.
    pub processor: Option<Processor>,
    /// The minimum SVNs it names.
    pub min: MinTcb,
}

impl MinTcbSpec {
    /// Parses `genoa:snp=27,microcode=86` or `snp=27`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (processor, rest) = match text.split_once(':') {
            Some((cpu, rest)) => {
                let p = Processor::from_name(cpu.trim()).ok_or_else(|| {
                    format!("unknown CPU generation {cpu:?}; expected milan, genoa or turin")
                })?;
                (Some(p), rest)
            }
            None => (None, text),
        };
        Ok(Self {
            processor,
            min: MinTcb::parse(rest)?,
        })
    }
}

/// The reference values of a list of manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifests {
    /// Every launch digest of every manifest.
    pub measurements: Vec<AllowedMeasurement>,
    /// The minimum TCB per generation: component by component, the strictest any of
    /// the manifests asks for.
    pub min_tcb: TcbFloors,
    /// Where the manifests came from.
    pub source: ManifestSource,
}

/// One manifest file, as far as verification is concerned; other fields are ignored.
#[derive(Deserialize)]
struct ManifestFile {
    snp_launch_digests: Vec<ManifestDigest>,
    #[serde(default)]
    min_tcb: Vec<MinTcbEntry>,
}

#[derive(Deserialize)]
struct ManifestDigest {
    digest: String,
    #[serde(default)]
    vcpus: Option<u32>,
    #[serde(default)]
    cpu: Option<String>,
}

/// The digests and minimum TCB of one manifest (JSON text); `origin` names it in
/// errors.
pub(crate) fn parse_one(json: &str, origin: &str) -> Result<Manifests, VerifyError> {
    let err = |reason: String| VerifyError::Manifest {
        path: origin.to_string(),
        reason,
    };
    let file: ManifestFile = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    let measurements: Vec<AllowedMeasurement> = file
        .snp_launch_digests
        .into_iter()
        .map(|d| {
            Ok(AllowedMeasurement {
                digest: parse_hex_array(&d.digest).map_err(err)?,
                vcpus: d.vcpus,
                cpu: d.cpu,
            })
        })
        .collect::<Result<_, VerifyError>>()?;
    let mut min_tcb = TcbFloors::default();
    for entry in &file.min_tcb {
        let processor = Processor::from_name(entry.cpu.name()).ok_or_else(|| {
            err(format!(
                "min_tcb names {}, which has no AMD root here",
                entry.cpu
            ))
        })?;
        min_tcb.raise(Some(processor), entry_min(entry));
    }
    Ok(Manifests {
        measurements,
        min_tcb,
        source: ManifestSource::BuiltIn(Vec::new()),
    })
}

fn entry_min(entry: &MinTcbEntry) -> MinTcb {
    MinTcb {
        fmc: entry.fmc,
        bootloader: Some(entry.bootloader),
        tee: Some(entry.tee),
        snp: Some(entry.snp),
        microcode: Some(entry.microcode),
    }
}

impl Manifests {
    /// The manifests of `measurements/published/`, built into this binary.
    pub fn builtin() -> Result<Self, VerifyError> {
        let names = PUBLISHED.iter().map(|(name, _)| name.to_string()).collect();
        Self::from_texts(
            PUBLISHED
                .iter()
                .map(|(name, text)| (name.to_string(), *text)),
            ManifestSource::BuiltIn(names),
        )
    }

    /// One manifest file, or every `*.json` file of a directory sorted by name.
    pub fn load(path: &Path) -> Result<Self, VerifyError> {
        let files = manifest_files(path)?;
        let names = files
            .iter()
            .map(|f| {
                f.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into())
            })
            .collect();
        let mut texts = Vec::with_capacity(files.len());
        for file in &files {
            texts.push((file.display().to_string(), read_bounded(file)?));
        }
        Self::from_texts(
            texts
                .iter()
                .map(|(name, text)| (name.clone(), text.as_str())),
            ManifestSource::Path(path.to_path_buf(), names),
        )
    }

    /// Merges manifests given as `(origin, JSON text)`.
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = (String, &'a str)>,
        source: ManifestSource,
    ) -> Result<Self, VerifyError> {
        let mut all = Manifests {
            measurements: Vec::new(),
            min_tcb: TcbFloors::default(),
            source,
        };
        for (origin, text) in texts {
            let one = parse_one(text, &origin)?;
            all.measurements.extend(one.measurements);
            for p in Processor::ALL {
                all.min_tcb.raise(Some(p), one.min_tcb.get(p));
            }
        }
        Ok(all)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> VerifyError {
    VerifyError::Manifest {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, VerifyError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| io_error(path, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    Ok(files)
}

fn read_bounded(file: &Path) -> Result<String, VerifyError> {
    let len = std::fs::metadata(file)
        .map_err(|e| io_error(file, e))?
        .len();
    if len > MAX_MANIFEST_BYTES {
        return Err(VerifyError::Manifest {
            path: file.display().to_string(),
            reason: format!("file is {len} bytes, more than the {MAX_MANIFEST_BYTES} allowed"),
        });
    }
    std::fs::read_to_string(file).map_err(|e| io_error(file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_is_every_file_of_measurements_published() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("published");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
            .expect("measurements/published exists")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).expect("manifest is text"))
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(String, String)> = PUBLISHED
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert!(!embedded.is_empty(), "no manifest is built in");
        assert_eq!(embedded, on_disk, "the binary embeds a stale published/");
        let builtin = Manifests::builtin().expect("the published manifests parse");
        let loaded = Manifests::load(&dir).expect("the directory loads");
        assert_eq!(builtin.measurements, loaded.measurements);
        assert_eq!(builtin.min_tcb, loaded.min_tcb);
        assert!(builtin
            .source
            .to_string()
            .starts_with("the built-in manifests ("));
    }

    #[test]
    fn every_published_manifest_sets_a_nonzero_minimum_for_every_generation() {
        let builtin = Manifests::builtin().unwrap();
        for p in Processor::ALL {
            assert!(!builtin.min_tcb.get(p).is_zero(), "{p}: no minimum TCB");
        }
    }

    #[test]
    fn merged_minimums_take_the_strictest_component() {
        let d = "ab".repeat(48);
        let a = format!(
            r#"{{"snp_launch_digests":[{{"digest":"{d}"}}],"min_tcb":[{{"cpu":"milan","bootloader":1,"tee":0,"snp":20,"microcode":200}}]}}"#
        );
        let b = r#"{"snp_launch_digests":[],"min_tcb":[{"cpu":"milan","bootloader":3,"tee":0,"snp":10,"microcode":210}]}"#;
        let m = Manifests::from_texts(
            [("a".to_string(), a.as_str()), ("b".to_string(), b)],
            ManifestSource::BuiltIn(vec!["a".into(), "b".into()]),
        )
        .unwrap();
        let milan = m.min_tcb.get(Processor::Milan);
        assert_eq!(
            (milan.bootloader, milan.snp, milan.microcode),
            (Some(3), Some(20), Some(210))
        );
        assert!(m.min_tcb.get(Processor::Genoa).is_zero());
        assert_eq!(m.measurements.len(), 1);
    }

    #[test]
    fn min_tcb_specs_name_a_generation_or_all() {
        let spec = MinTcbSpec::parse("genoa:snp=27,microcode=86").unwrap();
        assert_eq!(spec.processor, Some(Processor::Genoa));
        assert_eq!(spec.min.snp, Some(27));
        let all = MinTcbSpec::parse("snp=5").unwrap();
        assert_eq!(all.processor, None);
        let mut floors = TcbFloors::default();
        floors.raise(all.processor, all.min);
        floors.raise(spec.processor, spec.min);
        assert_eq!(floors.get(Processor::Milan).snp, Some(5));
        assert_eq!(floors.get(Processor::Genoa).snp, Some(27));
        // Raising never lowers.
        floors.raise(None, MinTcb::parse("snp=1").unwrap());
        assert_eq!(floors.get(Processor::Genoa).snp, Some(27));
        let err = MinTcbSpec::parse("rome:snp=1").unwrap_err();
        assert!(err.contains("\"rome\""), "{err}");
    }
}
