//! The per-source evidence limit, through the real `chrysalis-shim serve` binary.
//!
//! No enclave runs: `--enclave` names a loopback port nothing listens on. A request
//! the limit admits is relayed and fails with the shim's own 502 (enclave
//! unreachable); a request over the limit is answered 429 before the shim even tries
//! the enclave. So the status alone tells which side of the limit a request fell on.
//! The log is read afterwards: one warning per run of refusals, naming the source and
//! never the request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrysalis_protocol::{EvidenceRequest, PlainMessage};

/// A nonce whose hex would stand out in a log.
const NONCE: [u8; 32] = [0x5a; 32];

/// The shim process, killed on drop.
struct Shim {
    child: Child,
    addr: String,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shim_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chrysalis-shim"))
}

/// `tcp:` address of a loopback port that was just free, so nothing answers there.
fn absent_enclave() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("tcp:{addr}")
}

/// Starts `serve` with `extra` flags, its log (debug level) in `log`, and waits for
/// its "listening on" line.
fn start_shim(extra: &[&str], log: &Path) -> Shim {
    let mut child = shim_command()
        .args(["serve", "--enclave", &absent_enclave(), "--listen"])
        .arg("127.0.0.1:0")
        .args(extra)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("create log"))
        .spawn()
        .expect("spawn chrysalis-shim");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, url)) = line.split_once("listening on http://") {
                let _ = tx.send(url.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the shim printed no 'listening on' line");
    Shim { child, addr }
}

/// An HTTP answer: status, headers (names lowercased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (so each comes from a fresh port of the
/// same address, as separate clients behind one address would).
fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the shim");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(body).expect("send body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    parse_answer(&String::from_utf8_lossy(&raw))
}

fn parse_answer(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn evidence_request() -> Vec<u8> {
    PlainMessage::EvidenceRequest(EvidenceRequest { nonce: NONCE })
        .to_frame_bytes()
        .expect("frame")
}

fn metric(addr: &str, name: &str) -> u64 {
    let text = request(addr, "GET", "/metrics", b"").body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn requests_over_the_burst_get_429_with_retry_after_and_one_log_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("shim.log");
    // One request per 1000 s, bursts of 2: the third request waits ~1000 s.
    let shim = start_shim(
        &[
            "--evidence-rate-per-source",
            "0.001",
            "--evidence-burst-per-source",
            "2",
        ],
        &log,
    );
    let frame = evidence_request();
    for i in 0..2 {
        let answer = request(&shim.addr, "POST", "/v1/evidence", &frame);
        assert_eq!(
            answer.status, 502,
            "request {i} is admitted: {}",
            answer.body
        );
    }
    for _ in 0..2 {
        let answer = request(&shim.addr, "POST", "/v1/evidence", &frame);
        assert_eq!(answer.status, 429, "{}", answer.body);
        let wait: u64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in whole seconds");
        assert!((990..=1000).contains(&wait), "Retry-After: {wait}");
        assert!(
            answer.body.starts_with(
                "evidence limit: 0.001 per second per client address, bursts of 2; retry in "
            ),
            "{}",
            answer.body
        );
    }
    assert_eq!(
        metric(&shim.addr, "chrysalis_shim_evidence_refused_total"),
        2
    );
    drop(shim);

    let log = std::fs::read_to_string(&log).expect("read the log");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("evidence request refused"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per run of refusals:\n{log}");
    assert!(warnings[0].contains("source=127.0.0.1"), "{}", warnings[0]);
    assert!(
        !log.contains(&hex::encode(NONCE)) && !log.contains(&hex::encode(&frame)),
        "the log holds the request:\n{log}"
    );
}

/// Runs the shim with `args`, which it must refuse at once; returns its stderr. A shim
/// that starts serving instead is killed after 10 s and the test fails.
fn refused(args: &[&str]) -> String {
    let mut child = shim_command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chrysalis-shim");
    for _ in 0..100 {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "{args:?} exited successfully");
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return err;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{args:?} was accepted: the shim kept running");
}

#[test]
fn limits_out_of_range_are_refused_and_help_explains_them() {
    let help = shim_command()
        .args(["serve", "--help"])
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "--evidence-rate-per-source <PER_SECOND>",
        "[default: 5]",
        "--evidence-burst-per-source <REQUESTS>",
        "[default: 20]",
        "--evidence-sources-max <SOURCES>",
        "[default: 65536]",
        "IPv6 /64",
    ] {
        assert!(
            help.contains(expected),
            "{expected:?} missing from:\n{help}"
        );
    }
    for (flag, value) in [
        ("--evidence-rate-per-source", "0"),
        ("--evidence-rate-per-source", "NaN"),
        ("--evidence-burst-per-source", "0"),
        ("--evidence-sources-max", "0"),
    ] {
        let err = refused(&[
            "serve",
            "--enclave",
            "tcp:127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            flag,
            value,
        ]);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}
