//! `cargo xtask repro-check`: two clones of the repository at different paths must
//! give the same bytes for every component and the same launch digests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::{build, BuildArgs, DEFAULT_MODEL};
use crate::util::{run_checked, workspace_root};

/// Options of `cargo xtask repro-check`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Clones the committed HEAD twice (paths of different lengths), builds the \
image in each with a release enclave build per clone, and compares. OVMF is shared through the \
input-hash cache (its build path is fixed); add --rebuild-ovmf to rebuild it for the second clone \
too.\n\nExample: cargo xtask repro-check --model-root $(printf 'ab%.0s' {1..32})"
)]
pub struct ReproArgs {
    /// Model name written into the image.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Model root hash (64 hex digits) [default: the fetched model's].
    #[arg(long)]
    model_root: Option<String>,
    /// Rebuild OVMF for the second clone instead of using the cache.
    #[arg(long)]
    rebuild_ovmf: bool,
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
    for (i, clone) in clones.iter().enumerate() {
        clone_head(&source, clone)?;
        let build_args = BuildArgs {
            model: args.model.clone(),
            model_root: args.model_root.clone(),
            out: Some(clone.join("target/image")),
            manifest: None,
            rebuild_ovmf: args.rebuild_ovmf && i == 1,
            skip_firmware: false,
            refresh_apt: false,
            json: false,
            prices: super::ImagePrices::default(),
        };
        manifests.push(
            build(clone, &build_args)
                .with_context(|| format!("build in {} failed", clone.display()))?
                .context("the build skipped the firmware")?,
        );
    }
    let report = manifests[0].compare(&manifests[1]);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    if !report.all_match() {
        bail!("two clones built different images");
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
