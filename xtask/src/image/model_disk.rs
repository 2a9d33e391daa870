//! `cargo xtask model-disk`: the read-only model disk the guest mounts at `/models`.
//!
//! The weights are not in the measured image (they would make every launch digest
//! depend on hundreds of megabytes and make the initrd huge); they travel on a
//! separate virtio-blk disk. The disk needs no trust: the measured command line names
//! the model's Merkle root and the enclave refuses a directory whose root differs. It
//! is still built deterministically (fixed UUID, hash seed, timestamps and owners), so
//! two people who build it from the same model get the same bytes and can compare.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;

use super::lock::{sha256_hex, ImageLock};
use super::DEFAULT_MODEL;
use crate::util::{chrysalis_home, run_checked, workspace_root};

/// Fixed filesystem UUID and directory-hash seed: random ones would make every build
/// differ. They identify nothing; the model root hash is what the enclave checks.
const DISK_UUID: &str = "6368726f-7973-616c-6973-2d6d6f64656c";
/// Volume label, so a provider can tell the disk apart.
const DISK_LABEL: &str = "chrysalis-model";
/// Head room over the files' size for ext4's metadata (inode tables, directories).
const METADATA_SLACK_BYTES: u64 = 16 << 20;

/// Options of `cargo xtask model-disk`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Writes an ext4 image holding /NAME/ (the model directory made by \
cargo xtask fetch-model) for `chrysalis-shim launch --model-disk FILE`. Needs mkfs.ext4 \
(apt-get install e2fsprogs).\n\nExample: cargo xtask model-disk --model smollm2-135m"
)]
pub struct ModelDiskArgs {
    /// The model, as installed under $CHRYSALIS_HOME/models/NAME.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where to write the disk image [default: target/image/NAME.ext4].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `model-disk` wrote.
#[derive(Debug, Serialize)]
pub struct ModelDisk {
    /// The disk image.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256 (for comparing two builds; the enclave checks the model root instead).
    pub sha256: String,
}

/// Runs `cargo xtask model-disk`.
pub fn run(args: ModelDiskArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = args.out.unwrap_or_else(|| default_path(&root, &args.model));
    let disk = build(&root, &args.model, &out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&disk)?);
    } else {
        println!(
            "model disk {} ({} MiB, sha256 {})",
            disk.path.display(),
            disk.bytes >> 20,
            disk.sha256
        );
    }
    Ok(())
}

/// Where `model-disk` writes by default.
pub fn default_path(root: &Path, model: &str) -> PathBuf {
    root.join("target/image").join(format!("{model}.ext4"))
}

/// Builds the disk image for the installed model `model` at `out`.
pub fn build(root: &Path, model: &str, out: &Path) -> anyhow::Result<ModelDisk> {
    let source = chrysalis_home().join("models").join(model);
    if !source.join("manifest.json").is_file() {
        bail!(
            "model {model:?} is not installed at {}: run cargo xtask fetch-model {model}",
            source.display()
        );
    }
    let epoch = ImageLock::load(root)?.rust.source_date_epoch;
    let staging = out.with_extension("staging");
    stage_model(&source, &staging.join(model), epoch)?;
    let size = disk_size(&staging.join(model))?;
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let _ = fs::remove_file(out);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-O",
        "^has_journal",
    ])
    .args(["-L", DISK_LABEL, "-U", DISK_UUID])
    .args(["-E", &format!("hash_seed={DISK_UUID},root_owner=0:0")])
    .arg("-d")
    .arg(&staging)
    .arg(out)
    .arg(format!("{}k", size / 1024))
    // mke2fs stamps the superblock and inodes with the current time unless told.
    .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    let made = run_checked(&mut mkfs)
        .context("mkfs.ext4 failed (apt-get install e2fsprogs if it is missing)")
        .and_then(|()| pin_inode_times(out, &staging, model, epoch));
    let _ = fs::remove_dir_all(&staging);
    made?;
    let bytes = fs::read(out).with_context(|| format!("reading back {}", out.display()))?;
    Ok(ModelDisk {
        path: out.to_path_buf(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    })
}

/// Copies the model's regular files into `dest` with a fixed mtime and mode, so the
/// filesystem does not record when or by whom the model was fetched.
fn stage_model(source: &Path, dest: &Path, epoch: u64) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    let mut names: Vec<_> = fs::read_dir(source)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let target = dest.join(&name);
        fs::copy(source.join(&name), &target)
            .with_context(|| format!("copying {} into the disk", name.to_string_lossy()))?;
        set_fixed_metadata(&target, mtime, 0o444)?;
    }
    for dir in [dest, dest.parent().unwrap_or(dest)] {
        set_fixed_metadata(dir, mtime, 0o755)?;
    }
    Ok(())
}

/// mkfs copies each file's atime and ctime from the staging copy, and a ctime cannot be
/// set from user space, so both are overwritten in the image with debugfs.
fn pin_inode_times(disk: &Path, staging: &Path, model: &str, epoch: u64) -> anyhow::Result<()> {
    let mut paths = vec![
        "/".to_owned(),
        "/lost+found".to_owned(),
        format!("/{model}"),
    ];
    for entry in fs::read_dir(staging.join(model))? {
        let name = entry?.file_name();
        let name = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_graphic() && b != b'"'));
        let Some(name) = name else {
            bail!("model file names must be printable ASCII without quotes or spaces");
        };
        paths.push(format!("/{model}/{name}"));
    }
    let script: String = paths
        .iter()
        .flat_map(|path| {
            ["atime", "ctime"].map(|field| format!("set_inode_field {path} {field} @{epoch}\n"))
        })
        .collect();
    let script_path = staging.with_extension("debugfs");
    fs::write(&script_path, script)?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(disk)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .stdout(std::process::Stdio::null());
    let done = run_checked(&mut debugfs).context("debugfs (from e2fsprogs) failed");
    let _ = fs::remove_file(&script_path);
    done
}

fn set_fixed_metadata(path: &Path, mtime: SystemTime, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    fs::File::open(path)
        .and_then(|f| f.set_modified(mtime))
        .with_context(|| format!("setting the mtime of {}", path.display()))
}

/// The files' total size plus metadata room, rounded up to a MiB.
fn disk_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = METADATA_SLACK_BYTES;
    for entry in fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total.div_ceil(1 << 20) << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_size_leaves_room_and_rounds_to_mebibytes() {
        let dir = std::env::temp_dir().join(format!("model-disk-size-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a"), vec![0u8; 3 << 20]).unwrap();
        fs::write(dir.join("b"), [1u8; 10]).unwrap();
        let size = disk_size(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size % (1 << 20), 0);
        assert!(size >= (3 << 20) + 10 + METADATA_SLACK_BYTES, "{size}");
        assert!(size <= (4 << 20) + METADATA_SLACK_BYTES, "{size}");
    }
}
