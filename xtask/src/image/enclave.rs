//! The enclave binary, built so that any checkout gives the same bytes: static musl,
//! release, `--locked`, the workspace and cargo-home paths remapped to fixed names,
//! `SOURCE_DATE_EPOCH` from the lock, no build-id that depends on the machine, and
//! linked by the pinned toolchain's own `rust-lld` with its self-contained musl CRT, so
//! the host's `cc` and binutils take no part (no crate in the enclave's tree compiles C).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::lock::ImageLock;
use crate::util::{cargo, run_logged};

/// Path prefixes that stand in for the machine's real ones inside the binary.
const REMAPPED_WORKSPACE: &str = "/chrysalis";
const REMAPPED_CARGO_HOME: &str = "/cargo";

/// Builds `chrysalis-enclave` from the workspace at `root` into `target_dir`; returns
/// the binary's path.
pub fn build(root: &Path, lock: &ImageLock, target_dir: &Path) -> anyhow::Result<PathBuf> {
    ensure_rust_target(root, &lock.rust.target)?;
    let cargo_home = cargo_home()?;
    let flags = [
        format!(
            "--remap-path-prefix={}={REMAPPED_WORKSPACE}",
            root.display()
        ),
        format!(
            "--remap-path-prefix={}={REMAPPED_CARGO_HOME}",
            cargo_home.display()
        ),
        "-Ctarget-feature=+crt-static".to_owned(),
        "-Clinker=rust-lld".to_owned(),
        "-Clink-arg=--build-id=none".to_owned(),
        "-Cstrip=symbols".to_owned(),
    ];
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "chrysalis-enclave",
            "--target",
        ])
        .arg(&lock.rust.target)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("SOURCE_DATE_EPOCH", lock.rust.source_date_epoch.to_string())
        .env("CARGO_INCREMENTAL", "0")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER");
    run_logged(&mut cmd)?;
    let binary = target_dir
        .join(&lock.rust.target)
        .join("release/chrysalis-enclave");
    binary
        .exists()
        .then_some(binary.clone())
        .with_context(|| format!("the enclave build wrote no {}", binary.display()))
}

/// Adds the locked target to the pinned toolchain when it is missing.
///
/// `rust-toolchain.toml` lists the target, but rustup adds listed targets only when it
/// installs the toolchain; a machine that already had 1.95.0 (every CI machine) lacks it,
/// and the build then fails late with "can't find crate for `core`".
fn ensure_rust_target(root: &Path, target: &str) -> anyhow::Result<()> {
    let installed = std::process::Command::new("rustup")
        .current_dir(root)
        .args(["target", "list", "--installed"])
        .output()
        .context("could not run `rustup target list --installed` (is rustup on PATH?)")?;
    if !installed.status.success() {
        anyhow::bail!(
            "`rustup target list --installed` failed: {}",
            String::from_utf8_lossy(&installed.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == target)
    {
        return Ok(());
    }
    eprintln!("the Rust target {target} is missing from the pinned toolchain; adding it");
    run_logged(
        std::process::Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", target]),
    )
}

/// `$CARGO_HOME`, or `~/.cargo`.
fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}
