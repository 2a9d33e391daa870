//! Starting the local request path (enclave in dev mode, shim) as child processes,
//! for `demo` and `bench e2e`. Children are killed when the [`Stack`] is dropped, so
//! an error or a panic never leaves them running; Ctrl-C reaches them directly, as
//! they share the terminal's process group.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::util::{cargo, run_checked, workspace_root};

/// How long the enclave may take to load and verify the model.
const ENCLAVE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The release binaries of the request path.
pub struct Binaries {
    /// `chrysalis-enclave`.
    pub enclave: PathBuf,
    /// `chrysalis-shim`.
    pub shim: PathBuf,
    /// `chrysalis`.
    pub client: PathBuf,
}

/// Builds enclave, shim and client in release mode and returns their paths.
pub fn build_release() -> anyhow::Result<Binaries> {
    let root = workspace_root();
    run_checked(cargo().current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "chrysalis-enclave",
        "-p",
        "chrysalis-shim",
        "-p",
        "chrysalis-client",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target.join("release");
    Ok(Binaries {
        enclave: dir.join("chrysalis-enclave"),
        shim: dir.join("chrysalis-shim"),
        client: dir.join("chrysalis"),
    })
}

/// Makes sure the model is installed, fetching it with `cargo xtask fetch-model`.
pub fn ensure_model(name: &str) -> anyhow::Result<()> {
    let dir = crate::util::chrysalis_home().join("models").join(name);
    if dir.join("manifest.json").is_file() {
        return Ok(());
    }
    eprintln!(
        "model {name} is not installed at {}: fetching it",
        dir.display()
    );
    run_checked(
        cargo()
            .current_dir(workspace_root())
            .args(["xtask", "fetch-model", name]),
    )
}

/// A running child whose stdout announced an address.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

/// Enclave and shim, running.
pub struct Stack {
    // Field order is drop order: the shim goes first, then the enclave.
    shim: Service,
    enclave: Service,
    /// The shim's base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    /// The enclave's `tcp:HOST:PORT`.
    pub enclave_addr: String,
}

impl Stack {
    /// Starts the enclave (dev mode, INSECURE) and the shim on loopback ports.
    pub fn start(
        bins: &Binaries,
        model: &str,
        extra_enclave_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(bins, model, extra_enclave_args, &[])
    }

    /// [`Stack::start`] with extra arguments for the shim too (billing options).
    pub fn start_with(
        bins: &Binaries,
        model: &str,
        extra_enclave_args: &[&str],
        extra_shim_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(&bins.enclave);
        cmd.args([
            "serve",
            "--listen",
            "tcp:127.0.0.1:0",
            "--model",
            model,
            "--dev",
        ])
        .args(extra_enclave_args);
        let (enclave, line) = spawn_until(
            cmd,
            "chrysalis-enclave",
            "listening on ",
            ENCLAVE_READY_TIMEOUT,
        )?;
        let enclave_addr = word_after(&line, "listening on ")?;
        let ShimOnly { shim, url } =
            ShimOnly::start_with(&bins.shim, &enclave_addr, extra_shim_args)?;
        Ok(Self {
            shim,
            enclave,
            url,
            enclave_addr,
        })
    }

    /// Process ids of (enclave, shim), for the curious.
    pub fn pids(&self) -> (u32, u32) {
        (self.enclave.child.id(), self.shim.child.id())
    }
}

/// A shim in front of an enclave started elsewhere (in a VM, for `boot-test --chat`).
pub struct ShimOnly {
    shim: Service,
    /// The shim's base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
}

impl ShimOnly {
    /// Starts `shim` on a loopback port, relaying to `enclave_addr` (`tcp:HOST:PORT`).
    pub fn start(shim: &Path, enclave_addr: &str) -> anyhow::Result<Self> {
        Self::start_with(shim, enclave_addr, &[])
    }

    /// [`ShimOnly::start`] with extra arguments (billing options).
    pub fn start_with(shim: &Path, enclave_addr: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(shim);
        cmd.args([
            "serve",
            "--enclave",
            enclave_addr,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra);
        let (shim, line) = spawn_until(
            cmd,
            "chrysalis-shim",
            "listening on ",
            Duration::from_secs(30),
        )?;
        let url = word_after(&line, "listening on ")?;
        Ok(Self { shim, url })
    }
}

fn word_after(line: &str, marker: &str) -> anyhow::Result<String> {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no address after {marker:?} in {line:?}"))
}

/// Spawns `cmd` and waits until a stdout line contains `marker`; the rest of stdout is
/// drained in the background, stderr goes to the terminal.
fn spawn_until(
    mut cmd: Command,
    name: &'static str,
    marker: &str,
    timeout: Duration,
) -> anyhow::Result<(Service, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "could not start {name} ({})",
                Path::new(cmd.get_program()).display()
            )
        })?;
    let stdout = child.stdout.take().context("child stdout")?;
    let service = Service { name, child };
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains(&marker) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(line) => Ok((service, line)),
        Err(_) => bail!(
            "{name} did not report ready within {} s (see its messages above)",
            timeout.as_secs()
        ),
    }
}
