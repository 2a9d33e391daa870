//! OVMF for SEV-SNP measured direct boot: `OvmfPkg/AmdSev/AmdSevX64.dsc` built from
//! Debian's pinned edk2 source with Debian's patches, at a fixed absolute path.
//!
//! Debian's packaged OVMF has no SNP kernel-hashes table, so it cannot measure a
//! directly booted kernel; this build has one. edk2's LTO embeds source paths, so the
//! build always runs in `image.lock`'s `build_dir`. The result is cached under
//! `$CHRYSALIS_HOME/cache/ovmf-<inputs>/OVMF.fd`, keyed by the hash of everything that
//! goes into it (tarball hashes, recipe, build directory, compiler and assembler
//! versions), so CI builds it once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::lock::{sha256_hex, ImageLock};
use crate::util::run_checked;

/// Bump when the steps below change: it is part of the cache key.
const RECIPE: &str =
    "chrysalis-ovmf-recipe-1: strip 1, debian/patches/series -p1, empty Grub/grub.efi, \
                      make -C BaseTools, build -n 2 -t GCC5 -a X64 -b RELEASE";

/// Where the build writes the firmware, relative to the build directory.
const OUTPUT: &str = "Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd";

/// The cache key: SHA-256 over every input of the firmware build.
pub fn input_hash(lock: &ImageLock) -> anyhow::Result<String> {
    let mut inputs = vec![
        RECIPE.to_owned(),
        lock.edk2.platform.clone(),
        lock.edk2.build_dir.clone(),
    ];
    inputs.extend(
        lock.edk2
            .files
            .iter()
            .map(|f| format!("{} {}", f.file, f.sha256)),
    );
    inputs.push(tool_version("gcc", "--version")?);
    inputs.push(tool_version("nasm", "-v")?);
    inputs.push(tool_version("iasl", "-v")?);
    Ok(sha256_hex(inputs.join("\n").as_bytes()))
}

/// The first line that names a version, from `program flag`.
fn tool_version(program: &str, flag: &str) -> anyhow::Result<String> {
    let out = Command::new(program).arg(flag).output().with_context(|| {
        format!("could not run {program}: the OVMF build needs gcc, make, nasm, acpica-tools (iasl), uuid-dev and python3 (apt-get install)")
    })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.to_lowercase().contains("version") || l.contains(program))
        .map(|l| l.trim().to_owned())
        .with_context(|| format!("{program} {flag} printed no version"))
}

/// Where the firmware built from inputs `key` is cached.
fn cache_path(cache: &Path, key: &str) -> PathBuf {
    cache
        .join(format!("ovmf-{}", key.get(..16).unwrap_or(key)))
        .join("OVMF.fd")
}

/// The cached firmware for `lock`, when one was built before.
pub fn cached(lock: &ImageLock, cache: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = cache_path(cache, &input_hash(lock)?);
    Ok(path.is_file().then_some(path))
}

/// Returns the cached firmware for `lock`, building it first when `rebuild` or absent.
pub fn firmware(
    lock: &ImageLock,
    tarballs: &[PathBuf],
    cache: &Path,
    rebuild: bool,
) -> anyhow::Result<PathBuf> {
    let key = input_hash(lock)?;
    let cached = cache_path(cache, &key);
    if cached.exists() && !rebuild {
        eprintln!("OVMF: cached at {}", cached.display());
        return Ok(cached);
    }
    let build_dir = Path::new(&lock.edk2.build_dir);
    let stamp = build_dir.join(".chrysalis-inputs");
    let built_here = fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && build_dir.join(OUTPUT).exists();
    if rebuild || !built_here {
        eprintln!(
            "OVMF: building inputs {key} in {} (5 to 15 minutes on 2 cores)",
            build_dir.display()
        );
        prepare_tree(build_dir, tarballs)?;
        build(build_dir, lock)?;
        fs::write(&stamp, &key)?;
    }
    let dir = cached.parent().context("cache path has a parent")?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join("OVMF.fd.partial");
    fs::copy(build_dir.join(OUTPUT), &tmp).context("could not copy the built OVMF.fd")?;
    fs::rename(&tmp, &cached)?;
    fs::write(dir.join("inputs.sha256"), &key)?;
    Ok(cached)
}

/// Unpacks the orig tarball (whose top directory is stripped) and the debian tarball
/// into a fresh `build_dir`, applies Debian's patch series, and empties grub.efi.
fn prepare_tree(build_dir: &Path, tarballs: &[PathBuf]) -> anyhow::Result<()> {
    if build_dir.exists() {
        fs::remove_dir_all(build_dir)
            .with_context(|| format!("could not clear {}", build_dir.display()))?;
    }
    fs::create_dir_all(build_dir)?;
    let (orig, debian) = match tarballs {
        [orig, debian] => (orig, debian),
        _ => bail!(
            "the edk2 pin needs exactly an orig and a debian tarball, found {}",
            tarballs.len()
        ),
    };
    run_checked(
        Command::new("tar")
            .arg("-xf")
            .arg(orig)
            .arg("-C")
            .arg(build_dir)
            .arg("--strip-components=1"),
    )?;
    run_checked(
        Command::new("tar")
            .arg("-xf")
            .arg(debian)
            .arg("-C")
            .arg(build_dir),
    )?;
    let series = fs::read_to_string(build_dir.join("debian/patches/series"))
        .context("the debian tarball has no debian/patches/series")?;
    for patch in series
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        run_checked(
            Command::new("patch")
                .current_dir(build_dir)
                .args(["-p1", "--batch", "--forward", "--quiet", "-i"])
                .arg(Path::new("debian/patches").join(patch)),
        )?;
    }
    // The AmdSev platform embeds a grub for encrypted boot disks; direct boot needs none.
    fs::write(build_dir.join("OvmfPkg/AmdSev/Grub/grub.efi"), b"")?;
    Ok(())
}

fn build(build_dir: &Path, lock: &ImageLock) -> anyhow::Result<()> {
    run_checked(
        Command::new("nice")
            .args(["-n", "19", "make", "-C", "BaseTools", "-j2"])
            .current_dir(build_dir),
    )?;
    let script = format!(
        "set -e; source ./edksetup.sh; build -n 2 -t GCC5 -a X64 -b RELEASE -p {}",
        lock.edk2.platform
    );
    run_checked(
        Command::new("nice")
            .args(["-n", "19", "bash", "-c", &script])
            .current_dir(build_dir),
    )?;
    let out = build_dir.join(OUTPUT);
    if !out.exists() {
        bail!("the edk2 build finished but wrote no {}", out.display());
    }
    Ok(())
}
