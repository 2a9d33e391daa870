//! Small helpers shared by xtask subcommands.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root: xtask's manifest directory's parent.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Chrysalis's cache directory: `$CHRYSALIS_HOME`, or `~/.cache/chrysalis`.
#[allow(dead_code)] // first users: fetch-model and build-image, landing next
pub fn chrysalis_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHRYSALIS_HOME") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("chrysalis")
}

/// The cargo binary that invoked us, so nested builds use the pinned toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` to completion, echoing it first; fails naming the command on a non-zero exit.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", display_command(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display_command(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", display_command(cmd));
    }
    Ok(())
}

/// [`run_checked`] with the child's stdout sent to our stderr: for build and download
/// steps whose chatter must not mix with a `--json` answer on stdout.
pub fn run_logged(cmd: &mut Command) -> anyhow::Result<()> {
    run_checked(cmd.stdout(std::io::stderr()))
}

/// Renders a command line for logs.
pub fn display_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
