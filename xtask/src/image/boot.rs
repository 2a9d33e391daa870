//! `cargo xtask boot-test`: boot the built kernel and initrd under QEMU (TCG, no SNP)
//! and wait for the enclave, as PID 1, to say it is ready on the serial console.
//!
//! There is no SEV hardware here, so the guest runs unencrypted with simulated
//! evidence; what is tested is that the image boots, the modules load, and `/init`
//! comes up. The verdict comes from what the guest prints, never from QEMU's exit
//! status (a PID 1 that exits makes the kernel panic, and QEMU then exits 0).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::util::{display_command, workspace_root};

/// The line `/init` prints once it is up (see `enclave/src/init.rs`).
pub const READY_MARKER: &str = "chrysalis-enclave: ready";

/// Options of `cargo xtask boot-test`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Needs qemu-system-x86_64 (apt-get install qemu-system-x86) and a built \
image (cargo xtask build-image). Uses -accel tcg: no KVM or SEV needed.\n\n\
Example: cargo xtask boot-test --json"
)]
pub struct BootTestArgs {
    /// The image directory [default: target/image].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Seconds to wait for the ready line.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// Forward this host port to the enclave's TCP listener (port 7000 in the guest)
    /// and have it serve (dev mode, simulated evidence).
    #[arg(long)]
    serve_port: Option<u16>,
    /// Keep the VM running after the ready line (until Ctrl-C).
    #[arg(long)]
    keep: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What the boot test measured.
#[derive(Debug, Serialize)]
pub struct BootResult {
    /// Milliseconds from starting QEMU to the ready line.
    pub boot_to_ready_ms: u128,
    /// The ready line itself.
    pub ready_line: String,
    /// Sizes of the booted files.
    pub vmlinuz_bytes: u64,
    /// Size of the initrd.
    pub initrd_bytes: u64,
}

/// Kills QEMU when the test ends, however it ends.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the boot test.
pub fn run(args: BootTestArgs) -> anyhow::Result<()> {
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/image"));
    let cmdline = std::fs::read_to_string(image.join("cmdline")).with_context(|| {
        format!(
            "{} holds no built image: run cargo xtask build-image",
            image.display()
        )
    })?;
    let mut append = cmdline.trim().to_owned();
    // Dev-only additions, outside the measured command line of a real launch.
    append.push_str(" chrysalis.ip=10.0.2.15/24");
    if args.serve_port.is_some() {
        append.push_str(" chrysalis.serve=tcp:0.0.0.0:7000");
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", "2",
    ])
    .args(["-m", &args.memory_mib.to_string()])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(image.join("vmlinuz"))
    .arg("-initrd")
    .arg(image.join("initrd.img"))
    .args(["-append", &append])
    .args(["-device", "virtio-rng-pci"]);
    let hostfwd = args
        .serve_port
        .map_or_else(String::new, |p| format!(",hostfwd=tcp:127.0.0.1:{p}-:7000"));
    cmd.args([
        "-netdev",
        &format!("user,id=net0{hostfwd}"),
        "-device",
        "virtio-net-pci,netdev=net0",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("$ {}", display_command(&cmd));
    let started = Instant::now();
    let mut guest = Guest(
        cmd.spawn()
            .context("could not start qemu-system-x86_64 (apt-get install qemu-system-x86)")?,
    );
    let stdout = guest.0.stdout.take().context("QEMU's stdout is piped")?;
    let lines = serial_lines(stdout);
    let ready_line = wait_for_ready(&lines, Duration::from_secs(args.timeout))?;
    let result = BootResult {
        boot_to_ready_ms: started.elapsed().as_millis(),
        ready_line,
        vmlinuz_bytes: std::fs::metadata(image.join("vmlinuz"))?.len(),
        initrd_bytes: std::fs::metadata(image.join("initrd.img"))?.len(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "boot test passed: ready after {} ms ({})",
            result.boot_to_ready_ms, result.ready_line
        );
    }
    if args.keep {
        eprintln!("guest keeps running; Ctrl-C to stop");
        for line in lines.iter() {
            eprintln!("guest| {line}");
        }
    }
    Ok(())
}

/// Reads the serial console line by line on a thread, echoing it to stderr.
fn serial_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the ready line; fails early on a kernel panic or QEMU exiting.
fn wait_for_ready(lines: &mpsc::Receiver<String>, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                eprintln!("guest| {line}");
                if let Some(at) = line.find(READY_MARKER) {
                    return Ok(line[at..].trim().to_owned());
                }
                if line.contains("Kernel panic") {
                    bail!("the guest kernel panicked before the enclave was ready: {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no {READY_MARKER:?} line within {} s", timeout.as_secs())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("QEMU exited before the enclave printed {READY_MARKER:?}")
            }
        }
    }
}
