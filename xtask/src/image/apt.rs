//! A private apt directory for trixie downloads, apart from the system's apt config.
//!
//! The directory holds its own `sources.list`, package lists and cache; apt runs with
//! `Dir::Etc::SourceList`, `Dir::State` and `Dir::Cache` pointed at it, so the host's
//! own apt state is never read or written. Every file fetched is checked against
//! `image.lock` before use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::lock::{verify_file, DebianSource, PinnedFile};
use crate::util::{display_command, run_logged};

/// apt, configured to use only the files under one directory.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Creates (or reuses) the private apt directory `dir` for `source`.
    pub fn create(dir: &Path, source: &DebianSource) -> anyhow::Result<Self> {
        for sub in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("could not create {}", dir.join(sub).display()))?;
        }
        let list = sources_list(source);
        let list_path = dir.join("etc/sources.list");
        if fs::read_to_string(&list_path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&list_path, &list)
                .with_context(|| format!("could not write {}", list_path.display()))?;
            // New sources: the old lists no longer describe them.
            let _ = fs::remove_file(dir.join("state/updated"));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// An apt command (`apt-get`, `apt-cache`) with the private directories.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = &self.dir;
        for (key, value) in [
            ("Dir::Etc::SourceList", d.join("etc/sources.list")),
            ("Dir::Etc::SourceParts", d.join("etc/sources.list.d")),
            ("Dir::Etc::PreferencesParts", d.join("etc/preferences.d")),
            ("Dir::State", d.join("state")),
            ("Dir::Cache", d.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        // The private directory belongs to the caller; apt's `_apt` user cannot write it.
        cmd.args([
            "-o",
            "APT::Sandbox::User=root",
            "-o",
            "APT::Architecture=amd64",
            "-q",
        ]);
        cmd
    }

    /// Downloads the package lists once (or again when `refresh`).
    pub fn update(&self, refresh: bool) -> anyhow::Result<()> {
        let stamp = self.dir.join("state/updated");
        if stamp.exists() && !refresh {
            return Ok(());
        }
        // apt's progress goes to stderr: stdout is for `--json` output.
        run_logged(self.command("apt-get").arg("update"))?;
        fs::write(&stamp, b"").context("could not stamp the apt lists")?;
        Ok(())
    }

    /// Downloads binary package `package=version` into `dest` and checks it.
    pub fn download_deb(
        &self,
        package: &str,
        version: &str,
        pin: &PinnedFile,
        dest: &Path,
    ) -> anyhow::Result<PathBuf> {
        let path = dest.join(&pin.file);
        if verify_file(&path, &pin.sha256).is_ok() {
            return Ok(path);
        }
        fs::create_dir_all(dest)?;
        self.update(false)?;
        run_logged(
            self.command("apt-get")
                .current_dir(dest)
                .arg("download")
                .arg(format!("{package}={version}")),
        )?;
        verify_file(&path, &pin.sha256)?;
        Ok(path)
    }

    /// Downloads the pinned files of source package `source=version` into `dest`.
    ///
    /// `apt-get source` would also fetch the `.dsc`, whose URL 404s for versions with a
    /// `+`; asking apt for the URIs and fetching each file with `apt-helper` (which
    /// checks the SHA-256 from the lock as it downloads) avoids that.
    pub fn download_source(
        &self,
        source: &str,
        version: &str,
        files: &[PinnedFile],
        dest: &Path,
    ) -> anyhow::Result<Vec<PathBuf>> {
        fs::create_dir_all(dest)?;
        let missing: Vec<&PinnedFile> = files
            .iter()
            .filter(|f| verify_file(&dest.join(&f.file), &f.sha256).is_err())
            .collect();
        if !missing.is_empty() {
            self.update(false)?;
            let uris = self.source_uris(source, version)?;
            for pin in missing {
                let uri = uris
                    .iter()
                    .find(|(_, name)| *name == pin.file)
                    .map(|(uri, _)| uri)
                    .with_context(|| {
                        format!("apt lists no file {} for {source} {version}", pin.file)
                    })?;
                let target = dest.join(&pin.file);
                run_logged(
                    Command::new("/usr/lib/apt/apt-helper")
                        .args(["download-file", uri])
                        .arg(&target)
                        .arg(format!("SHA256:{}", pin.sha256)),
                )?;
                verify_file(&target, &pin.sha256)?;
            }
        }
        Ok(files.iter().map(|f| dest.join(&f.file)).collect())
    }

    /// `(uri, file name)` of every binary package a fresh system needs for `roots`, in
    /// apt's unpack order, each downloaded into `archives` (named as in the URI) and
    /// checked by apt against the suite's signed index. apt resolves against an empty
    /// package database, so the closure includes every dependency, not only those this
    /// host lacks. Recommends are left out.
    pub fn download_closure(
        &self,
        roots: &[String],
        archives: &Path,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let empty = self.dir.join("state/empty-status");
        fs::write(&empty, b"").context("could not write an empty dpkg status")?;
        fs::create_dir_all(archives.join("partial"))?;
        // --print-uris leaves out what the archive cache holds: list against an empty
        // one first, then download into `archives`.
        let listing = self.dir.join("cache/closure-listing");
        fs::create_dir_all(listing.join("partial"))?;
        let install = |cache: &Path, extra: &[&str]| {
            let mut cmd = self.command("apt-get");
            cmd.arg("-o")
                .arg(format!("Dir::State::status={}", empty.display()))
                .arg("-o")
                .arg(format!("Dir::Cache::archives={}/", cache.display()))
                .args(["install", "--no-install-recommends", "-qq"])
                .args(extra)
                .args(roots);
            cmd
        };
        let uris = parse_print_uris(&stdout_of(&mut install(&listing, &["--print-uris"]))?);
        if uris.is_empty() {
            bail!("apt resolved no packages for {roots:?}");
        }
        run_logged(&mut install(archives, &["--download-only", "-y"]))?;
        Ok(uris)
    }

    /// `(uri, file name)` of every file of a source package, from `--print-uris`.
    fn source_uris(&self, source: &str, version: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut cmd = self.command("apt-get");
        cmd.args(["source", "--print-uris", "--download-only"])
            .arg(format!("{source}={version}"));
        Ok(parse_print_uris(&stdout_of(&mut cmd)?))
    }
}

