//! The reproducible, measured guest image: `build-image`, `verify-image`, `boot-test`
//! and `repro-check`.
//!
//! An image is four files (OVMF.fd, vmlinuz, initrd.img, cmdline) plus a manifest with
//! their SHA-256s and the SNP launch digests they give. Every external input is pinned
//! in `image.lock`; everything else comes from this checkout.

mod apt;
pub mod boot;
pub mod build_root;
mod cpio;
mod enclave;
mod kernel;
mod lock;
mod manifest;
pub mod model_disk;
mod ovmf;
pub mod repro;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::util::{chrysalis_home, workspace_root};
pub use boot::BootTestArgs;
use lock::{sha256_hex, ImageLock, PinnedFile};
use manifest::Manifest;
pub use repro::ReproArgs;

/// The model an image is built for when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Options of `cargo xtask build-image`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Writes OVMF.fd, vmlinuz, initrd.img and cmdline into --out and the manifest \
to measurements/published/NAME.json. Downloads (through a private apt directory under \
$CHRYSALIS_HOME/apt) are checked against image.lock; OVMF is built once per set of inputs \
and cached under $CHRYSALIS_HOME/cache.\n\nExample: cargo xtask build-image --model smollm2-135m"
)]
pub struct BuildArgs {
    /// Model the image serves: its root hash comes from $CHRYSALIS_HOME/models/NAME/manifest.json.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Model root hash (64 hex digits), when the model has not been fetched here.
    #[arg(long)]
    pub model_root: Option<String>,
    /// Output directory for the image files [default: target/image].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write the manifest [default: measurements/published/MODEL.json].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Build OVMF even when a cached build for these inputs exists.
    #[arg(long)]
    pub rebuild_ovmf: bool,
    /// Skip OVMF and the launch digests: write only vmlinuz, initrd.img and cmdline
    /// (enough for `boot-test`, which boots without firmware measurement). No manifest.
    #[arg(long)]
    pub skip_firmware: bool,
    /// Download the apt package lists again.
    #[arg(long)]
    pub refresh_apt: bool,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Token prices, part of the measured configuration.
    #[command(flatten)]
    pub prices: ImagePrices,
}

/// Token prices the enclave bills, in nanotons. They live in the measured static
/// configuration, so a client that checks the launch digest also knows the prices; a
/// provider who wants other prices builds (and publishes) another image.
#[derive(
    clap::Args, Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
pub struct ImagePrices {
    /// Nanotons per prompt token (0 with a zero completion price: serve for free).
    #[arg(long = "price-prompt", value_name = "NANOTON", default_value_t = 0)]
    pub prompt_nanoton: u64,
    /// Nanotons per generated token.
    #[arg(long = "price-completion", value_name = "NANOTON", default_value_t = 0)]
    pub completion_nanoton: u64,
}

/// Options of `cargo xtask verify-image`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Rebuilds the image described by MANIFEST from this checkout (same model \
name and model root) and prints each component and launch digest as match or mismatch. \
Exits non-zero on any mismatch.\n\nExample: cargo xtask verify-image measurements/published/smollm2-135m.json"
)]
pub struct VerifyArgs {
    /// The published manifest to check against.
    pub manifest: PathBuf,
    /// Where to put the rebuilt image [default: target/image-verify].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not build OVMF (a quarter of an hour on 2 cores the first time): compare the
    /// kernel, initrd, enclave, command line and image.lock, and report OVMF and the
    /// launch digests as not compared. CI uses this when no OVMF build is cached.
    #[arg(long)]
    pub without_firmware: bool,
}

/// What `build` wrote.
pub struct BuiltImage {
    /// The image directory: vmlinuz, initrd.img, cmdline, and OVMF.fd unless skipped.
    pub out: PathBuf,
    /// The enclave binary that is the initrd's `/init`.
    pub enclave: PathBuf,
    /// The manifest, when OVMF was built and the launch digests computed.
    pub manifest: Option<Manifest>,
}

/// `cargo xtask build-image`.
pub fn run_build(args: BuildArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let Some(manifest) = build(&root, &args)?.manifest else {
        eprintln!(
            "--skip-firmware: wrote vmlinuz, initrd.img and cmdline; no OVMF, digests or manifest"
        );
        return Ok(());
    };
    let path = args.manifest.clone().unwrap_or_else(|| {
        root.join("measurements/published")
            .join(format!("{}.json", args.model))
    });
    manifest.write(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        manifest.print_summary(&path);
    }
    Ok(())
}

/// Whether OVMF for the locked inputs is already built and cached here (a full image
/// build then takes minutes instead of a quarter of an hour).
pub fn firmware_is_cached(root: &Path) -> anyhow::Result<bool> {
    let lock = ImageLock::load(root)?;
    Ok(ovmf::cached(&lock, &chrysalis_home().join("cache")).is_some())
}

