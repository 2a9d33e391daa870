//! SEV-SNP launch digests of the Chrysalis guest image.
//!
//! With measured direct boot (QEMU `kernel-hashes=on`), the launch digest that the AMD
//! secure processor puts in every attestation report covers the OVMF firmware, a table
//! of SHA-256 hashes of the kernel, the initrd and the command line that OVMF checks
//! before it jumps to the kernel, and one VMSA page per vCPU (so it depends on the vCPU
//! count and on the CPU family the VMSA's CPUID signature names). This module computes
//! it with the `sev` crate's measurement code, the same computation AMD's firmware
//! performs, so a client can compare an attested measurement with a published one.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sev::measurement::snp::{calc_snp_ovmf_hash, snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use sev::parser::ByteParser;

/// Length of an SNP launch digest: SHA-384.
pub const LAUNCH_DIGEST_LEN: usize = 48;

/// The vCPU counts every published manifest lists a digest for.
pub const PUBLISHED_VCPU_COUNTS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Guest features (SEV_FEATURES in the VMSA) that QEMU sets by default for an SNP guest:
/// only `SNPActive`. A launch with other features (e.g. debug-swap) measures differently.
pub const QEMU_DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// The most vCPUs a digest is computed for: the VMSA pages are hashed one per vCPU, and
/// QEMU's q35 machine tops out well below this.
pub const MAX_VCPUS: u32 = 512;

/// Errors of the launch-digest computation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The vCPU count is outside `1..=MAX_VCPUS`.
    #[error("vCPU count {found} is out of range: expected 1 to {MAX_VCPUS}")]
    VcpuCount {
        /// The count that was asked for.
        found: u32,
    },
    /// The `sev` crate rejected an input (unreadable file, OVMF without the SNP
    /// kernel-hashes section, ...).
    #[error("could not measure {what}: {source}")]
    Measurement {
        /// Which step failed.
        what: &'static str,
        /// The `sev` crate's error.
        source: sev::error::MeasurementError,
    },
    /// The guest-features word was not accepted.
    #[error("invalid guest features {found:#x}: {source}")]
    GuestFeatures {
        /// The word that was given.
        found: u64,
        /// Why it was refused.
        source: std::io::Error,
    },
    /// A CPU generation name was not one of `milan`, `genoa`, `turin`.
    #[error("unknown CPU generation {found:?}: expected milan, genoa or turin")]
    UnknownCpu {
        /// The name that was given.
        found: String,
    },
}

/// An AMD EPYC generation with SEV-SNP. The VMSA of every vCPU carries its CPUID family,
/// model and stepping, so each generation has its own launch digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuGeneration {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004 (Zen 4).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl CpuGeneration {
    /// Every generation a manifest publishes digests for, oldest first.
    pub const ALL: [CpuGeneration; 3] = [Self::Milan, Self::Genoa, Self::Turin];

    /// The lowercase name used in manifests and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "milan",
            Self::Genoa => "genoa",
            Self::Turin => "turin",
        }
    }

    /// The QEMU `-cpu` model whose CPUID signature the measurement assumes.
    pub fn qemu_cpu_model(self) -> &'static str {
        match self {
            Self::Milan => "EPYC-Milan",
            Self::Genoa => "EPYC-Genoa",
            Self::Turin => "EPYC-Turin",
        }
    }

    fn sev_cpu_type(self) -> CpuType {
        match self {
            Self::Milan => CpuType::EpycMilan,
            Self::Genoa => CpuType::EpycGenoa,
            Self::Turin => CpuType::EpycTurin,
        }
    }
}

impl fmt::Display for CpuGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuGeneration {
    type Err = LaunchError;

    fn from_str(s: &str) -> Result<Self, LaunchError> {
        Self::ALL
            .into_iter()
            .find(|cpu| cpu.name() == s)
            .ok_or_else(|| LaunchError::UnknownCpu {
                found: s.to_owned(),
            })
    }
}

