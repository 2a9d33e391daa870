//! `cargo xtask boot-test`: boot the built kernel and initrd under QEMU (TCG, no SNP)
//! and wait for the enclave, as PID 1, to say it is ready on the serial console.
//!
//! There is no SEV hardware here, so the guest runs unencrypted with simulated
//! evidence; what is tested is that the image boots, the modules load, and `/init`
//! comes up. The verdict comes from what the guest prints, never from QEMU's exit
//! status (a PID 1 that exits makes the kernel panic, and QEMU then exits 0).
//!
//! With `--chat` the model disk is attached, the enclave serves inside the guest
//! (QEMU user networking forwards a loopback port to it), a shim runs on the host and
//! `chrysalis chat --allow-simulated` must get a sealed answer from the guest, served
//! from the model whose root the image's command line names.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::model_disk;
use crate::stack::ShimOnly;
use crate::util::{cargo, display_command, run_checked, workspace_root};

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
    /// Attach the model disk, serve inside the guest, and chat with it through a shim
    /// on the host (implies --serve-port, picking a free one when none is given).
    #[arg(long)]
    chat: bool,
    /// The model disk for --chat [default: target/image/MODEL.ext4, built when missing].
    #[arg(long)]
    model_disk: Option<PathBuf>,
    /// The question --chat asks.
    #[arg(long, default_value = "What is the capital of France?")]
    question: String,
    /// Text the answer to --chat must contain.
    #[arg(long, default_value = "Paris")]
    expect: String,
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
    /// With `--chat`: what the guest answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatResult>,
}

/// What `--chat` saw.
#[derive(Debug, Serialize)]
pub struct ChatResult {
    /// Milliseconds from the ready line to the enclave listening (model load, verified).
    pub ready_to_serving_ms: u128,
    /// Milliseconds for `chrysalis chat` (verification, session, generation).
    pub chat_ms: u128,
    /// The answer.
    pub text: String,
    /// The model root the receipt names (equal to the command line's).
    pub model_root: String,
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
    let serve_port = match (args.serve_port, args.chat) {
        (None, true) => Some(free_port()?),
        (port, _) => port,
    };
    let model_disk = if args.chat {
        Some(ensure_model_disk(&cmdline, args.model_disk.clone())?)
    } else {
        None
    };
    let mut append = cmdline.trim().to_owned();
    // Dev-only additions: they change the command line, so such a guest never has the
    // published launch digest.
    append.push_str(" chrysalis.ip=10.0.2.15/24");
    if serve_port.is_some() {
        append.push_str(" chrysalis.serve=tcp:0.0.0.0:7000 chrysalis.dev=1");
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
    if let Some(disk) = &model_disk {
        cmd.arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=model,readonly=on",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=model"]);
    }
    let hostfwd =
        serve_port.map_or_else(String::new, |p| format!(",hostfwd=tcp:127.0.0.1:{p}-:7000"));
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
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let ready_line = wait_for_line(&lines, READY_MARKER, deadline)?;
    let boot_to_ready_ms = started.elapsed().as_millis();
    let chat = match serve_port {
        Some(port) if args.chat => Some(chat_with_guest(&args, &cmdline, port, &lines, deadline)?),
        _ => None,
    };
    let result = BootResult {
        boot_to_ready_ms,
        ready_line,
        vmlinuz_bytes: std::fs::metadata(image.join("vmlinuz"))?.len(),
        initrd_bytes: std::fs::metadata(image.join("initrd.img"))?.len(),
        chat,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "boot test passed: ready after {} ms ({})",
            result.boot_to_ready_ms, result.ready_line
        );
        if let Some(chat) = &result.chat {
            println!(
                "chat through the shim into the guest passed: serving {} ms after ready, \
                 answer in {} ms (INSECURE, simulated evidence): {:?}",
                chat.ready_to_serving_ms, chat.chat_ms, chat.text
            );
        }
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

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The value of `chrysalis.KEY=` on the image's command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let prefix = format!("chrysalis.{key}=");
    cmdline
        .split_ascii_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .with_context(|| format!("the image's cmdline has no {prefix}"))
}

/// The model disk for the image's model, built when it is missing.
fn ensure_model_disk(cmdline: &str, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(disk) = given {
        return Ok(disk);
    }
    let root = workspace_root();
    let model = cmdline_value(cmdline, "model")?;
    let disk = model_disk::default_path(&root, model);
    if !disk.is_file() {
        model_disk::build(&root, model, &disk)?;
    }
    Ok(disk)
}

/// Waits for the enclave inside the guest to listen, starts a shim in front of it and
/// asks the question with the `chrysalis` client.
fn chat_with_guest(
    args: &BootTestArgs,
    cmdline: &str,
    port: u16,
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
) -> anyhow::Result<ChatResult> {
    let ready = Instant::now();
    wait_for_line(lines, "listening on ", deadline)?;
    let ready_to_serving_ms = ready.elapsed().as_millis();
    // Debug builds: `cargo test` has built them already when CI gets here.
    let root = workspace_root();
    run_checked(cargo().current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "chrysalis-shim",
        "-p",
        "chrysalis-client",
    ]))?;
    let bin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("debug");
    let shim = ShimOnly::start(
        &bin_dir.join("chrysalis-shim"),
        &format!("tcp:127.0.0.1:{port}"),
    )?;
    // Echo the guest's console while the client runs.
    let started = Instant::now();
    let output = std::process::Command::new(bin_dir.join("chrysalis"))
        .args(["chat", "--url", &shim.url, "--allow-simulated", "--json"])
        .args(["--max-tokens", "16", &args.question])
        .stderr(Stdio::inherit())
        .output()
        .context("could not run the chrysalis client")?;
    let chat_ms = started.elapsed().as_millis();
    for line in lines.try_iter() {
        eprintln!("guest| {line}");
    }
    if !output.status.success() {
        bail!(
            "chrysalis chat against the guest failed with {}",
            output.status
        );
    }
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("chrysalis chat --json printed something that is not JSON")?;
    let text = answer["text"].as_str().unwrap_or_default().to_owned();
    let model_root = answer["model_root"].as_str().unwrap_or_default().to_owned();
    if answer["insecure"] != serde_json::Value::Bool(true) {
        bail!("the answer from a simulated-evidence guest was not marked insecure: {answer}");
    }
    let expected_root = cmdline_value(cmdline, "model_root")?;
    if model_root != expected_root {
        bail!("the guest answered with model root {model_root}, the image's cmdline names {expected_root}");
    }
    if !text.contains(&args.expect) {
        bail!(
            "the guest answered {text:?}, expected it to contain {:?}",
            args.expect
        );
    }
    Ok(ChatResult {
        ready_to_serving_ms,
        chat_ms,
        text,
        model_root,
    })
}

/// Waits for a console line containing `marker`; fails early on a kernel panic or QEMU
/// exiting.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    marker: &str,
    deadline: Instant,
) -> anyhow::Result<String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                eprintln!("guest| {line}");
                if let Some(at) = line.find(marker) {
                    return Ok(line[at..].trim().to_owned());
                }
                if line.contains("Kernel panic") {
                    bail!("the guest kernel panicked before {marker:?}: {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no {marker:?} line from the guest in time (see --timeout)")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("QEMU exited before the guest printed {marker:?}")
            }
        }
    }
}