/// `cargo xtask verify-image`.
pub fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let published = Manifest::read(&args.manifest)?;
    let build_args = BuildArgs {
        model: published.name.clone(),
        model_root: Some(published.model_root.clone()),
        out: Some(args.out.unwrap_or_else(|| root.join("target/image-verify"))),
        manifest: None,
        rebuild_ovmf: false,
        skip_firmware: args.without_firmware,
        refresh_apt: false,
        json: false,
        prices: published.prices,
    };
    let built = build(&root, &build_args)?;
    let mut report = match &built.manifest {
        Some(rebuilt) => published.compare(rebuilt),
        None => published.compare_without_firmware(&manifest::ImageFiles {
            out: &built.out,
            enclave: &built.enclave,
            root: &root,
            ovmf_build_root: &ImageLock::load(&root)?.build_root.describe(),
        })?,
    };
    report.push_fresh_model_root(&published, &chrysalis_home());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    if !report.all_match() {
        let here = manifest::source_commit(&root);
        let published_from = &published.inputs.source_commit;
        if !published_from.is_empty() && *published_from != here {
            eprintln!(
                "note: {} was built from commit {published_from}, this checkout is {here}; \
                 if that commit is older, the manifest is stale: rebuild and publish it \
                 (cargo xtask build-image --model {})",
                args.manifest.display(),
                published.name
            );
        }
        bail!("the rebuilt image differs from {}", args.manifest.display());
    }
    Ok(())
}

/// The model root hash: `--model-root`, or the fetched model's manifest.
fn model_root(args: &BuildArgs) -> anyhow::Result<String> {
    let root = match &args.model_root {
        Some(hex) => hex.to_lowercase(),
        None => {
            let path = chrysalis_home()
                .join("models")
                .join(&args.model)
                .join("manifest.json");
            let text = fs::read_to_string(&path).with_context(|| {
                format!(
                    "no model manifest at {} : run `cargo xtask fetch-model {}` or pass --model-root HEX",
                    path.display(),
                    args.model
                )
            })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            json.get("root")
                .and_then(|r| r.as_str())
                .with_context(|| format!("{} has no string field \"root\"", path.display()))?
                .to_lowercase()
        }
    };
    if root.len() != 64 || !root.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("model root {root:?} is not 64 hex digits");
    }
    Ok(root)
}

/// Builds the image described by `args` from the checkout at `root`.
pub fn build(root: &Path, args: &BuildArgs) -> anyhow::Result<BuiltImage> {
    if args.model.is_empty()
        || !args
            .model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!(
            "model name {:?} must be letters, digits, -, _ or .",
            args.model
        );
    }
    let model_root = model_root(args)?;
    let lock = ImageLock::load(root)?;
    let home = chrysalis_home();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/image"));
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;

    step(1, "downloading pinned Debian inputs");
    let apt = apt::PrivateApt::create(&home.join("apt"), &lock.debian)?;
    apt.update(args.refresh_apt)?;
    let downloads = home.join("downloads");
    let kernel_pin = PinnedFile {
        file: lock.kernel.file.clone(),
        sha256: lock.kernel.sha256.clone(),
    };
    let deb = apt.download_deb(
        &lock.kernel.package,
        &lock.kernel.version,
        &kernel_pin,
        &downloads,
    )?;
    let tarballs = apt.download_source(
        &lock.edk2.source,
        &lock.edk2.version,
        &lock.edk2.files,
        &downloads,
    )?;

    let ovmf = if args.skip_firmware {
        None
    } else {
        step(2, "OVMF (AmdSevX64)");
        Some(ovmf::firmware(
            &lock,
            &tarballs,
            &downloads.join("build-root"),
            &home.join("cache"),
            args.rebuild_ovmf,
        )?)
    };

    step(3, "kernel and modules");
    let kernel = kernel::KernelTree::unpack(
        &deb,
        &lock.kernel,
        &home.join("cache").join(format!(
            "kernel-{}",
            lock.kernel.sha256.get(..16).unwrap_or("x")
        )),
    )?;
    let modules = kernel.modules_in_load_order(&lock.kernel.modules)?;

    step(4, "enclave (static musl, reproducible)");
    let enclave = enclave::build(root, &lock, &root.join("target/image-enclave"))?;

    step(5, "initrd and command line");
    let config = static_config(&args.model, args.prices);
    let config_sha256 = sha256_hex(&config);
    let initrd = initrd_bytes(&fs::read(&enclave)?, &modules, &config)?;
    let cmdline = kernel_cmdline(&args.model, &model_root, &config_sha256);
    if let Some(ovmf) = &ovmf {
        fs::copy(ovmf, out.join("OVMF.fd"))?;
    }
    fs::copy(kernel.vmlinuz()?, out.join("vmlinuz"))?;
    fs::write(out.join("initrd.img"), &initrd)?;
    fs::write(out.join("cmdline"), &cmdline)?;

    step(6, "SNP launch digests");
    if ovmf.is_none() {
        return Ok(BuiltImage {
            out,
            enclave,
            manifest: None,
        });
    }
    let manifest = Manifest::of_image(manifest::ImageFacts {
        name: &args.model,
        model_root: &model_root,
        config_sha256: &config_sha256,
        out: &out,
        enclave: &enclave,
        modules: &modules,
        lock: &lock,
        root,
        prices: args.prices,
    })?;
    Ok(BuiltImage {
        out,
        enclave,
        manifest: Some(manifest),
    })
}

