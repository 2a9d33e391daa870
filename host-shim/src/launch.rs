//! `chrysalis-shim launch`: the QEMU command line for the guest image.
//!
//! With `--snp`, an SEV-SNP guest with measured direct boot (QEMU 10): OVMF from the
//! image, `kernel-hashes=on` so OVMF checks the kernel, initrd and command line against
//! the hashes the launch digest covers, guest memory from `memory-backend-memfd`,
//! vhost-vsock for the relay, the model disk read-only, and an optional VFIO GPU behind
//! a PCIe root port. `-smp` and `-cpu` are the vCPU count and CPU generation the
//! published launch digest was computed for. Without `--snp`, an ordinary emulated guest
//! for development (TCG, user networking with a forwarded TCP port).
//!
//! The shim is untrusted: nothing here is security-relevant for the client, who checks
//! the attested measurement. A wrong command line only makes attestation fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_measurements::launch::{CpuGeneration, PUBLISHED_VCPU_COUNTS};
use serde::Serialize;

/// The guest's vsock CID when none is given.
const DEFAULT_CID: u32 = 3;
/// The enclave's TCP port inside a development guest.
const GUEST_TCP_PORT: u16 = 7000;
/// Largest memory size accepted, in MiB (1 TiB).
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Options of `chrysalis-shim launch`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "The image directory is what `cargo xtask build-image` writes: OVMF.fd, \
vmlinuz, initrd.img and cmdline. With --snp the launch digest depends on --vcpus and --cpu: use \
values the published manifest lists (1, 2, 4, 8, 16, 32 or 64 vCPUs; milan, genoa or turin).\n\n\
Examples:\n  chrysalis-shim launch --image target/image --snp --vcpus 4 --cpu genoa \
--model-disk model.ext4 --gpu 0000:41:00.0 --dry-run\n  chrysalis-shim launch --image \
target/image --forward-port 7000 --model-disk model.ext4"
)]
pub struct Args {
    /// Directory with OVMF.fd, vmlinuz, initrd.img and cmdline.
    #[arg(long)]
    pub image: PathBuf,
    /// Launch an SEV-SNP guest (needs an SNP host and QEMU 10); otherwise an emulated guest.
    #[arg(long)]
    pub snp: bool,
    /// Number of vCPUs (part of the SNP measurement).
    #[arg(long, default_value_t = 4)]
    pub vcpus: u32,
    /// CPU generation of the host (part of the SNP measurement): milan, genoa, turin.
    #[arg(long, default_value = "milan")]
    pub cpu: CpuGeneration,
    /// Guest memory, e.g. 4G or 2048M.
    #[arg(long, default_value = "4G")]
    pub memory: String,
    /// A disk image with the model files, attached read-only.
    #[arg(long)]
    pub model_disk: Option<PathBuf>,
    /// PCI address of a GPU to pass through with VFIO, e.g. 0000:41:00.0.
    #[arg(long)]
    pub gpu: Option<String>,
    /// The guest's vsock context id (SNP guests).
    #[arg(long, default_value_t = DEFAULT_CID)]
    pub cid: u32,
    /// Host port forwarded to the enclave's TCP port (emulated guests).
    #[arg(long)]
    pub forward_port: Option<u16>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Print the command line instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run, print the command as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Why no command line could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A file of the image is missing.
    #[error("the image directory lacks {0}: run `cargo xtask build-image --out DIR` first")]
    MissingFile(PathBuf),
    /// The command line file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `--memory` is not a size.
    #[error("memory size {0:?} is not understood: expected a number with M or G, 64M to 1024G")]
    Memory(String),
    /// `--gpu` is not a PCI address.
    #[error("GPU address {0:?} is not a PCI address: expected DDDD:BB:SS.F or BB:SS.F (hex)")]
    GpuAddress(String),
    /// The vCPU count has no published launch digest.
    #[error("no published launch digest for {0} vCPUs: expected one of 1, 2, 4, 8, 16, 32, 64")]
    Vcpus(u32),
    /// The vsock CID is reserved.
    #[error("vsock CID {0} is reserved: expected 3 or more")]
    Cid(u32),
    /// An option that only makes sense for the other kind of guest.
    #[error("{0}")]
    Conflict(&'static str),
}

/// A QEMU invocation: program and arguments, never through a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchPlan {
    /// The QEMU binary.
    pub program: String,
    /// Its arguments, one per element.
    pub args: Vec<String>,
}

