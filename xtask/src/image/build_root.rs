//! The pinned build root OVMF is compiled in: a Debian tree unpacked from `.deb`
//! packages that `image.lock` pins by URI and SHA-256, entered with `chroot`.
//!
//! OVMF's bytes depend on the compiler, assembler, ACPI compiler and Python that build
//! it. Building with the host's tools gave each distribution (and each Debian point
//! release) its own firmware and so its own launch digest. Inside this root, every
//! tool is a pinned file, whatever the host runs, so a reviewer anywhere gets the
//! published bytes. The host only downloads, checks hashes, unpacks (`dpkg-deb -x`,
//! no maintainer scripts run) and enters the root.
//!
//! `cargo xtask lock-build-root` resolves the package closure of
//! [`BuildRootPin::roots`] against the lock's Debian suite and writes the pins.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::apt::PrivateApt;
use super::lock::{sha256_file, sha256_hex, verify_file, ImageLock};
use crate::util::{chrysalis_home, run_logged, workspace_root};

/// Bump when the way the root is assembled changes: part of the OVMF cache key.
const ASSEMBLY: &str = "chrysalis-build-root-1: dpkg-deb -x in lock order; \
                        /dev/null, zero, random, urandom; /dev/shm 1777; /tmp 1777; \
                        /usr/bin/cc -> gcc, /usr/bin/c++ -> g++";

/// The pinned package set of the OVMF build root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildRootPin {
    /// The packages asked for; [`Self::packages`] is their closure as apt resolved it
    /// (without recommends) when the lock was written.
    pub roots: Vec<String>,
    /// Every package of the root, in the order it is unpacked.
    pub packages: Vec<PinnedDeb>,
}

/// One pinned `.deb`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinnedDeb {
    /// Where it is downloaded from. Any Debian mirror (or snapshot.debian.org, once the
    /// suite has moved on) serves the same file under the same pool path.
    pub uri: String,
    /// SHA-256 of the `.deb`, lowercase hex.
    pub sha256: String,
}

impl PinnedDeb {
    /// The file name: the last segment of the URI, percent-decoded (apt escapes `+`,
    /// `~` and the epoch's `:`), and refused unless it is a plain Debian file name.
    pub fn file_name(&self) -> anyhow::Result<String> {
        let last = self
            .uri
            .rsplit('/')
            .next()
            .filter(|s| s.ends_with(".deb"))
            .with_context(|| format!("pinned URI {} does not name a .deb", self.uri))?;
        let name = percent_decode(last)
            .with_context(|| format!("pinned URI {} has a bad escape", self.uri))?;
        let plain = |c: char| c.is_ascii_alphanumeric() || "+-.:_~".contains(c);
        if !name.chars().all(plain) || name.starts_with('.') {
            bail!("pinned URI {} has an unexpected file name", self.uri);
        }
        Ok(name)
    }
}

/// Decodes `%XX` escapes; `None` for a truncated or non-hex escape, or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl BuildRootPin {
    /// One line per package (`sha256 uri`) plus the assembly recipe, hashed: names the
    /// whole environment, for the OVMF cache key and the manifest.
    pub fn digest(&self) -> String {
        let mut text = String::from(ASSEMBLY);
        for p in &self.packages {
            text.push('\n');
            text.push_str(&p.sha256);
            text.push(' ');
            text.push_str(&p.uri);
        }
        sha256_hex(text.as_bytes())
    }

    /// Checks every pin has the shape the build relies on.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.packages.is_empty() {
            bail!("image.lock's build_root pins no packages: run `cargo xtask lock-build-root`");
        }
        for p in &self.packages {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("build-root pin {} has no 64-hex SHA-256", p.uri);
            }
            if !p.uri.starts_with("http://") && !p.uri.starts_with("https://") {
                bail!("build-root pin {} is not an http(s) URI", p.uri);
            }
            p.file_name()?;
        }
        Ok(())
    }

    /// A one-line description for the manifest: how many packages, which digest.
    pub fn describe(&self) -> String {
        format!(
            "{} pinned Debian packages, build root {}",
            self.packages.len(),
            self.digest()
        )
    }
}

