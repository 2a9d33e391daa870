//! The published image manifest (`measurements/published/NAME.json`): each component's
//! SHA-256, the command line, the model root, the inputs, and the SNP launch digests.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use chrysalis_measurements::launch::{
    self, CpuGeneration, LaunchDigestEntry, MeasuredBoot, MinTcbEntry,
};
use serde::{Deserialize, Serialize};

use super::kernel::Module;
use super::lock::{sha256_file, ImageLock};

/// A published image manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version: 1.
    pub manifest_version: u32,
    /// The model name (and the manifest's file name).
    pub name: String,
    /// The model root hash the command line binds.
    pub model_root: String,
    /// SHA-256 of the static configuration in the initrd.
    pub config_sha256: String,
    /// The exact kernel command line (`-append`).
    pub cmdline: String,
    /// The measured files, plus the enclave binary inside the initrd.
    pub components: Vec<Component>,
    /// Kernel modules in the initrd, in load order.
    pub modules: Vec<String>,
    /// Pinned inputs, for a reviewer.
    pub inputs: Inputs,
    /// SEV_FEATURES assumed for the VMSAs (QEMU's default).
    pub guest_features: String,
    /// Launch digests for the published vCPU counts and CPU generations.
    pub snp_launch_digests: Vec<LaunchDigestEntry>,
    /// The lowest REPORTED_TCB a client accepts, per CPU generation ([`min_tcb_table`]).
    #[serde(default)]
    pub min_tcb: Vec<MinTcbEntry>,
    /// Token prices in the measured configuration.
    #[serde(default)]
    pub prices: super::ImagePrices,
}

/// One file of the image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Component {
    /// `ovmf`, `kernel`, `initrd`, `cmdline` or `enclave`.
    pub name: String,
    /// File name in the image directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// What the image was built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inputs {
    /// Kernel package and version.
    pub kernel: String,
    /// edk2 source package and version.
    pub edk2: String,
    /// The pinned Debian root OVMF was compiled in: package count and digest
    /// ([`super::build_root::BuildRootPin::describe`]); empty in manifests from before
    /// the build root existed (their OVMF came from the builder's own tools).
    #[serde(default)]
    pub ovmf_build_root: String,
    /// Rust toolchain.
    pub rust_toolchain: String,
    /// SHA-256 of `Cargo.lock`.
    pub cargo_lock_sha256: String,
    /// SHA-256 of `image.lock`.
    pub image_lock_sha256: String,
    /// The git commit the image was built from (`+dirty` when tracked files differed
    /// from it): a reviewer checks that commit out before `verify-image`.
    #[serde(default)]
    pub source_commit: String,
}

/// The minimum TCB per CPU generation that every published manifest carries, from
/// AMD's security bulletins (docs/attestation.md, "Minimum TCB", has the same table and
/// says how each value was obtained). Bootloader, TEE and FMC stay 0 (not constrained):
/// no bulletin found names a value for them.
pub fn min_tcb_table() -> Vec<MinTcbEntry> {
    vec![
        MinTcbEntry {
            cpu: CpuGeneration::Milan,
            fmc: None,
            bootloader: 0,
            tee: 0,
            // AMD-SB-3023 (CVE-2025-48514): SNP firmware SVN 0x1B on Zen 3 and Zen 4, as
            // Linux's drivers/crypto/ccp/sev-dev.c (commit 4b28f0846ef6, "Documented in
            // AMD-SB-3023") checks it.
            snp: 0x1B,
            // AMD-SB-3019 / AMD-SB-7033 (CVE-2024-56161, CVE-2024-36347, "EntrySign"):
            // Milan B1 microcode patch 0x0A0011DB; the SVN is the patch's low byte.
            microcode: 0xDB,
            source: "snp: AMD-SB-3023 (SNP SVN 0x1B); microcode: AMD-SB-3019/AMD-SB-7033 \
                     (patch 0x0A0011DB); bootloader, tee: no bulletin value"
                .into(),
        },
        MinTcbEntry {
            cpu: CpuGeneration::Genoa,
            fmc: None,
            bootloader: 0,
            tee: 0,
            // AMD-SB-3020 (CVE-2025-0033, RMP initialisation): SNP SPL 0x1B; the same
            // value is AMD-SB-3023's Zen 4 threshold in Linux's sev-dev.c.
            snp: 0x1B,
            // AMD-SB-3020 (patch 0x0A101156) and AMD-SB-3027 (CVE-2025-29943): Genoa B1
            // TCB[MICROCODE] >= 0x56. (AMD-SB-3019 asked for 0x54.)
            microcode: 0x56,
            source: "snp: AMD-SB-3020/AMD-SB-3023 (SNP SPL 0x1B); microcode: AMD-SB-3020/\
                     AMD-SB-3027 (0x56, patch 0x0A101156); bootloader, tee: no bulletin value"
                .into(),
        },
        MinTcbEntry {
            cpu: CpuGeneration::Turin,
            fmc: Some(0),
            bootloader: 0,
            tee: 0,
            // AMD-SB-3020: Turin SNP SPL 0x04; AMD-SB-3023's Zen 5 threshold in Linux's
            // sev-dev.c is the same 0x4.
            snp: 0x04,
            // AMD-SB-3027 (CVE-2025-29943): Turin TCB[MICROCODE] >= 0x51 (AMD-SB-3020
            // asked for patch 0x0B002150).
            microcode: 0x51,
            source: "snp: AMD-SB-3020/AMD-SB-3023 (SNP SPL 0x04); microcode: AMD-SB-3027 \
                     (0x51); fmc, bootloader, tee: no bulletin value"
                .into(),
        },
    ]
}