/// The measured parts of a directly booted guest, as files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredBoot {
    /// The OVMF image (an AmdSev build with the SNP kernel-hashes section).
    pub ovmf: PathBuf,
    /// The kernel (bzImage) given to QEMU with `-kernel`.
    pub kernel: PathBuf,
    /// The initrd given with `-initrd`.
    pub initrd: PathBuf,
    /// The exact string given with `-append`.
    pub cmdline: String,
}

/// One entry of a manifest's `snp_launch_digests` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchDigestEntry {
    /// The vCPU count (`-smp`).
    pub vcpus: u32,
    /// The CPU generation (`-cpu`).
    pub cpu: CpuGeneration,
    /// The launch digest, 96 lowercase hex characters.
    pub digest: String,
}

/// One entry of a manifest's `min_tcb` list: the lowest security version numbers
/// (SVNs, "SPLs" in AMD's bulletins) a client accepts in REPORTED_TCB on one CPU
/// generation. The generator (`xtask`) writes them from its table of AMD security
/// bulletins; `source` names the bulletins, for a reviewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinTcbEntry {
    /// The CPU generation the minimum applies to.
    pub cpu: CpuGeneration,
    /// FMC firmware SVN (Turin and later; absent on Milan and Genoa).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// PSP boot loader SVN.
    pub bootloader: u8,
    /// PSP operating system (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode SVN (the low byte of the patch level on Milan and Genoa).
    pub microcode: u8,
    /// Where the values come from (bulletin numbers), for a reviewer.
    #[serde(default)]
    pub source: String,
}

/// Computes launch digests for one image, hashing the firmware only once.
pub struct LaunchCalculator {
    boot: MeasuredBoot,
    ovmf_hash_hex: String,
    guest_features: u64,
}

impl LaunchCalculator {
    /// Prepares a calculator for `boot` with QEMU's default guest features.
    pub fn new(boot: MeasuredBoot) -> Result<Self, LaunchError> {
        Self::with_guest_features(boot, QEMU_DEFAULT_GUEST_FEATURES)
    }

    /// Prepares a calculator for `boot` whose VMSAs carry `guest_features`.
    pub fn with_guest_features(
        boot: MeasuredBoot,
        guest_features: u64,
    ) -> Result<Self, LaunchError> {
        guest_features_from(guest_features)?;
        let ovmf_hash =
            calc_snp_ovmf_hash(boot.ovmf.clone()).map_err(|source| LaunchError::Measurement {
                what: "the OVMF firmware",
                source,
            })?;
        Ok(Self {
            boot,
            ovmf_hash_hex: ovmf_hash.get_hex_ld(),
            guest_features,
        })
    }

    /// The launch digest of this image on `vcpus` vCPUs of generation `cpu`.
    pub fn digest(
        &self,
        vcpus: u32,
        cpu: CpuGeneration,
    ) -> Result<[u8; LAUNCH_DIGEST_LEN], LaunchError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(LaunchError::VcpuCount { found: vcpus });
        }
        let args = SnpMeasurementArgs {
            vcpus,
            vcpu_type: cpu.sev_cpu_type(),
            ovmf_file: self.boot.ovmf.clone(),
            guest_features: guest_features_from(self.guest_features)?,
            kernel_file: Some(self.boot.kernel.clone()),
            initrd_file: Some(self.boot.initrd.clone()),
            append: Some(&self.boot.cmdline),
            ovmf_hash_str: Some(&self.ovmf_hash_hex),
            vmm_type: Some(VMMType::QEMU),
        };
        let digest = snp_calc_launch_digest(args).map_err(|source| LaunchError::Measurement {
            what: "the guest launch",
            source,
        })?;
        let bytes = digest.to_bytes().map_err(|e| LaunchError::Measurement {
            what: "the digest encoding",
            source: sev::error::MeasurementError::FileError(e),
        })?;
        Ok(bytes)
    }

    /// Digests for every pair of `vcpu_counts` and `cpus`, CPU-major.
    pub fn table(
        &self,
        vcpu_counts: &[u32],
        cpus: &[CpuGeneration],
    ) -> Result<Vec<LaunchDigestEntry>, LaunchError> {
        let mut entries = Vec::with_capacity(vcpu_counts.len() * cpus.len());
        for &cpu in cpus {
            for &vcpus in vcpu_counts {
                entries.push(LaunchDigestEntry {
                    vcpus,
                    cpu,
                    digest: hex::encode(self.digest(vcpus, cpu)?),
                });
            }
        }
        Ok(entries)
    }

    /// The image this calculator measures.
    pub fn boot(&self) -> &MeasuredBoot {
        &self.boot
    }
}