/// Returns the unpacked build root for `pin`, assembling it under `cache` if absent.
///
/// Each `.deb` is downloaded into `downloads` (kept between builds) and checked against
/// its pin before anything is unpacked; a root is only ever used whole, after a
/// rename from its `.partial` directory.
pub fn assemble(pin: &BuildRootPin, downloads: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    pin.check()?;
    let digest = pin.digest();
    let root = cache.join(format!("build-root-{}", &digest[..16]));
    if root.join(".chrysalis-build-root").is_file() {
        return Ok(root);
    }
    let debs = download(pin, downloads)?;
    let partial = root.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("could not clear {}", partial.display()))?;
    }
    fs::create_dir_all(&partial)?;
    eprintln!(
        "build root: unpacking {} packages into {}",
        debs.len(),
        root.display()
    );
    for deb in &debs {
        run_logged(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial)).with_context(
            || "unpacking the build root needs dpkg-deb (Debian's dpkg package)".to_owned(),
        )?;
    }
    add_device_nodes(&partial)?;
    add_alternatives(&partial)?;
    fs::write(partial.join(".chrysalis-build-root"), &digest)?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&partial, &root)?;
    Ok(root)
}

/// Downloads every pinned `.deb` not already present with the right hash.
fn download(pin: &BuildRootPin, downloads: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(downloads)?;
    let total = pin.packages.len();
    let mut paths = Vec::with_capacity(total);
    for (i, p) in pin.packages.iter().enumerate() {
        let path = downloads.join(p.file_name()?);
        if verify_file(&path, &p.sha256).is_err() {
            eprintln!("build root: [{}/{total}] {}", i + 1, p.uri);
            // apt-helper checks the hash while it downloads and keeps nothing that fails.
            run_logged(
                Command::new("/usr/lib/apt/apt-helper")
                    .args(["-q", "download-file", &p.uri])
                    .arg(&path)
                    .arg(format!("SHA256:{}", p.sha256)),
            )
            .context("downloading build-root packages needs apt's apt-helper")?;
            verify_file(&path, &p.sha256)?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// The few device nodes and world-writable directories the compilers and Python's
/// multiprocessing (edk2's `build -n`) need; no host directory is mounted in.
fn add_device_nodes(root: &Path) -> anyhow::Result<()> {
    let dev = root.join("dev");
    fs::create_dir_all(&dev)?;
    for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        let node = dev.join(name);
        if node.exists() {
            continue;
        }
        run_logged(Command::new("mknod").args(["-m", "666"]).arg(&node).args([
            "c",
            "1",
            &minor.to_string(),
        ]))
        .context("the OVMF build root needs root privileges (mknod, chroot)")?;
    }
    for dir in ["dev/shm", "tmp"] {
        let path = root.join(dir);
        fs::create_dir_all(&path)?;
        run_logged(Command::new("chmod").arg("1777").arg(&path))?;
    }
    Ok(())
}

/// The `cc` and `c++` links that gcc's and g++'s maintainer scripts would register with
/// update-alternatives (which never runs here); edk2's Pccts tools call `cc`.
fn add_alternatives(root: &Path) -> anyhow::Result<()> {
    for (link, target) in [("cc", "gcc"), ("c++", "g++")] {
        let path = root.join("usr/bin").join(link);
        if !path.exists() {
            std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("could not link {}", path.display()))?;
        }
    }
    Ok(())
}

/// A command that runs `script` with bash inside `root`, with a fixed environment:
/// nothing of the caller's environment reaches the build.
pub fn chroot_command(root: &Path, script: &str, source_date_epoch: u64) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", "chroot"])
        .arg(root)
        .args(["/usr/bin/env", "-i"])
        .args([
            "PATH=/usr/bin:/usr/sbin",
            "HOME=/root",
            "LC_ALL=C",
            "TZ=UTC",
            "TERM=dumb",
        ])
        .arg(format!("SOURCE_DATE_EPOCH={source_date_epoch}"))
        .args(["/bin/bash", "-c", script]);
    cmd
}

/// Options of `cargo xtask lock-build-root`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Resolves the closure of the build root's packages (image.lock \
build_root.roots) against image.lock's Debian suite, without recommends, downloads every \
package with apt (which checks it against the suite's signed index), hashes it, and rewrites image.lock's build_root.packages. The OVMF bytes and so \
every launch digest change with it: rebuild the image and republish the manifests after.\n\n\
Example: cargo xtask lock-build-root --refresh-apt"
)]
pub struct LockArgs {
    /// Packages to resolve instead of the lock's roots (repeat the flag).
    #[arg(long = "root-package", value_name = "PACKAGE")]
    pub roots: Vec<String>,
    /// Download the apt package lists again first.
    #[arg(long)]
    pub refresh_apt: bool,
    /// Print the new build_root as JSON instead of writing image.lock.
    #[arg(long)]
    pub dry_run: bool,
}

