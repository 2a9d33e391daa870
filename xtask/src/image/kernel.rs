//! The guest kernel: the pinned Debian `.deb` unpacked, its vmlinuz, and the modules the
//! enclave needs in load order.
//!
//! The `.deb` ships no `modules.dep`, so the order comes from each module's own
//! `depends=` field in its `.modinfo` section (read from the decompressed `.ko.xz`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::lock::KernelPin;
use crate::util::run_logged;

/// The unpacked kernel package.
pub struct KernelTree {
    root: PathBuf,
    release: String,
}

/// A module to put in the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name with `-` as in the file name (`sev-guest`).
    pub name: String,
    /// The compressed module file in the unpacked package.
    pub path: PathBuf,
}

impl KernelTree {
    /// Unpacks `deb` into `dir` (once: a stamp names the package it holds).
    pub fn unpack(deb: &Path, pin: &KernelPin, dir: &Path) -> anyhow::Result<Self> {
        let stamp = dir.join(".chrysalis-unpacked");
        if fs::read_to_string(&stamp).ok().as_deref() != Some(pin.sha256.as_str()) {
            if dir.exists() {
                fs::remove_dir_all(dir)?;
            }
            fs::create_dir_all(dir)?;
            run_logged(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
            fs::write(&stamp, &pin.sha256)?;
        }
        Ok(Self {
            root: dir.to_path_buf(),
            release: pin.release.clone(),
        })
    }

    /// The kernel image (bzImage).
    pub fn vmlinuz(&self) -> anyhow::Result<PathBuf> {
        let path = self.root.join(format!("boot/vmlinuz-{}", self.release));
        if !path.exists() {
            bail!("the kernel package has no {}", path.display());
        }
        Ok(path)
    }

    /// Every `.ko.xz` of the package, by normalized name (`-` read as `_`).
    fn module_index(&self) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let base = self
            .root
            .join("usr/lib/modules")
            .join(&self.release)
            .join("kernel");
        let mut index = BTreeMap::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries =
                fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko.xz"))
                {
                    index.insert(normalize(name), path.clone());
                }
            }
        }
        if index.is_empty() {
            bail!("no modules under {}", base.display());
        }
        Ok(index)
    }

    /// `wanted` and everything they depend on, each after its dependencies.
    pub fn modules_in_load_order(&self, wanted: &[String]) -> anyhow::Result<Vec<Module>> {
        let index = self.module_index()?;
        let mut order = Vec::new();
        let mut placed = BTreeSet::new();
        for name in wanted {
            self.place(
                &normalize(name),
                &index,
                &mut placed,
                &mut Vec::new(),
                &mut order,
            )?;
        }
        Ok(order)
    }

    /// Depth-first placement; `path` holds the chain being resolved, to refuse cycles.
    fn place(
        &self,
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        placed: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<Module>,
    ) -> anyhow::Result<()> {
        if placed.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let file = index
            .get(name)
            .with_context(|| format!("module {name} is not in kernel {}", self.release))?;
        path.push(name.to_owned());
        for dep in module_depends(file)? {
            self.place(&normalize(&dep), index, placed, path, order)?;
        }
        path.pop();
        placed.insert(name.to_owned());
        let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or(name);
        order.push(Module {
            name: file_name.trim_end_matches(".ko.xz").to_owned(),
            path: file.clone(),
        });
        Ok(())
    }
}

/// Module names treat `-` and `_` alike.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` list of a compressed module.
fn module_depends(ko_xz: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("xz")
        .arg("-dc")
        .arg(ko_xz)
        .output()
        .context("could not run xz (apt-get install xz-utils)")?;
    if !out.status.success() {
        bail!("xz could not decompress {}", ko_xz.display());
    }
    parse_depends(&out.stdout).with_context(|| format!("{} has no depends= field", ko_xz.display()))
}

/// Finds the NUL-terminated `depends=` string of a module's `.modinfo`.
fn parse_depends(elf: &[u8]) -> Option<Vec<String>> {
    const KEY: &[u8] = b"\0depends=";
    let start = elf.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = elf[start..].iter().position(|&b| b == 0)?;
    let value = std::str::from_utf8(&elf[start..start + len]).ok()?;
    Some(
        value
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_field_is_read_from_modinfo_bytes() {
        let elf = b"\x7fELF junk\0license=GPL\0depends=vmw_vsock_virtio_transport_common,vsock\0intree=Y\0";
        assert_eq!(
            parse_depends(elf),
            Some(vec![
                "vmw_vsock_virtio_transport_common".to_owned(),
                "vsock".to_owned()
            ])
        );
        assert_eq!(parse_depends(b"\0depends=\0name=x\0"), Some(vec![]));
        assert_eq!(parse_depends(b"no field here"), None);
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        assert_eq!(normalize("sev-guest"), normalize("sev_guest"));
    }
}
