//! OVMF for SEV-SNP measured direct boot: `OvmfPkg/AmdSev/AmdSevX64.dsc` built from
//! Debian's pinned edk2 source with Debian's patches, at a fixed absolute path, inside
//! the pinned build root ([`super::build_root`]).
//!
//! Debian's packaged OVMF has no SNP kernel-hashes table, so it cannot measure a
//! directly booted kernel; this build has one. edk2's LTO embeds source paths, so the
//! build always runs in `image.lock`'s `build_dir` (a path inside the build root). No
//! host tool takes part: the compilers, assembler, iasl and Python are the root's. The
//! result is cached under `$CHRYSALIS_HOME/cache/ovmf-<inputs>/OVMF.fd`, keyed by the
//! hash of everything that goes into it (tarball hashes, recipe, build directory, the
//! build root's digest), so CI builds it once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::build_root;
use super::lock::{sha256_hex, ImageLock};
use crate::util::run_logged;

/// Bump when the steps below change: it is part of the cache key.
const RECIPE: &str =
    "chrysalis-ovmf-recipe-2: strip 1, debian/patches/series -p1, empty Grub/grub.efi, \
     chroot build root, make -C BaseTools -j2, build -n 2 -t GCC5 -a X64 -b RELEASE";

/// Where the build writes the firmware, relative to the build directory.
const OUTPUT: &str = "Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd";

/// The cache key: SHA-256 over every input of the firmware build.
pub fn input_hash(lock: &ImageLock) -> String {
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
    inputs.push(format!("build root {}", lock.build_root.digest()));
    sha256_hex(inputs.join("\n").as_bytes())
}

/// Where the firmware built from inputs `key` is cached.
fn cache_path(cache: &Path, key: &str) -> PathBuf {
    cache
        .join(format!("ovmf-{}", key.get(..16).unwrap_or(key)))
        .join("OVMF.fd")
}

/// The cached firmware for `lock`, when one was built before.
pub fn cached(lock: &ImageLock, cache: &Path) -> Option<PathBuf> {
    let path = cache_path(cache, &input_hash(lock));
    path.is_file().then_some(path)
}

/// Returns the cached firmware for `lock`, building it first when `rebuild` or absent.
/// `downloads` keeps the build root's packages between builds.
pub fn firmware(
    lock: &ImageLock,
    tarballs: &[PathBuf],
    downloads: &Path,
    cache: &Path,
    rebuild: bool,
) -> anyhow::Result<PathBuf> {
    let key = input_hash(lock);
    let cached = cache_path(cache, &key);
    if cached.exists() && !rebuild {
        eprintln!("OVMF: cached at {}", cached.display());
        return Ok(cached);
    }
    let root = build_root::assemble(&lock.build_root, downloads, cache)?;
    let inside = lock
        .edk2
        .build_dir
        .strip_prefix('/')
        .context("image.lock's edk2 build_dir must be absolute")?;
    let build_dir = &root.join(inside);
    let stamp = build_dir.join(".chrysalis-inputs");
    let built_here = fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && build_dir.join(OUTPUT).exists();
    if rebuild || !built_here {
        eprintln!(
            "OVMF: building inputs {key} in {} (5 to 15 minutes on 2 cores)",
            build_dir.display()
        );
        prepare_tree(build_dir, tarballs)?;
        build(&root, build_dir, lock)?;
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
    run_logged(
        Command::new("tar")
            .arg("-xf")
            .arg(orig)
            .arg("-C")
            .arg(build_dir)
            .arg("--strip-components=1"),
    )?;
    run_logged(
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
        run_logged(
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

/// Builds BaseTools, then the platform, inside the build root `root`.
fn build(root: &Path, build_dir: &Path, lock: &ImageLock) -> anyhow::Result<()> {
    let script = format!(
        "set -e; cd {dir}; make -C BaseTools -j2; source ./edksetup.sh; \
         build -n 2 -t GCC5 -a X64 -b RELEASE -p {platform}",
        dir = lock.edk2.build_dir,
        platform = lock.edk2.platform
    );
    run_logged(&mut build_root::chroot_command(
        root,
        &script,
        lock.rust.source_date_epoch,
    ))
    .context("the OVMF build in the pinned build root failed (running chroot needs root)")?;
    let out = build_dir.join(OUTPUT);
    if !out.exists() {
        bail!("the edk2 build finished but wrote no {}", out.display());
    }
    Ok(())
}