/// Runs `cmd` and returns its stdout; fails naming the command and its stderr.
fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", display_command(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            display_command(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `sources.list` for `source`: a `deb` and a `deb-src` line per mirror.
fn sources_list(source: &DebianSource) -> String {
    let mut text = String::new();
    for mirror in &source.mirrors {
        for kind in ["deb", "deb-src"] {
            text.push_str(&format!("{kind} [signed-by={}] {mirror}\n", source.keyring));
        }
    }
    text
}

/// Parses apt's `'URI' NAME SIZE HASH` lines.
fn parse_print_uris(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once('\'')?;
            let name = rest.split_whitespace().next()?;
            Some((uri.to_owned(), name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_give_uri_and_name() {
        let text = "Need to get 29.7 MB of source archives.\n\
            'http://deb.debian.org/debian/pool/main/e/edk2/edk2_2025.02.orig.tar.xz' edk2_2025.02.orig.tar.xz 29646336 SHA256:b63b\n\
            'http://x/edk2_1%2b2.dsc' edk2_1+2.dsc 2656 SHA256:9e21\n";
        let uris = parse_print_uris(text);
        assert_eq!(uris.len(), 2);
        assert_eq!(uris[0].1, "edk2_2025.02.orig.tar.xz");
        assert!(uris[1].0.ends_with("%2b2.dsc"));
    }

    #[test]
    fn sources_list_has_binary_and_source_lines_per_mirror() {
        let list = sources_list(&DebianSource {
            suite: "trixie".into(),
            mirrors: vec!["http://m/debian trixie main".into()],
            keyring: "/k.gpg".into(),
        });
        assert_eq!(
            list,
            "deb [signed-by=/k.gpg] http://m/debian trixie main\n\
             deb-src [signed-by=/k.gpg] http://m/debian trixie main\n"
        );
    }
}
