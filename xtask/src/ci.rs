//! `cargo xtask ci`: the README's test command and what `.ci/run` calls.
//!
//! Order: rustfmt check, clippy with warnings as errors, the contract tests in the TON
//! emulator (`npm test` in `contracts/`), every Rust test of the workspace, then the
//! guest image: built, booted under QEMU and chatted with (`boot-test --chat`). The
//! Rust test output is echoed as it comes and tallied into one summary line at the end.
//!
//! The image stage rebuilds every published manifest's image with `verify-image` and
//! fails on any difference, so a manifest that no longer matches the tree cannot land;
//! the fresh model import's root is compared too. It builds OVMF only when a build for
//! the locked inputs is cached (building it takes about 15 minutes on 2 cores, which
//! CI's budget cannot carry); with it, OVMF and the launch digests are compared as well
//! and cross-checked against `sev-snp-measure`. Without it, the summary says that they
//! were not compared.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::util::{cargo, display_command, run_checked, workspace_root};

/// Options of `cargo xtask ci`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (tests only).
    #[arg(long)]
    tests_only: bool,
    /// Do not install missing prerequisites (apt packages, pip requirements, the
    /// contract's npm packages, the model) before the checks.
    #[arg(long)]
    no_setup: bool,
    /// Skip the guest image stage (build, boot under QEMU, chat into the guest).
    #[arg(long)]
    skip_image: bool,
    /// Extra arguments passed to `cargo test` after `--` (a test-name filter, say).
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// Runs formatting and lint checks, then every test of the workspace.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    // `cargo test --workspace` relinks target/debug/xtask (other feature unification),
    // which leaves this process's own path deleted; the image stage runs this copy.
    let xtask = keep_own_binary(&root)?;
    if !args.no_setup {
        setup(&root)?;
    }
    if !args.tests_only {
        run_checked(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
        run_checked(cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run_contract_tests(&root)?;
    let mut tally = run_rust_tests(&root, &args.test_args, &["--workspace"])?;
    let image = if args.skip_image {
        "image stage skipped (--skip-image)".to_owned()
    } else {
        run_image_stage(&root, &xtask, &mut tally)
    };
    println!(
        "xtask ci summary: {} passed, {} failed, {} ignored in {} test binaries; {image}",
        tally.passed, tally.failed, tally.ignored, tally.binaries
    );
    if tally.failed > 0 || !tally.exit_ok {
        bail!("tests failed");
    }
    println!("xtask ci: all checks passed");
    Ok(())
}

/// Debian packages the checks use: QEMU and e2fsprogs for the image stage, g++ for the
/// CUDA kernel sources run on the CPU. OVMF needs none of the host's compilers: it is
/// built in the pinned build root (`xtask/src/image/build_root.rs`).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "e2fsprogs",
    "cpio",
    "xz-utils",
    "gcc",
    "g++",
    "make",
];

/// Installs what is missing, each step a no-op when its part is present, so that a
/// fresh machine needs nothing but this command (and `.ci/run` stays a thin wrapper).
fn setup(root: &std::path::Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let status = std::process::Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output();
            !status.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        let root_user = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        let apt = |args: &[&str]| {
            let mut cmd = if root_user {
                std::process::Command::new("apt-get")
            } else {
                let mut sudo = std::process::Command::new("sudo");
                sudo.arg("apt-get");
                sudo
            };
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run_checked(&mut cmd)
        };
        apt(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(&missing);
        apt(&install)?;
    }
    run_checked(
        std::process::Command::new("python3")
            .current_dir(root)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["-r", ".ci/requirements.txt"]),
    )?;
    let contracts = root.join("contracts");
    if contracts.join("package-lock.json").exists() && !contracts.join("node_modules").exists() {
        run_checked(
            std::process::Command::new("npm")
                .current_dir(&contracts)
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]),
        )?;
    }
    crate::stack::ensure_model(crate::image::DEFAULT_MODEL)
}

/// The contract's own tests run in `@ton/sandbox`; they need `npm ci` first.
fn run_contract_tests(root: &std::path::Path) -> anyhow::Result<()> {
    let contracts = root.join("contracts");
    if !contracts.join("package.json").exists() {
        return Ok(());
    }
    if !contracts.join("node_modules").exists() {
        bail!("contracts/node_modules is missing: run `npm ci --prefix contracts` first");
    }
    run_checked(
        std::process::Command::new("npm")
            .current_dir(&contracts)
            .args(["test", "--silent"]),
    )
}

