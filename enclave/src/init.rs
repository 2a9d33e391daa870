//! PID 1 duties of the enclave inside the guest image.
//!
//! When the kernel starts `/init` (this binary) as PID 1, it: mounts `/proc`, `/sys` and
//! devtmpfs on `/dev`; loads the kernel modules listed in `/etc/chrysalis/modules`
//! (compressed `.ko.xz`, which the kernel decompresses itself); reads its settings from
//! the measured kernel command line (`chrysalis.*`); checks the static configuration in
//! the initrd against the hash on that command line; mounts the model disk read-only;
//! prints a ready line on the console; starts the server as a child; and then reaps
//! children forever. It never spawns a shell and never exits: if PID 1 exits, the kernel
//! panics.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The module list the image builder writes: one absolute path per line, in load order.
const MODULES_LIST: &str = "/etc/chrysalis/modules";
/// The static configuration, whose SHA-256 is `chrysalis.config` on the command line.
const CONFIG_FILE: &str = "/etc/chrysalis/config.json";
/// The model disk (virtio-blk, attached read-only by the shim) and its mount point.
const MODEL_DISK: &str = "/dev/vda";
const MODEL_MOUNT: &str = "/models";
/// `finit_module` flag: the file is compressed and the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;
/// Longest command line we read (the kernel's own limit on x86 is 2048 bytes).
const MAX_CMDLINE: usize = 4096;

/// Settings from the kernel command line (`chrysalis.KEY=VALUE`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `chrysalis.model`: the model name.
    pub model: Option<String>,
    /// `chrysalis.model_root`: the measured model root hash.
    pub model_root: Option<String>,
    /// `chrysalis.config`: SHA-256 of the static configuration.
    pub config: Option<String>,
    /// `chrysalis.ip`: dev only, `ADDR/PREFIX` for eth0 (QEMU user networking).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `chrysalis.serve`: dev only, the `--listen` address of the server (default: the
    /// configuration's vsock port).
    pub serve: Option<String>,
    /// `chrysalis.dev=1`: dev only, serve with simulated evidence (the server still
    /// refuses that on SNP hardware). Any of the dev settings changes the measured
    /// command line, so clients checking the launch digest never accept such a guest.
    pub dev: bool,
}

/// The part of the static configuration `/init` acts on.
#[derive(Debug, serde::Deserialize)]
struct StaticConfig {
    /// The vsock port the server listens on when no `chrysalis.serve` is given.
    vsock_port: u32,
    /// Nanotons per prompt token the server bills (measured with the configuration).
    #[serde(default)]
    price_prompt_nanoton: u64,
    /// Nanotons per generated token.
    #[serde(default)]
    price_completion_nanoton: u64,
}

/// Parses the `chrysalis.*` settings of a kernel command line; other words are ignored,
/// malformed values are reported and ignored.
pub fn parse_cmdline(line: &str) -> (BootParams, Vec<String>) {
    let mut params = BootParams::default();
    let mut problems = Vec::new();
    let settings: BTreeMap<&str, &str> = line
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix("chrysalis.")?.split_once('='))
        .collect();
    for (key, value) in settings {
        match key {
            "model" => params.model = Some(value.to_owned()),
            "model_root" | "config" if !is_sha256_hex(value) => {
                problems.push(format!("chrysalis.{key}={value:?} is not 64 hex digits"))
            }
            "model_root" => params.model_root = Some(value.to_owned()),
            "config" => params.config = Some(value.to_owned()),
            "ip" => match parse_cidr(value) {
                Some(cidr) => params.ip = Some(cidr),
                None => problems.push(format!("chrysalis.ip={value:?} is not ADDR/PREFIX")),
            },
            "serve" => params.serve = Some(value.to_owned()),
            "dev" => params.dev = value == "1",
            _ => problems.push(format!("unknown setting chrysalis.{key}")),
        }
    }
    (params, problems)
}

fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_cidr(value: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = value.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

/// Runs PID 1's duties, then reaps children forever.
pub fn run() -> ! {
    let started = Instant::now();
    log("starting as PID 1");
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        if let Err(e) = mount(source, target, fstype, 0) {
            log(&format!("mount {fstype} on {target} failed: {e}"));
        }
    }
    let loaded = load_modules();
    let cmdline = read_cmdline();
    let (params, problems) = parse_cmdline(&cmdline);
    for problem in &problems {
        log(problem);
    }
    let config = check_config(params.config.as_deref());
    if let Some((addr, prefix)) = params.ip {
        configure_network(addr, prefix);
    }
    let models = mount_model_disk();
    log(&format!(
        "ready (pid 1, modules {loaded}, model {}, model_root {}, config {}, model disk {}, {} ms)",
        params.model.as_deref().unwrap_or("-"),
        params.model_root.as_deref().unwrap_or("-"),
        if config.is_some() {
            "verified"
        } else {
            "UNVERIFIED"
        },
        if models { "mounted" } else { "absent" },
        started.elapsed().as_millis()
    ));
    match (config, models) {
        (Some(config), true) => {
            let listen = params
                .serve
                .clone()
                .unwrap_or_else(|| format!("vsock:{}", config.vsock_port));
            start_server(&listen, &params, &config);
        }
        (None, _) => log("not serving: the static configuration is not the measured one"),
        (_, false) => log("not serving: no model disk"),
    }
    reap_forever()
}

/// Writes one line to the console (PID 1's stderr is `/dev/console`).
fn log(message: &str) {
    eprintln!("chrysalis-enclave: {message}");
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let source = CString::new(source)?;
    let target = CString::new(target)?;
    let fstype = CString::new(fstype)?;
    // SAFETY: the three pointers are NUL-terminated strings that outlive the call; the
    // data pointer may be null for these file systems.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Loads every module of the list in order; returns how many are in the kernel now.
fn load_modules() -> usize {
    let list = match fs::read_to_string(MODULES_LIST) {
        Ok(list) => list,
        Err(e) => {
            log(&format!("no module list at {MODULES_LIST}: {e}"));
            return 0;
        }
    };
    let mut loaded = 0;
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match load_module(path) {
            Ok(()) => loaded += 1,
            // Already built in or loaded: fine.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => loaded += 1,
            // sev-guest without SNP hardware: expected under plain QEMU.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                log(&format!("{path}: no device ({e})"))
            }
            Err(e) => log(&format!("{path}: could not load: {e}")),
        }
    }
    loaded
}

fn load_module(path: &str) -> std::io::Result<()> {
    let file = fs::File::open(path)?;
    let no_params = c"";
    // SAFETY: finit_module reads the open file descriptor and a NUL-terminated, empty
    // parameter string; both stay valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            no_params.as_ptr(),
            MODULE_INIT_COMPRESSED_FILE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn read_cmdline() -> String {
    match fs::read("/proc/cmdline") {
        Ok(mut bytes) => {
            bytes.truncate(MAX_CMDLINE);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => {
            log(&format!("could not read /proc/cmdline: {e}"));
            String::new()
        }
    }
}

/// Whether the static configuration's SHA-256 equals the measured `chrysalis.config`.
fn check_config(expected: Option<&str>) -> Option<StaticConfig> {
    let Some(expected) = expected else {
        log("no chrysalis.config on the command line: the configuration is not bound");
        return None;
    };
    let bytes = fs::read(CONFIG_FILE)
        .map_err(|e| log(&format!("could not read {CONFIG_FILE}: {e}")))
        .ok()?;
    let found = hex::encode(Sha256::digest(&bytes));
    if !found.eq_ignore_ascii_case(expected) {
        log(&format!(
            "{CONFIG_FILE} has SHA-256 {found}, the command line expects {expected}"
        ));
        return None;
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| log(&format!("{CONFIG_FILE} is not the expected JSON: {e}")))
        .ok()
}

/// Mounts the model disk read-only when there is one.
fn mount_model_disk() -> bool {
    if fs::metadata(MODEL_DISK).is_err() {
        return false;
    }
    let flags = libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC;
    match mount(MODEL_DISK, MODEL_MOUNT, "ext4", flags) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("could not mount the model disk {MODEL_DISK}: {e}"));
            false
        }
    }
}

/// Brings up `lo` and `eth0` with `addr/prefix` (dev mode: QEMU user networking).
fn configure_network(addr: Ipv4Addr, prefix: u8) {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let steps: [(&str, Option<(libc::c_ulong, Ipv4Addr)>); 4] = [
        ("lo", None),
        ("eth0", Some((libc::SIOCSIFADDR, addr))),
        ("eth0", Some((libc::SIOCSIFNETMASK, Ipv4Addr::from(mask)))),
        ("eth0", None),
    ];
    for (name, step) in steps {
        let result = match step {
            Some((request, value)) => set_interface_address(name, request, value),
            None => set_interface_up(name),
        };
        if let Err(e) = result {
            log(&format!("network setup of {name} failed: {e}"));
        }
    }
}