impl LaunchPlan {
    /// The command line quoted for a POSIX shell, for people to read and paste.
    pub fn shell_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(word: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Builds the QEMU command line for `args`, reading the image's cmdline file.
pub fn plan(args: &Args) -> Result<LaunchPlan, LaunchError> {
    let files = ["OVMF.fd", "vmlinuz", "initrd.img", "cmdline"].map(|f| args.image.join(f));
    for file in &files {
        if !file.is_file() {
            return Err(LaunchError::MissingFile(file.clone()));
        }
    }
    let [ovmf, kernel, initrd, cmdline_path] = files;
    let cmdline = std::fs::read_to_string(&cmdline_path).map_err(|source| LaunchError::Read {
        path: cmdline_path,
        source,
    })?;
    let memory_mib = parse_memory(&args.memory)?;
    let gpu = args.gpu.as_deref().map(parse_pci_address).transpose()?;
    if args.cid < 3 {
        return Err(LaunchError::Cid(args.cid));
    }
    let mut q = Vec::new();
    if args.snp {
        snp_args(&mut q, args, memory_mib, &ovmf)?;
    } else {
        dev_args(&mut q, args, memory_mib)?;
    }
    push(
        &mut q,
        ["-kernel", &path_arg(&kernel), "-initrd", &path_arg(&initrd)],
    );
    push(&mut q, ["-append", cmdline.trim_end_matches('\n')]);
    push(
        &mut q,
        [
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ],
    );
    if let Some(disk) = &args.model_disk {
        model_disk_args(&mut q, disk, args.snp);
    }
    if let Some(gpu) = gpu {
        gpu_args(&mut q, &gpu);
    }
    Ok(LaunchPlan {
        program: path_arg(&args.qemu),
        args: q,
    })
}

fn push<const N: usize>(q: &mut Vec<String>, words: [&str; N]) {
    q.extend(words.iter().map(|w| (*w).to_owned()));
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// SEV-SNP guest: KVM, measured direct boot, private memory, vsock.
fn snp_args(
    q: &mut Vec<String>,
    args: &Args,
    memory_mib: u64,
    ovmf: &Path,
) -> Result<(), LaunchError> {
    if !PUBLISHED_VCPU_COUNTS.contains(&args.vcpus) {
        return Err(LaunchError::Vcpus(args.vcpus));
    }
    if args.forward_port.is_some() {
        return Err(LaunchError::Conflict(
            "--forward-port is for emulated guests: an SNP guest talks over vsock",
        ));
    }
    push(q, ["-accel", "kvm", "-cpu", args.cpu.qemu_cpu_model()]);
    push(
        q,
        [
            "-smp",
            &args.vcpus.to_string(),
            "-m",
            &format!("{memory_mib}M"),
        ],
    );
    push(
        q,
        [
            "-machine",
            "q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off",
        ],
    );
    push(
        q,
        [
            "-object",
            &format!("memory-backend-memfd,id=ram1,size={memory_mib}M,share=true,prealloc=false"),
        ],
    );
    push(
        q,
        [
            "-object",
            "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on",
        ],
    );
    push(q, ["-bios", &path_arg(ovmf)]);
    push(
        q,
        [
            "-nodefaults",
            "-device",
            &format!(
                "vhost-vsock-pci,guest-cid={},disable-legacy=on,iommu_platform=on",
                args.cid
            ),
        ],
    );
    Ok(())
}

/// Emulated development guest: TCG, user networking, a virtio RNG for early entropy.
fn dev_args(q: &mut Vec<String>, args: &Args, memory_mib: u64) -> Result<(), LaunchError> {
    if args.vcpus == 0 || args.vcpus > 64 {
        return Err(LaunchError::Vcpus(args.vcpus));
    }
    if args.gpu.is_some() {
        return Err(LaunchError::Conflict(
            "--gpu needs --snp (a GPU is passed through only to a confidential guest)",
        ));
    }
    push(q, ["-accel", "tcg", "-machine", "q35", "-cpu", "max"]);
    push(
        q,
        [
            "-smp",
            &args.vcpus.to_string(),
            "-m",
            &format!("{memory_mib}M"),
        ],
    );
    let hostfwd = args.forward_port.map_or_else(String::new, |p| {
        format!(",hostfwd=tcp:127.0.0.1:{p}-:{GUEST_TCP_PORT}")
    });
    push(
        q,
        [
            "-netdev",
            &format!("user,id=net0{hostfwd}"),
            "-device",
            "virtio-net-pci,netdev=net0",
        ],
    );
    push(q, ["-device", "virtio-rng-pci"]);
    Ok(())
}

/// The model disk, read-only; SNP guests need virtio devices behind the IOMMU platform.
fn model_disk_args(q: &mut Vec<String>, disk: &Path, snp: bool) {
    let file = path_arg(disk).replace(',', ",,");
    push(
        q,
        [
            "-drive",
            &format!("file={file},if=none,id=model,format=raw,readonly=on"),
        ],
    );
    let device = if snp {
        "virtio-blk-pci,drive=model,disable-legacy=on,iommu_platform=on"
    } else {
        "virtio-blk-pci,drive=model"
    };
    push(q, ["-device", device]);
}

/// A VFIO GPU behind its own PCIe root port, with a 256 GiB 64-bit MMIO window for its BARs.
fn gpu_args(q: &mut Vec<String>, address: &str) {
    push(
        q,
        ["-device", "pcie-root-port,id=gpu-port,bus=pcie.0,chassis=1"],
    );
    push(
        q,
        ["-device", &format!("vfio-pci,host={address},bus=gpu-port")],
    );
    push(q, ["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"]);
}

/// `4G` or `2048M` to MiB, between 64 MiB and 1 TiB.
fn parse_memory(text: &str) -> Result<u64, LaunchError> {
    let bad = || LaunchError::Memory(text.to_owned());
    let upper = text.to_ascii_uppercase();
    let (number, scale) = match upper.strip_suffix('G') {
        Some(n) => (n, 1024),
        None => (upper.strip_suffix('M').ok_or_else(bad)?, 1),
    };
    let mib = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)?;
    if !(64..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(bad());
    }
    Ok(mib)
}

/// Normalizes a PCI address to `DDDD:BB:SS.F`.
fn parse_pci_address(text: &str) -> Result<String, LaunchError> {
    let bad = || LaunchError::GpuAddress(text.to_owned());
    let full = if text.matches(':').count() == 1 {
        format!("0000:{text}")
    } else {
        text.to_owned()
    };
    let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex_of(domain, 4) && hex_of(bus, 2) && hex_of(slot, 2) && hex_of(function, 1)) {
        return Err(bad());
    }
    Ok(full.to_ascii_lowercase())
}

/// Runs `chrysalis-shim launch`: prints the plan with `--dry-run`, else runs QEMU.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!("{}", plan.shell_line());
        }
        return Ok(());
    }
    tracing::info!(snp = args.snp, vcpus = args.vcpus, "launching the guest");
    let status = Command::new(&plan.program)
        .args(&plan.args)
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {}: {e}", plan.program))?;
    if !status.success() {
        anyhow::bail!("QEMU exited with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch image directory with placeholder files (only their presence matters here).
    struct Image(PathBuf);

    impl Image {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("chrysalis-launch-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for file in ["OVMF.fd", "vmlinuz", "initrd.img"] {
                std::fs::write(dir.join(file), b"x").unwrap();
            }
            std::fs::write(dir.join("cmdline"), "console=ttyS0 chrysalis.model=m").unwrap();
            Image(dir)
        }

        fn args(&self) -> Args {
            Args {
                image: self.0.clone(),
                snp: false,
                vcpus: 4,
                cpu: CpuGeneration::Genoa,
                memory: "4G".into(),
                model_disk: None,
                gpu: None,
                cid: DEFAULT_CID,
                forward_port: None,
                qemu: "qemu-system-x86_64".into(),
                dry_run: true,
                json: false,
            }
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The value following `flag` each time it appears.
    fn values<'a>(plan: &'a LaunchPlan, flag: &str) -> Vec<&'a str> {
        plan.args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn snp_guest_is_measured_direct_boot_with_the_measured_cpu_and_count() {
        let image = Image::new("snp");
        let mut args = image.args();
        args.snp = true;
        args.model_disk = Some("/srv/model disk.img".into());
        args.gpu = Some("41:00.0".into());
        let plan = plan(&args).unwrap();
        assert_eq!(values(&plan, "-cpu"), ["EPYC-Genoa"]);
        assert_eq!(values(&plan, "-smp"), ["4"]);
        assert_eq!(values(&plan, "-accel"), ["kvm"]);
        let objects = values(&plan, "-object");
        assert!(objects
            .contains(&"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"));
        assert!(
            objects.contains(&"memory-backend-memfd,id=ram1,size=4096M,share=true,prealloc=false")
        );
        assert_eq!(
            values(&plan, "-machine"),
            ["q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off"]
        );
        assert_eq!(
            values(&plan, "-bios"),
            [image.0.join("OVMF.fd").to_str().unwrap()]
        );
        assert_eq!(
            values(&plan, "-append"),
            ["console=ttyS0 chrysalis.model=m"]
        );
        let devices = values(&plan, "-device");
        assert!(
            devices.contains(&"vhost-vsock-pci,guest-cid=3,disable-legacy=on,iommu_platform=on")
        );
        assert!(devices.contains(&"virtio-blk-pci,drive=model,disable-legacy=on,iommu_platform=on"));
        assert!(devices.contains(&"pcie-root-port,id=gpu-port,bus=pcie.0,chassis=1"));
        assert!(devices.contains(&"vfio-pci,host=0000:41:00.0,bus=gpu-port"));
        assert_eq!(
            values(&plan, "-drive"),
            ["file=/srv/model disk.img,if=none,id=model,format=raw,readonly=on"]
        );
        assert_eq!(
            values(&plan, "-fw_cfg"),
            ["name=opt/ovmf/X-PciMmio64Mb,string=262144"]
        );
        assert!(
            !plan.args.iter().any(|a| a.contains("user,")),
            "no host networking in SNP"
        );
    }

    #[test]
    fn dev_guest_is_emulated_with_a_forwarded_port_and_a_readonly_disk() {
        let image = Image::new("dev");
        let mut args = image.args();
        args.forward_port = Some(7100);
        args.model_disk = Some("/m,odd.img".into());
        let plan = plan(&args).unwrap();
        assert_eq!(values(&plan, "-accel"), ["tcg"]);
        assert_eq!(
            values(&plan, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:7100-:7000"]
        );
        assert_eq!(
            values(&plan, "-drive"),
            ["file=/m,,odd.img,if=none,id=model,format=raw,readonly=on"]
        );
        assert!(values(&plan, "-object").is_empty(), "no SNP objects");
        assert!(values(&plan, "-bios").is_empty());
    }

    #[test]
    fn wrong_options_are_refused_naming_what_was_expected() {
        let image = Image::new("bad");
        let mut snp = image.args();
        snp.snp = true;
        snp.vcpus = 3;
        assert!(matches!(plan(&snp), Err(LaunchError::Vcpus(3))));
        snp.vcpus = 2;
        snp.forward_port = Some(1);
        assert!(matches!(plan(&snp), Err(LaunchError::Conflict(_))));
        let mut gpu = image.args();
        gpu.snp = true;
        gpu.gpu = Some("41:00".into());
        assert!(plan(&gpu).unwrap_err().to_string().contains("DDDD:BB:SS.F"));
        let mut dev_gpu = image.args();
        dev_gpu.gpu = Some("0000:41:00.0".into());
        assert!(matches!(plan(&dev_gpu), Err(LaunchError::Conflict(_))));
        for memory in ["4T", "G", "12", "1M", "99999999999999999999G"] {
            let mut m = image.args();
            m.memory = memory.into();
            assert!(
                matches!(plan(&m), Err(LaunchError::Memory(_))),
                "{memory} accepted"
            );
        }
        let mut cid = image.args();
        cid.cid = 2;
        assert!(matches!(plan(&cid), Err(LaunchError::Cid(2))));
        let missing = Args {
            image: image.0.join("nowhere"),
            ..image.args()
        };
        assert!(matches!(plan(&missing), Err(LaunchError::MissingFile(_))));
    }

    #[test]
    fn shell_line_quotes_what_a_shell_would_split() {
        let plan = LaunchPlan {
            program: "qemu".into(),
            args: vec!["-append".into(), "console=ttyS0 a='b'".into()],
        };
        assert_eq!(
            plan.shell_line(),
            r#"qemu -append 'console=ttyS0 a='\''b'\'''"#
        );
    }
}