/// `git rev-parse HEAD` of `root`, with `+dirty` when tracked files are modified.
pub fn source_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        return "unknown (not a git checkout)".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => head,
        _ => format!("{head}+dirty"),
    }
}

/// Everything `Manifest::of_image` needs.
pub struct ImageFacts<'a> {
    pub name: &'a str,
    pub model_root: &'a str,
    pub config_sha256: &'a str,
    pub out: &'a Path,
    pub enclave: &'a Path,
    pub modules: &'a [Module],
    pub lock: &'a ImageLock,
    pub root: &'a Path,
    /// Token prices in the static configuration.
    pub prices: super::ImagePrices,
}

/// One line of a comparison.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// What was compared.
    pub item: String,
    /// The published value.
    pub published: String,
    /// The rebuilt value.
    pub rebuilt: String,
    /// Whether they are equal.
    pub matches: bool,
}

/// A full comparison of a published and a rebuilt manifest.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One line per component and launch digest.
    pub items: Vec<Comparison>,
    /// Items of the published manifest that were not compared, each with the reason.
    /// They are never counted as matching.
    pub not_compared: Vec<String>,
}

/// The files of an image built without OVMF, for [`Manifest::compare_without_firmware`].
pub struct ImageFiles<'a> {
    /// The image directory (vmlinuz, initrd.img, cmdline).
    pub out: &'a Path,
    /// The enclave binary inside the initrd.
    pub enclave: &'a Path,
    /// The checkout, for image.lock.
    pub root: &'a Path,
    /// The OVMF build root the checkout's image.lock pins
    /// ([`super::build_root::BuildRootPin::describe`]).
    pub ovmf_build_root: &'a str,
}

impl Manifest {
    /// Hashes the image in `facts.out` and computes its launch digests.
    pub fn of_image(facts: ImageFacts<'_>) -> anyhow::Result<Self> {
        let out = facts.out;
        let mut components = Vec::new();
        for (name, file) in [
            ("ovmf", "OVMF.fd"),
            ("kernel", "vmlinuz"),
            ("initrd", "initrd.img"),
            ("cmdline", "cmdline"),
        ] {
            components.push(component(name, file, &out.join(file))?);
        }
        components.push(component("enclave", "initrd.img:/init", facts.enclave)?);
        let cmdline = fs::read_to_string(out.join("cmdline"))?;
        let boot = MeasuredBoot {
            ovmf: out.join("OVMF.fd"),
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            cmdline: cmdline.clone(),
        };
        let digests =
            launch::published_digests(&boot).context("could not compute launch digests")?;
        let lock = facts.lock;
        Ok(Self {
            manifest_version: 1,
            name: facts.name.to_owned(),
            model_root: facts.model_root.to_owned(),
            config_sha256: facts.config_sha256.to_owned(),
            cmdline,
            components,
            modules: facts.modules.iter().map(|m| m.name.clone()).collect(),
            inputs: Inputs {
                kernel: format!("{} {}", lock.kernel.package, lock.kernel.version),
                edk2: format!(
                    "{} {} {}",
                    lock.edk2.source, lock.edk2.version, lock.edk2.platform
                ),
                ovmf_build_root: lock.build_root.describe(),
                rust_toolchain: rustc_version(facts.root),
                cargo_lock_sha256: sha256_file(&facts.root.join("Cargo.lock"))?,
                image_lock_sha256: sha256_file(&facts.root.join(super::lock::LOCK_FILE))?,
                source_commit: source_commit(facts.root),
            },
            guest_features: format!("{:#x}", launch::QEMU_DEFAULT_GUEST_FEATURES),
            snp_launch_digests: digests,
            min_tcb: min_tcb_table(),
            prices: facts.prices,
        })
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not an image manifest", path.display()))
    }