/// An AF_INET datagram socket, the handle interface ioctls go through.
fn control_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket() has no pointer arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn named_ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn set_interface_address(
    name: &str,
    request: libc::c_ulong,
    value: Ipv4Addr,
) -> std::io::Result<()> {
    let socket = control_socket()?;
    let mut req = named_ifreq(name)?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(value).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in the ifreq union's sockaddr (both 16 bytes); we write
    // it through a pointer to the union member, which is properly aligned.
    unsafe {
        std::ptr::write(
            (&raw mut req.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
            sin,
        )
    };
    // SAFETY: req is a valid ifreq that lives across the call; the request reads it.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, &mut req) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_interface_up(name: &str) -> std::io::Result<()> {
    let socket = control_socket()?;
    let mut req = named_ifreq(name)?;
    // SAFETY: req is a valid ifreq; SIOCGIFFLAGS fills its flags member.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: req is a valid ifreq with the flags set; SIOCSIFFLAGS reads it.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `/init serve` as a child (not a shell: the same binary, exec'd directly).
fn start_server(listen: &str, params: &BootParams, config: &StaticConfig) {
    let model = params.model.as_deref().unwrap_or("model");
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["serve", "--listen", listen, "--model"])
        .arg(format!("{MODEL_MOUNT}/{model}"));
    if let Some(root) = &params.model_root {
        cmd.args(["--model-root", root]);
    }
    cmd.arg("--price-prompt")
        .arg(config.price_prompt_nanoton.to_string())
        .arg("--price-completion")
        .arg(config.price_completion_nanoton.to_string());
    if params.dev {
        cmd.arg("--dev");
    }
    match cmd.spawn() {
        Ok(child) => log(&format!("server started (pid {}) on {listen}", child.id())),
        Err(e) => log(&format!("could not start the server: {e}")),
    }
}

/// PID 1 adopts every orphan: wait for children forever, and never return.
fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            log(&format!("child {pid} ended with status {status:#x}"));
        } else {
            // No children (ECHILD) or interrupted: sleep rather than spin.
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_settings_are_read_and_malformed_ones_reported() {
        let root = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 panic=-1 chrysalis.model=smollm2-135m chrysalis.model_root={root} \
             chrysalis.config=xyz chrysalis.ip=10.0.2.15/24 chrysalis.bogus=1 chrysalis.dev=1"
        );
        let (params, problems) = parse_cmdline(&line);
        assert_eq!(params.model.as_deref(), Some("smollm2-135m"));
        assert_eq!(params.model_root.as_deref(), Some(root.as_str()));
        assert_eq!(params.config, None);
        assert_eq!(params.ip, Some((Ipv4Addr::new(10, 0, 2, 15), 24)));
        assert!(params.dev);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("chrysalis.config")));
        assert!(problems.iter().any(|p| p.contains("bogus")));
    }

    #[test]
    fn static_config_prices_are_read_and_default_to_free() {
        let config: StaticConfig = serde_json::from_str(
            r#"{"config_version": 1, "vsock_port": 5000,
                "price_prompt_nanoton": 20000, "price_completion_nanoton": 60000}"#,
        )
        .unwrap();
        assert_eq!(config.vsock_port, 5000);
        assert_eq!(
            (config.price_prompt_nanoton, config.price_completion_nanoton),
            (20000, 60000)
        );
        let free: StaticConfig = serde_json::from_str(r#"{"vsock_port": 7}"#).unwrap();
        assert_eq!(
            (free.price_prompt_nanoton, free.price_completion_nanoton),
            (0, 0)
        );
        assert!(serde_json::from_str::<StaticConfig>(r#"{"price_prompt_nanoton": 1}"#).is_err());
    }

    #[test]
    fn cidr_prefixes_over_32_are_refused() {
        assert_eq!(parse_cidr("10.0.2.15/33"), None);
        assert_eq!(parse_cidr("10.0.2.15"), None);
        assert_eq!(
            parse_cidr("10.0.2.15/0"),
            Some((Ipv4Addr::new(10, 0, 2, 15), 0))
        );
    }
}