/// Totals over every `test result:` line cargo's test harness printed.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
    exit_ok: bool,
}

impl Tally {
    /// Adds one harness summary line such as
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// Rebuilds every published image and compares it with its manifest (so a stale
/// manifest fails CI), then boots the default one and chats with it; with a cached OVMF
/// also runs the launch-digest tests. Failures count as failed tests; returns the
/// summary's clause.
/// Copies the running xtask binary to `target/ci/xtask`, so later stages can start it
/// even after a test build replaced the original.
fn keep_own_binary(root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running xtask binary")?;
    let dir = root.join("target/ci");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("xtask");
    let partial = dir.join("xtask.partial");
    std::fs::copy(&exe, &partial)
        .with_context(|| format!("could not copy {} for the image stage", exe.display()))?;
    std::fs::rename(&partial, &copy)?;
    Ok(copy)
}

fn run_image_stage(root: &std::path::Path, xtask: &std::path::Path, tally: &mut Tally) -> String {
    let full = crate::image::firmware_is_cached(root).unwrap_or(false);
    let mut steps = Vec::new();
    for (name, manifest) in published_manifests(root) {
        // The default image goes to target/image, where boot-test looks.
        let out = if name == crate::image::DEFAULT_MODEL {
            root.join("target/image")
        } else {
            root.join(format!("target/image-verify-{name}"))
        };
        let mut verify = std::process::Command::new(xtask);
        verify
            .current_dir(root)
            .arg("verify-image")
            .arg(&manifest)
            .arg("--out")
            .arg(out);
        if !full {
            verify.arg("--without-firmware");
        }
        steps.push((format!("verify-image {}", manifest.display()), verify));
    }
    let mut boot = std::process::Command::new(xtask);
    boot.current_dir(root).args(["boot-test", "--chat"]);
    steps.push(("boot-test --chat".to_owned(), boot));
    for (what, mut cmd) in steps {
        if let Err(e) = run_checked(&mut cmd) {
            tally.failed += 1;
            return format!("image stage FAILED at {what}: {e:#}");
        }
        tally.passed += 1;
    }
    if !full {
        return "image rebuilt without OVMF: kernel, initrd, enclave, command line, image.lock \
                and model root equal the published manifest; booted, chat into the guest \
                passed; OVMF is not cached here, so OVMF, the launch digests and their \
                sev-snp-measure cross-check were NOT compared (cargo xtask build-image \
                builds it)"
            .to_owned();
    }
    let filter = ["launch".to_owned(), "--ignored".to_owned()];
    match run_rust_tests(root, &filter, &["-p", "chrysalis-measurements", "--lib"]) {
        Ok(launch) => {
            tally.passed += launch.passed;
            tally.failed += launch.failed;
            tally.binaries += launch.binaries;
            tally.exit_ok &= launch.exit_ok;
            "full image rebuilt (OVMF cached) and equal to the published manifest, booted, \
             chat into the guest passed, launch digests cross-checked against sev-snp-measure"
                .to_owned()
        }
        Err(e) => {
            tally.failed += 1;
            format!("launch-digest tests could not run: {e:#}")
        }
    }
}

/// Every `measurements/published/NAME.json`, sorted by name.
fn published_manifests(root: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let mut found: Vec<(String, std::path::PathBuf)> =
        std::fs::read_dir(root.join("measurements/published"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), path)))
            .collect();
    found.sort();
    found
}

fn run_rust_tests(
    root: &std::path::Path,
    extra: &[String],
    packages: &[&str],
) -> anyhow::Result<Tally> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .arg("test")
        .args(packages)
        .args(["--locked", "--no-fail-fast"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    eprintln!("$ {}", display_command(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.add_line(line.trim());
    }
    tally.exit_ok = child.wait().context("waiting for cargo test")?.success();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_adds_every_harness_summary() {
        let mut tally = Tally::default();
        tally.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        tally.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        tally.add_line("running 5 tests");
        assert_eq!(
            (tally.passed, tally.failed, tally.ignored, tally.binaries),
            (15, 2, 1, 2)
        );
    }
}