    /// Writes the manifest as pretty JSON with a final newline.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
    }

    /// Human summary on stderr.
    pub fn print_summary(&self, path: &Path) {
        eprintln!("\nimage for model {} (root {})", self.name, self.model_root);
        for c in &self.components {
            eprintln!("  {:<8} {:>10} bytes  sha256 {}", c.name, c.size, c.sha256);
        }
        for d in self
            .snp_launch_digests
            .iter()
            .filter(|d| d.vcpus == 1 || d.vcpus == 4)
        {
            eprintln!(
                "  launch digest {:>2} vCPU {:<5} {}",
                d.vcpus, d.cpu, d.digest
            );
        }
        eprintln!(
            "manifest: {} ({} launch digests)",
            path.display(),
            self.snp_launch_digests.len()
        );
    }

    /// Compares this (published) manifest with a rebuilt one, item by item.
    pub fn compare(&self, rebuilt: &Manifest) -> Report {
        let mut items = Vec::new();
        let mut push = |item: String, published: &str, rebuilt: &str| {
            items.push(Comparison {
                item,
                published: published.to_owned(),
                rebuilt: rebuilt.to_owned(),
                matches: published == rebuilt,
            });
        };
        push(
            "image.lock".to_owned(),
            &self.inputs.image_lock_sha256,
            &rebuilt.inputs.image_lock_sha256,
        );
        push(
            "OVMF build root".to_owned(),
            &self.inputs.ovmf_build_root,
            &rebuilt.inputs.ovmf_build_root,
        );
        push(
            "model root".to_owned(),
            &self.model_root,
            &rebuilt.model_root,
        );
        for c in &self.components {
            let other = rebuilt
                .components
                .iter()
                .find(|o| o.name == c.name)
                .map_or("(absent)", |o| o.sha256.as_str());
            push(c.name.clone(), &c.sha256, other);
        }
        for d in &self.snp_launch_digests {
            let other = rebuilt
                .snp_launch_digests
                .iter()
                .find(|o| o.vcpus == d.vcpus && o.cpu == d.cpu)
                .map_or("(absent)", |o| o.digest.as_str());
            push(
                format!("launch digest {} vCPU {}", d.vcpus, d.cpu),
                &d.digest,
                other,
            );
        }
        Report {
            items,
            not_compared: Vec::new(),
        }
    }

    /// Compares an image built without OVMF: image.lock (which pins OVMF's inputs), the
    /// kernel, initrd, command line and enclave. OVMF and the launch digests are listed
    /// as not compared; when everything compared matches, they differ from the published
    /// ones only if the OVMF build itself is not reproducible, which `repro-check` and a
    /// full `verify-image` test.
    pub fn compare_without_firmware(&self, image: &ImageFiles<'_>) -> anyhow::Result<Report> {
        let mut components = Vec::new();
        for (name, file) in [
            ("kernel", "vmlinuz"),
            ("initrd", "initrd.img"),
            ("cmdline", "cmdline"),
        ] {
            components.push(component(name, file, &image.out.join(file))?);
        }
        components.push(component("enclave", "initrd.img:/init", image.enclave)?);
        let mut rebuilt = self.clone();
        rebuilt.components = components;
        rebuilt.inputs.image_lock_sha256 = sha256_file(&image.root.join(super::lock::LOCK_FILE))?;
        image
            .ovmf_build_root
            .clone_into(&mut rebuilt.inputs.ovmf_build_root);
        rebuilt.cmdline = fs::read_to_string(image.out.join("cmdline"))?;
        let mut report = self.compare(&rebuilt);
        // The rebuilt side's model root is the published one (verify-image builds for
        // it), so comparing it here would prove nothing; the fresh import's root is
        // compared by `push_fresh_model_root`.
        report.items.retain(|item| {
            !["ovmf", "model root"].contains(&item.item.as_str())
                && !item.item.starts_with("launch digest")
        });
        report.not_compared.push(format!(
            "ovmf and {} launch digests: built without OVMF (--without-firmware)",
            self.snp_launch_digests.len()
        ));
        Ok(report)
    }
}

