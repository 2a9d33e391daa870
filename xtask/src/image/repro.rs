//! `cargo xtask repro-check`: two clones of the repository at different paths, each
//! with its own fresh `CHRYSALIS_HOME`, must give the same bytes for every component,
//! the same model root and the same launch digests as each other, and as the committed
//! `measurements/published/MODEL.json`.
//!
//! Nothing is shared between the two builds but the pinned downloads' sources (the
//! Debian mirror, PyPI): each home fetches and imports the model itself, downloads the
//! pinned packages, assembles its own OVMF build root and builds OVMF in it, and builds
//! the enclave into its clone's own target directory. A check whose two builds share a
//! cache proves nothing about a reviewer's machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::manifest::Manifest;
use super::{build, BuildArgs, DEFAULT_MODEL};
use crate::util::{run_checked, workspace_root};

/// Options of `cargo xtask repro-check`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Clones the committed HEAD twice (paths of different lengths), gives each \
clone a fresh CHRYSALIS_HOME, fetches and imports the model into each, builds the image in each \
(OVMF, kernel, a release enclave build per clone) and compares every component, the model root \
and every launch digest. Slow on purpose: two OVMF builds (about 15 minutes each on 2 cores) and \
two clean enclave builds.\n\nExample: cargo xtask repro-check\n         cargo xtask repro-check \
--model-root $(printf 'ab%.0s' {1..32})   # skips the model import"
)]
pub struct ReproArgs {
    /// Model name written into the image.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Model root hash (64 hex digits): skip the model import in each home and build
    /// both images for this root [default: each home imports the model itself].
    #[arg(long)]
    model_root: Option<String>,
    /// Keep the clones afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the check.
pub fn run(args: ReproArgs) -> anyhow::Result<()> {
    let source = workspace_root();
    let base = std::env::temp_dir().join(format!("chrysalis-repro-{}", std::process::id()));
    let clones = [base.join("a"), base.join("second-clone-at-a-longer-path")];
    let mut manifests = Vec::new();
    let mut published = None;
    for clone in &clones {
        clone_head(&source, clone)?;
        let committed = clone
            .join("measurements/published")
            .join(format!("{}.json", args.model));
        if published.is_none() && committed.is_file() {
            published = Some(Manifest::read(&committed)?);
        }
        let home = clone.with_extension("home");
        std::fs::create_dir_all(&home)?;
        eprintln!(
            "\n==> repro-check: clone {} with the fresh CHRYSALIS_HOME {}",
            clone.display(),
            home.display()
        );
        // Everything below reads the home from the environment; xtask is single-threaded.
        std::env::set_var("CHRYSALIS_HOME", &home);
        if args.model_root.is_none() {
            crate::stack::ensure_model(&args.model)?;
        }
        let build_args = BuildArgs {
            model: args.model.clone(),
            model_root: args.model_root.clone(),
            out: Some(clone.join("target/image")),
            manifest: None,
            // A fresh home has no cached OVMF; rebuild anyway in case the fixed build
            // directory holds a tree from an earlier build.
            rebuild_ovmf: true,
            skip_firmware: false,
            refresh_apt: false,
            json: false,
            prices: super::ImagePrices::default(),
        };
        manifests.push(
            build(clone, &build_args)
                .with_context(|| format!("build in {} failed", clone.display()))?
                .manifest
                .context("the build skipped the firmware")?,
        );
    }
    let report = manifests[0].compare(&manifests[1]);
    // The published manifest is only comparable when built for the same model root.
    let against_published = published
        .filter(|p| args.model_root.is_none() || args.model_root.as_deref() == Some(&p.model_root))
        .map(|p| p.compare(&manifests[0]));
    if args.json {
        let json = serde_json::json!({
            "clone_a_vs_clone_b": report,
            "published_vs_clone_a": against_published,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        eprintln!("\nclone a against clone b:");
        report.print();
        match &against_published {
            Some(p) => {
                eprintln!(
                    "\nmeasurements/published/{}.json against clone a:",
                    args.model
                );
                p.print();
            }
            None => eprintln!(
                "\nmeasurements/published/{}.json: NOT COMPARED (absent, or another model root)",
                args.model
            ),
        }
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    if !report.all_match() {
        bail!("two clones built different images");
    }
    if against_published.as_ref().is_some_and(|p| !p.all_match()) {
        bail!(
            "both clones agree, but not with measurements/published/{}.json",
            args.model
        );
    }
    Ok(())
}

fn clone_head(source: &Path, dest: &PathBuf) -> anyhow::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    run_checked(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(source)
            .arg(dest),
    )
}