/// The launch digests for every published vCPU count and CPU generation.
pub fn published_digests(boot: &MeasuredBoot) -> Result<Vec<LaunchDigestEntry>, LaunchError> {
    LaunchCalculator::new(boot.clone())?.table(&PUBLISHED_VCPU_COUNTS, &CpuGeneration::ALL)
}

fn guest_features_from(word: u64) -> Result<GuestFeatures, LaunchError> {
    GuestFeatures::from_bytes(&word.to_le_bytes()).map_err(|source| LaunchError::GuestFeatures {
        found: word,
        source,
    })
}

#[cfg(test)]
mod tests {
    //! The digest tests need a real AmdSev OVMF build (4 MiB, with the SNP kernel-hashes
    //! section), which `cargo xtask build-image` produces; they are ignored by default
    //! and run with:
    //! `cargo xtask build-image && cargo test -p chrysalis-measurements launch -- --ignored`
    //! (`CHRYSALIS_IMAGE_DIR` points them at another image directory).

    use super::*;
    use std::path::Path;
    use std::process::Command;

    const NEEDS_IMAGE: &str = "needs a built image: cargo xtask build-image && \
                               cargo test -p chrysalis-measurements launch -- --ignored";

    fn image_dir() -> PathBuf {
        std::env::var_os("CHRYSALIS_IMAGE_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image"),
            PathBuf::from,
        )
    }

    fn built_image() -> MeasuredBoot {
        let dir = image_dir();
        let cmdline = std::fs::read_to_string(dir.join("cmdline"))
            .unwrap_or_else(|e| panic!("{} has no cmdline ({e}): {NEEDS_IMAGE}", dir.display()));
        MeasuredBoot {
            ovmf: dir.join("OVMF.fd"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline,
        }
    }

    /// A scratch directory unique to one test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("chrysalis-launch-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir is writable");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Copies `file` into `scratch` with the byte at `offset` inverted.
    fn tampered_copy(file: &Path, scratch: &Scratch, offset: usize) -> PathBuf {
        let mut bytes = std::fs::read(file).expect("image component is readable");
        let at = offset % bytes.len();
        bytes[at] ^= 0xff;
        let out = scratch
            .0
            .join(file.file_name().expect("component has a file name"));
        std::fs::write(&out, bytes).expect("scratch is writable");
        out
    }

    fn digest_of(boot: MeasuredBoot) -> [u8; LAUNCH_DIGEST_LEN] {
        LaunchCalculator::new(boot)
            .expect("image measures")
            .digest(4, CpuGeneration::Genoa)
            .expect("digest computes")
    }

    #[test]
    fn cpu_names_round_trip_and_unknown_names_are_refused() {
        for cpu in CpuGeneration::ALL {
            assert_eq!(cpu.name().parse::<CpuGeneration>().ok(), Some(cpu));
            assert!(cpu.qemu_cpu_model().starts_with("EPYC-"));
        }
        let err = "rome"
            .parse::<CpuGeneration>()
            .expect_err("rome is not published");
        assert!(err.to_string().contains("\"rome\""), "{err}");
    }

    #[test]
    fn missing_firmware_is_an_error_naming_the_firmware() {
        let err = LaunchCalculator::new(MeasuredBoot {
            ovmf: PathBuf::from("/nonexistent/OVMF.fd"),
            kernel: PathBuf::from("/nonexistent/vmlinuz"),
            initrd: PathBuf::from("/nonexistent/initrd.img"),
            cmdline: String::new(),
        })
        .err()
        .expect("a missing OVMF cannot be measured");
        assert!(err.to_string().contains("OVMF"), "{err}");
    }

    #[test]
    #[ignore = "needs a built image: cargo xtask build-image && cargo test -p chrysalis-measurements launch -- --ignored"]
    fn zero_and_huge_vcpu_counts_are_refused() {
        let calc = LaunchCalculator::new(built_image()).expect("image measures");
        for vcpus in [0, MAX_VCPUS + 1] {
            let err = calc
                .digest(vcpus, CpuGeneration::Milan)
                .expect_err("out of range");
            assert!(matches!(err, LaunchError::VcpuCount { found } if found == vcpus));
        }
    }

    #[test]
    #[ignore = "needs a built image: cargo xtask build-image && cargo test -p chrysalis-measurements launch -- --ignored"]
    fn tampering_with_any_component_changes_the_digest() {
        let boot = built_image();
        let original = digest_of(boot.clone());
        let scratch = Scratch::new("tamper");
        // One byte in the middle of each file: for OVMF that lands in measured code.
        let ovmf = MeasuredBoot {
            ovmf: tampered_copy(&boot.ovmf, &scratch, 2 << 20),
            ..boot.clone()
        };
        let kernel = MeasuredBoot {
            kernel: tampered_copy(&boot.kernel, &scratch, 1 << 20),
            ..boot.clone()
        };
        let initrd = MeasuredBoot {
            initrd: tampered_copy(&boot.initrd, &scratch, 4096),
            ..boot.clone()
        };
        let mut cmdline = boot.clone();
        cmdline.cmdline = boot.cmdline.replacen("console=", "console= ", 1);
        assert_ne!(cmdline.cmdline, boot.cmdline, "the cmdline names a console");
        for (what, tampered) in [
            ("ovmf", ovmf),
            ("kernel", kernel),
            ("initrd", initrd),
            ("cmdline", cmdline),
        ] {
            assert_ne!(
                digest_of(tampered),
                original,
                "tampered {what} kept the digest"
            );
        }
        assert_eq!(
            digest_of(boot),
            original,
            "the digest is a pure function of the image"
        );
    }

    #[test]
    #[ignore = "needs a built image: cargo xtask build-image && cargo test -p chrysalis-measurements launch -- --ignored"]
    fn vcpu_count_and_cpu_generation_change_the_digest() {
        let calc = LaunchCalculator::new(built_image()).expect("image measures");
        let table = calc
            .table(&PUBLISHED_VCPU_COUNTS, &CpuGeneration::ALL)
            .expect("digests compute");
        let distinct: std::collections::HashSet<_> = table.iter().map(|e| &e.digest).collect();
        assert_eq!(distinct.len(), table.len(), "two launches share a digest");
    }

    /// Runs `sev-snp-measure` (PyPI) and returns its hex digest.
    fn sev_snp_measure(boot: &MeasuredBoot, vcpus: u32, cpu: CpuGeneration) -> String {
        let output = Command::new("sev-snp-measure")
            .args(["--mode", "snp", "--output-format", "hex"])
            .arg(format!("--vcpus={vcpus}"))
            .arg(format!("--vcpu-type={}", cpu.qemu_cpu_model()))
            .arg("--ovmf")
            .arg(&boot.ovmf)
            .arg("--kernel")
            .arg(&boot.kernel)
            .arg("--initrd")
            .arg(&boot.initrd)
            .arg(format!("--append={}", boot.cmdline))
            .output()
            .unwrap_or_else(|e| {
                panic!("could not run sev-snp-measure ({e}): pip install sev-snp-measure==0.0.13")
            });
        assert!(
            output.status.success(),
            "sev-snp-measure failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    #[ignore = "needs a built image and sev-snp-measure: pip install sev-snp-measure==0.0.13 && cargo xtask build-image && cargo test -p chrysalis-measurements launch -- --ignored"]
    fn digests_equal_sev_snp_measure() {
        let boot = built_image();
        let calc = LaunchCalculator::new(boot.clone()).expect("image measures");
        for cpu in CpuGeneration::ALL {
            for vcpus in [1, 2, 8, 64] {
                let ours = hex::encode(calc.digest(vcpus, cpu).expect("digest computes"));
                assert_eq!(ours, sev_snp_measure(&boot, vcpus, cpu), "{vcpus} x {cpu}");
            }
        }
    }
}