/// `cargo xtask lock-build-root`.
pub fn run_lock(args: LockArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut lock = ImageLock::load(&root)?;
    let roots = if args.roots.is_empty() {
        lock.build_root.roots.clone()
    } else {
        args.roots.clone()
    };
    let home = chrysalis_home();
    let apt = PrivateApt::create(&home.join("apt"), &lock.debian)?;
    apt.update(args.refresh_apt)?;
    let archives = home.join("apt").join("build-root-archives");
    let uris = apt.download_closure(&roots, &archives)?;
    let mut packages = Vec::with_capacity(uris.len());
    for (uri, file) in &uris {
        packages.push(PinnedDeb {
            uri: uri.clone(),
            sha256: sha256_file(&archives.join(file))?,
        });
    }
    let pin = BuildRootPin { roots, packages };
    pin.check()?;
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&pin)?);
        return Ok(());
    }
    let changed = pin != lock.build_root;
    lock.build_root = pin;
    lock.write(&root)?;
    eprintln!(
        "lock-build-root: {} packages, build root {}{}",
        lock.build_root.packages.len(),
        lock.build_root.digest(),
        if changed {
            " (changed: rebuild the image and republish measurements/published/)"
        } else {
            " (unchanged)"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(uri: &str) -> PinnedDeb {
        PinnedDeb {
            uri: uri.into(),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn file_names_come_from_the_uri_with_escapes_decoded() {
        let p =
            pin("http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.41-12%2bdeb13u5_amd64.deb");
        assert_eq!(p.file_name().unwrap(), "libc6_2.41-12+deb13u5_amd64.deb");
        let p = pin("http://m/pool/main/p/pcre2/libpcre2-8-0_10.46-1%7edeb13u3_amd64.deb");
        assert_eq!(
            p.file_name().unwrap(),
            "libpcre2-8-0_10.46-1~deb13u3_amd64.deb"
        );
        let p = pin("http://m/pool/main/g/gcc-defaults/gcc_4%3a14.2.0-1_amd64.deb");
        assert_eq!(p.file_name().unwrap(), "gcc_4:14.2.0-1_amd64.deb");
        assert!(pin("http://m/pool/x/../evil").file_name().is_err());
        assert!(pin("http://m/pool/x/a%2fb.deb").file_name().is_err());
        assert!(pin("http://m/pool/x/..%2f..%2fetc.deb")
            .file_name()
            .is_err());
        assert!(pin("http://m/pool/x/a%2.deb").file_name().is_err());
    }

    #[test]
    fn the_digest_changes_with_any_package_and_with_order() {
        let a = pin("http://m/pool/a_1_amd64.deb");
        let b = pin("http://m/pool/b_1_amd64.deb");
        let root = |packages: Vec<PinnedDeb>| BuildRootPin {
            roots: vec!["gcc".into()],
            packages,
        };
        let ab = root(vec![a.clone(), b.clone()]).digest();
        assert_ne!(ab, root(vec![b.clone(), a.clone()]).digest());
        let mut b2 = b.clone();
        b2.sha256 = "cd".repeat(32);
        assert_ne!(ab, root(vec![a, b2]).digest());
    }

    #[test]
    fn the_checked_in_build_root_is_complete_and_well_formed() {
        let lock = ImageLock::load(&workspace_root()).expect("image.lock is valid");
        lock.build_root.check().expect("every pin is well formed");
        let names: Vec<String> = lock
            .build_root
            .packages
            .iter()
            .map(|p| p.file_name().unwrap())
            .collect();
        // The tools whose versions shape OVMF's bytes are all pinned, not the host's.
        for tool in [
            "gcc-14_",
            "g++-14_",
            "nasm_",
            "acpica-tools_",
            "python3.13-minimal_",
            "make_",
            "bash_",
            "binutils-x86-64-linux-gnu_",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(tool)),
                "the build root pins no {tool}*.deb"
            );
        }
    }
}