fn step(n: u32, what: &str) {
    eprintln!("\n==> [{n}/6] {what}");
}

/// Where the enclave's static configuration lives in the initrd.
pub const CONFIG_PATH: &str = "etc/chrysalis/config.json";
/// The module load order file in the initrd: one path per line.
pub const MODULES_PATH: &str = "etc/chrysalis/modules";

/// The static configuration baked into the initrd; its SHA-256 is on the command line.
fn static_config(model: &str, prices: ImagePrices) -> Vec<u8> {
    let config = serde_json::json!({
        "config_version": 1,
        "model": model,
        "model_disk": "/dev/vda",
        "vsock_port": 5000,
        "evidence": "sev-snp-or-simulated",
        "price_prompt_nanoton": prices.prompt_nanoton,
        "price_completion_nanoton": prices.completion_nanoton,
    });
    let mut text = serde_json::to_string_pretty(&config).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

/// The kernel command line: what the measurement binds besides the files.
pub fn kernel_cmdline(model: &str, model_root: &str, config_sha256: &str) -> String {
    format!(
        "console=ttyS0 panic=-1 chrysalis.model={model} chrysalis.model_root={model_root} chrysalis.config={config_sha256}"
    )
}

/// The initrd's entries: `/init`, `/dev/console`, mount points, modules and config.
fn initrd_bytes(
    enclave: &[u8],
    modules: &[kernel::Module],
    config: &[u8],
) -> anyhow::Result<Vec<u8>> {
    use cpio::{Entry, Kind};
    let mut entries = vec![
        Entry::file("init", 0o755, enclave.to_vec()),
        Entry::dir("dev"),
        Entry {
            path: "dev/console".into(),
            perm: 0o600,
            kind: Kind::CharDev { major: 5, minor: 1 },
        },
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::dir("tmp"),
        Entry::dir("models"),
        Entry::dir("etc"),
        Entry::dir("etc/chrysalis"),
        Entry::file(CONFIG_PATH, 0o644, config.to_vec()),
        Entry::dir("lib"),
        Entry::dir("lib/modules"),
    ];
    let mut order = String::new();
    for module in modules {
        let path = format!("lib/modules/{}.ko.xz", module.name);
        let bytes = fs::read(&module.path)
            .with_context(|| format!("could not read {}", module.path.display()))?;
        entries.push(Entry::file(&path, 0o644, bytes));
        order.push_str(&format!("/{path}\n"));
    }
    entries.push(Entry::file(MODULES_PATH, 0o644, order.into_bytes()));
    cpio::write_newc(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_model_root_and_config_hash() {
        let line = kernel_cmdline("m", &"ab".repeat(32), &"cd".repeat(32));
        assert!(line.starts_with("console=ttyS0 "));
        assert!(line.contains(&format!("chrysalis.model_root={}", "ab".repeat(32))));
        assert!(line.contains(&format!("chrysalis.config={}", "cd".repeat(32))));
        assert!(
            !line.ends_with('\n'),
            "QEMU -append and the measurement take it verbatim"
        );
    }

    #[test]
    fn static_config_carries_the_prices_under_the_names_init_reads() {
        let prices = ImagePrices {
            prompt_nanoton: 20_000,
            completion_nanoton: 60_000,
        };
        let config: serde_json::Value =
            serde_json::from_slice(&static_config("m", prices)).unwrap();
        // enclave/src/init.rs's StaticConfig reads these three keys.
        assert_eq!(config["price_prompt_nanoton"], 20_000);
        assert_eq!(config["price_completion_nanoton"], 60_000);
        assert_eq!(config["vsock_port"], 5000);
        assert_ne!(
            static_config("m", prices),
            static_config("m", ImagePrices::default())
        );
    }

    #[test]
    fn model_root_is_checked() {
        let mut args = BuildArgs {
            model: "m".into(),
            model_root: Some("xyz".into()),
            out: None,
            manifest: None,
            rebuild_ovmf: false,
            skip_firmware: false,
            refresh_apt: false,
            json: false,
            prices: ImagePrices::default(),
        };
        assert!(model_root(&args)
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
        args.model_root = Some("AB".repeat(32));
        assert_eq!(model_root(&args).unwrap(), "ab".repeat(32));
    }

    #[test]
    fn initrd_is_deterministic_and_lists_modules_in_order() {
        let modules = vec![];
        let a = initrd_bytes(b"init", &modules, b"{}").unwrap();
        let b = initrd_bytes(b"init", &modules, b"{}").unwrap();
        assert_eq!(a, b);
        assert!(a
            .windows(b"dev/console\0".len())
            .any(|w| w == b"dev/console\0"));
    }
}