impl Report {
    /// Compares the published model root with the one a fresh import under `home`
    /// computed (`cargo xtask fetch-model` writes `models/NAME/manifest.json`), so a
    /// model import that is not reproducible shows up here instead of as a launch
    /// digest nobody can rebuild.
    pub fn push_fresh_model_root(&mut self, published: &Manifest, home: &Path) {
        let path = home
            .join("models")
            .join(&published.name)
            .join("manifest.json");
        let imported = fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| json.get("root")?.as_str().map(str::to_owned));
        match imported {
            Some(root) => self.items.push(Comparison {
                item: "model root (import here)".to_owned(),
                matches: root == published.model_root,
                published: published.model_root.clone(),
                rebuilt: root,
            }),
            None => self.not_compared.push(format!(
                "model root: no imported model at {} (cargo xtask fetch-model {})",
                path.display(),
                published.name
            )),
        }
    }

    /// Whether every item matched.
    pub fn all_match(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.matches)
    }

    /// One line per item on stdout.
    pub fn print(&self) {
        for i in &self.items {
            if i.matches {
                println!("match     {:<28} {}", i.item, i.published);
            } else {
                println!(
                    "MISMATCH  {:<28} published {} rebuilt {}",
                    i.item, i.published, i.rebuilt
                );
            }
        }
        for what in &self.not_compared {
            println!("NOT COMPARED  {what}");
        }
        let bad = self.items.iter().filter(|i| !i.matches).count();
        println!(
            "{} items compared, {} mismatched, {} not compared",
            self.items.len(),
            bad,
            self.not_compared.len()
        );
    }
}

fn component(name: &str, file: &str, path: &Path) -> anyhow::Result<Component> {
    let size = fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len();
    Ok(Component {
        name: name.to_owned(),
        file: file.to_owned(),
        size,
        sha256: sha256_file(path)?,
    })
}

fn rustc_version(root: &Path) -> String {
    Command::new("rustc")
        .arg("--version")
        .current_dir(root)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            manifest_version: 1,
            name: "m".into(),
            model_root: "00".repeat(32),
            config_sha256: "11".repeat(32),
            cmdline: "console=ttyS0".into(),
            components: vec![Component {
                name: "kernel".into(),
                file: "vmlinuz".into(),
                size: 3,
                sha256: "aa".into(),
            }],
            modules: vec![],
            inputs: Inputs {
                kernel: "k".into(),
                edk2: "e".into(),
                ovmf_build_root: "b".into(),
                rust_toolchain: "r".into(),
                cargo_lock_sha256: "c".into(),
                image_lock_sha256: "i".into(),
                source_commit: "0123".into(),
            },
            guest_features: "0x1".into(),
            snp_launch_digests: vec![LaunchDigestEntry {
                vcpus: 1,
                cpu: CpuGeneration::Milan,
                digest: "dd".into(),
            }],
            min_tcb: min_tcb_table(),
            prices: super::super::ImagePrices::default(),
        }
    }

    #[test]
    fn identical_manifests_match_and_one_changed_value_does_not() {
        let published = sample();
        assert!(published.compare(&sample()).all_match());
        let mut kernel = sample();
        kernel.components[0].sha256 = "ab".into();
        let report = published.compare(&kernel);
        assert!(!report.all_match());
        assert_eq!(report.items.iter().filter(|i| !i.matches).count(), 1);
        let mut digest = sample();
        digest.snp_launch_digests[0].digest = "de".into();
        assert!(!published.compare(&digest).all_match());
        let mut lock = sample();
        lock.inputs.image_lock_sha256 = "j".into();
        assert!(!published.compare(&lock).all_match());
    }

    #[test]
    fn a_fresh_import_with_another_root_is_a_mismatch_and_none_is_not_compared() {
        let published = sample();
        let home = tempfile::tempdir().unwrap();
        let mut report = published.compare(&sample());
        report.push_fresh_model_root(&published, home.path());
        assert!(report.all_match());
        assert_eq!(report.not_compared.len(), 1, "{:?}", report.not_compared);

        let dir = home.path().join("models/m");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("manifest.json"), r#"{"root":"ff"}"#).unwrap();
        let mut report = published.compare(&sample());
        report.push_fresh_model_root(&published, home.path());
        assert!(!report.all_match());
        fs::write(
            dir.join("manifest.json"),
            format!(r#"{{"root":"{}"}}"#, published.model_root),
        )
        .unwrap();
        let mut report = published.compare(&sample());
        report.push_fresh_model_root(&published, home.path());
        assert!(report.all_match() && report.not_compared.is_empty());
    }

    #[test]
    fn without_firmware_compares_every_file_but_ovmf_and_names_what_it_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (file, bytes) in [
            ("vmlinuz", "kernel"),
            ("initrd.img", "initrd"),
            ("cmdline", "console=ttyS0"),
            ("init", "enclave"),
            (super::super::lock::LOCK_FILE, "lock"),
        ] {
            fs::write(root.join(file), bytes).unwrap();
        }
        let files = ImageFiles {
            out: root,
            enclave: &root.join("init"),
            root,
            ovmf_build_root: "b",
        };
        let mut published = sample();
        published.components.clear();
        published.inputs.image_lock_sha256 = sha256_file(&root.join("image.lock")).unwrap();
        for (name, file, path) in [
            ("ovmf", "OVMF.fd", "cmdline"),
            ("kernel", "vmlinuz", "vmlinuz"),
            ("initrd", "initrd.img", "initrd.img"),
            ("cmdline", "cmdline", "cmdline"),
            ("enclave", "initrd.img:/init", "init"),
        ] {
            published
                .components
                .push(component(name, file, &root.join(path)).unwrap());
        }
        let report = published.compare_without_firmware(&files).unwrap();
        assert!(report.all_match(), "{report:?}");
        let compared: Vec<&str> = report.items.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(
            compared,
            [
                "image.lock",
                "OVMF build root",
                "kernel",
                "initrd",
                "cmdline",
                "enclave"
            ]
        );
        assert!(report.not_compared[0].contains("launch digests"));

        fs::write(root.join("init"), "other enclave").unwrap();
        let report = published.compare_without_firmware(&files).unwrap();
        let bad: Vec<&str> = report
            .items
            .iter()
            .filter(|i| !i.matches)
            .map(|i| i.item.as_str())
            .collect();
        assert_eq!(bad, ["enclave"]);
    }

    #[test]
    fn the_digest_list_has_the_shape_verifiers_read() {
        let json = serde_json::to_value(sample()).unwrap();
        let entry = &json["snp_launch_digests"][0];
        assert_eq!(entry["vcpus"], 1);
        assert_eq!(entry["cpu"], "milan");
        assert_eq!(entry["digest"], "dd");
    }

    #[test]
    fn the_minimum_tcb_covers_every_generation_and_asks_for_fixed_firmware() {
        let table = min_tcb_table();
        let cpus: Vec<CpuGeneration> = table.iter().map(|e| e.cpu).collect();
        assert_eq!(cpus, CpuGeneration::ALL);
        for entry in &table {
            assert!(entry.snp > 0 && entry.microcode > 0, "{entry:?}");
            assert!(entry.source.contains("AMD-SB-"), "{entry:?}");
            assert_eq!(entry.fmc.is_some(), entry.cpu == CpuGeneration::Turin);
        }
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["min_tcb"][0]["cpu"], "milan");
        assert!(
            json["min_tcb"][0].get("fmc").is_none(),
            "no FMC before Turin"
        );
    }

    #[test]
    fn the_published_manifest_carries_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../measurements/published");
        for entry in std::fs::read_dir(path).unwrap() {
            let published = Manifest::read(&entry.unwrap().path()).unwrap();
            assert_eq!(published.min_tcb, min_tcb_table());
        }
    }
}
