//! What the end-to-end tests share: building and starting the real binaries (enclave in
//! dev mode, shim, gateway), their logs, the shim's metrics, and a TCP tap that records
//! every byte crossing a link.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrysalis_client::attest::TrustOptions;
use chrysalis_client::session::{Session, SessionError};
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::{ChatMessage, ErrorCode, InferenceRequest, Prompt, Role, SamplingParams};

/// The model every end-to-end test serves.
pub const MODEL: &str = "smollm2-135m";
/// The question of the shared fixture.
pub const QUESTION: &str = "What is the capital of France?";
/// Greedy ids of "The capital of France is Paris.<|im_end|>" (shared fixture).
pub const PARIS: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];
/// The text of [`PARIS`].
pub const PARIS_TEXT: &str = "The capital of France is Paris.";

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target profile directory")
        .to_path_buf()
}

/// The path of a workspace binary in this test's profile. The first call in a test
/// process runs `cargo build` for the enclave, shim and client, so the processes under
/// test are built from the same sources as the test itself (a no-op when up to date).
pub fn binary(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args("build -p chrysalis-enclave -p chrysalis-shim -p chrysalis-client".split(' '));
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join(name)
}

/// The installed model's directory; fails with the command that installs it.
pub fn model_dir() -> PathBuf {
    let home = std::env::var_os("CHRYSALIS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/chrysalis")
        });
    let dir = home.join("models").join(MODEL);
    assert!(
        dir.join("manifest.json").is_file(),
        "model missing at {}: run `cargo xtask fetch-model {MODEL}`",
        dir.display()
    );
    dir
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a command and waits for `marker` on its stdout; returns the word after it.
/// Stderr (the logs) goes to `log` when given, else nowhere.
pub fn start_until(mut cmd: Command, marker: &'static str, log: Option<&Path>) -> (Proc, String) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("create log file")),
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once(marker) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("no {marker:?} line from {:?}", cmd.get_program()));
    (Proc(child), addr)
}

/// Starts a command and waits for "listening on ADDR" on its stdout.
pub fn start(cmd: Command) -> (Proc, String) {
    start_until(cmd, "listening on ", None)
}

/// How to start the stack.
#[derive(Default)]
pub struct StackOptions<'a> {
    /// Extra `chrysalis-enclave serve` flags.
    pub enclave_args: &'a [&'a str],
    /// Where the enclave's and the shim's logs go (`enclave.log`, `shim.log`), written
    /// at the most verbose level; without it they are discarded.
    pub log_dir: Option<&'a Path>,
}

/// Enclave (dev mode) and shim, running.
pub struct Stack {
    // Field order is drop order: the shim goes first.
    pub shim: Proc,
    pub enclave: Proc,
    /// The shim's base URL.
    pub url: String,
    /// The enclave's `tcp:HOST:PORT`.
    pub enclave_addr: String,
    enclave_args: Vec<String>,
    log_dir: Option<PathBuf>,
}

/// `chrysalis-enclave serve --dev` on `listen`, logging at trace level into `log`.
fn enclave_command(listen: &str, extra: &[String], log: Option<&Path>) -> Command {
    let mut cmd = Command::new(binary("chrysalis-enclave"));
    cmd.args(["serve", "--listen", listen, "--dev", "--model"])
        .arg(model_dir())
        .args(extra);
    if log.is_some() {
        // NO_COLOR: plain text, so tests can search the logs for `key=value`.
        cmd.env("RUST_LOG", "trace").env("NO_COLOR", "1");
    }
    cmd
}

/// `chrysalis-shim serve` in front of `enclave_addr`, logging at trace level into `log`.
pub fn shim_command(enclave_addr: &str, log: Option<&Path>) -> Command {
    let mut cmd = Command::new(binary("chrysalis-shim"));
    cmd.args([
        "serve",
        "--enclave",
        enclave_addr,
        "--listen",
        "127.0.0.1:0",
    ]);
    if log.is_some() {
        // NO_COLOR: plain text, so tests can search the logs for `key=value`.
        cmd.env("RUST_LOG", "trace").env("NO_COLOR", "1");
    }
    cmd
}

impl Stack {
    /// Starts enclave and shim on free loopback ports.
    pub fn start(options: StackOptions<'_>) -> Self {
        let enclave_args: Vec<String> = options
            .enclave_args
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let log_dir = options.log_dir.map(Path::to_path_buf);
        let enclave_log = log_dir.as_ref().map(|d| d.join("enclave.log"));
        let shim_log = log_dir.as_ref().map(|d| d.join("shim.log"));
        let (enclave, enclave_addr) = start_until(
            enclave_command("tcp:127.0.0.1:0", &enclave_args, enclave_log.as_deref()),
            "listening on ",
            enclave_log.as_deref(),
        );
        let (shim, url) = start_until(
            shim_command(&enclave_addr, shim_log.as_deref()),
            "listening on ",
            shim_log.as_deref(),
        );
        Self {
            shim,
            enclave,
            url,
            enclave_addr,
            enclave_args,
            log_dir,
        }
    }

    /// Kills the enclave (SIGKILL: no chance to say goodbye).
    pub fn kill_enclave(&mut self) {
        self.enclave.kill();
    }

    /// Starts a fresh enclave on the same address as before; its log goes to
    /// `enclave-restarted.log`.
    pub fn restart_enclave(&mut self) {
        let log = self
            .log_dir
            .as_ref()
            .map(|d| d.join("enclave-restarted.log"));
        let (enclave, addr) = start_until(
            enclave_command(&self.enclave_addr, &self.enclave_args, log.as_deref()),
            "listening on ",
            log.as_deref(),
        );
        assert_eq!(addr, self.enclave_addr, "restarted on another address");
        self.enclave = enclave;
    }

    /// The enclave's TCP address without the `tcp:` prefix.
    pub fn enclave_socket_addr(&self) -> &str {
        self.enclave_addr
            .strip_prefix("tcp:")
            .expect("a tcp: enclave address")
    }

    /// A client endpoint for the shim.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.url, None).expect("endpoint")
    }

    /// `GET path` on the shim: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.url, path)
    }

    /// One metric's value from the shim's `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {text}");
        metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Waits until `name` reads `want` (metrics move after the client sees the end).
    pub fn wait_for_metric(&self, name: &str, want: u64) {
        let found = wait_until(Duration::from_secs(15), || self.metric(name) == want);
        assert!(
            found,
            "{name} stayed at {} (expected {want})",
            self.metric(name)
        );
    }
}

/// A plain HTTP/1.1 GET over a fresh connection: status and body.
pub fn http_get(base_url: &str, path: &str) -> (u16, String) {
    let hostport = base_url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).expect("connect to the shim");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .expect("send GET");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Open file descriptors of a process (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A greedy chat request for one user message.
pub fn chat_request(question: &str, max_tokens: u32) -> InferenceRequest {
    InferenceRequest {
        request_id: 7,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: question.to_owned(),
        }]),
        max_tokens,
        sampling: SamplingParams::GREEDY,
        stream: true,
    }
}

/// Trust options that accept the dev enclave's simulated evidence.
pub fn insecure_trust() -> TrustOptions {
    TrustOptions {
        allow_simulated: true,
        ..TrustOptions::default()
    }
}

/// Opens a verified session, retrying while the enclave is still freeing the slot of
/// a session that just ended (the client can see the end before the enclave does).
pub async fn open_session_retrying(endpoint: &Endpoint) -> Result<Session, SessionError> {
    let start = Instant::now();
    loop {
        match Session::open(endpoint, &insecure_trust()).await {
            Err(SessionError::Refused { code, .. })
                if code == ErrorCode::Overloaded && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Asks the capital-of-France question on a fresh session and checks the answer.
pub async fn assert_fresh_session_answers(endpoint: &Endpoint) {
    let mut session = open_session_retrying(endpoint)
        .await
        .expect("a fresh session");
    let done = session
        .request(&chat_request(QUESTION, 16), |_| {})
        .await
        .expect("a request on a fresh session");
    assert_eq!(done.token_ids, PARIS);
    session.close().await;
}

/// What a tap saw: each read, in order, with its direction.
type TapLog = Arc<Mutex<Vec<(Direction, Vec<u8>)>>>;

/// Which way bytes crossed a tapped link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the side that connected to the tap.
    Upstream,
    /// Back to it.
    Downstream,
}

/// A TCP forwarder that records every byte in both directions: put it between two
/// processes to see exactly what crossed the link.
pub struct Tap {
    /// The address to connect to instead of the target.
    pub addr: String,
    recorded: TapLog,
}

impl Tap {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
        let addr = listener.local_addr().expect("tap address").to_string();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_owned();
        let log = Arc::clone(&recorded);
        std::thread::spawn(move || {
            for inbound in listener.incoming().map_while(Result::ok) {
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue; // the target is down: the caller sees a closed connection
                };
                pump(&inbound, &outbound, Direction::Upstream, &log);
                pump(&outbound, &inbound, Direction::Downstream, &log);
            }
        });
        Self { addr, recorded }
    }

    /// Every byte recorded so far in one direction, concatenated.
    pub fn bytes(&self, direction: Direction) -> Vec<u8> {
        self.recorded
            .lock()
            .expect("tap log")
            .iter()
            .filter(|(d, _)| *d == direction)
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }
}

/// Copies `from` to `to` on a thread, recording each read.
fn pump(from: &TcpStream, to: &TcpStream, direction: Direction, log: &TapLog) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            log.lock()
                .expect("tap log")
                .push((direction, buf[..n].to_vec()));
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}

/// Every window of `WINDOW` bytes of `secret` (the whole of it when shorter).
pub fn windows(secret: &[u8]) -> Vec<&[u8]> {
    const WINDOW: usize = 16;
    if secret.len() <= WINDOW {
        vec![secret]
    } else {
        secret.windows(WINDOW).collect()
    }
}

/// The first window of `secret`, raw or as lowercase hex, found in `haystack`.
pub fn find_leak(haystack: &[u8], secret: &[u8]) -> Option<String> {
    windows(secret).into_iter().find_map(|w| {
        let hex = hex::encode(w);
        if contains(haystack, w) {
            Some(format!("{:?}", String::from_utf8_lossy(w)))
        } else if contains(haystack, hex.as_bytes()) {
            Some(format!("hex {hex}"))
        } else {
            None
        }
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fresh directory for one test's logs, kept under the target directory so a failure
/// can be read afterwards.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = target_dir().join("e2e-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the log directory");
    dir
}

/// What came back on a session socket.
#[derive(Debug)]
pub enum Reply {
    /// One frame.
    Frame(chrysalis_protocol::Frame),
    /// A close, with its code and reason (none when the connection just ended).
    Closed(Option<(u16, String)>),
}

/// A session driven frame by frame, for tests that send what the client library never
/// would: replays, reordered frames, garbage.
pub struct RawSession {
    /// The WebSocket to the shim.
    pub socket: chrysalis_client::transport::SessionSocket,
    /// The client end of the sealed channel.
    pub channel: chrysalis_protocol::SealedChannel,
    /// The session-open that was sent.
    pub open: chrysalis_protocol::SessionOpen,
    /// The enclave's accept.
    pub accept: chrysalis_protocol::SessionAccept,
    /// The verified evidence.
    pub verdict: chrysalis_client::attest::Verdict,
}

impl RawSession {
    /// Verifies fresh evidence and opens a session, drawing the client's ephemeral key
    /// from `rng`; retries for a while when the enclave says it is full (a session that
    /// just ended may not have given its slot back yet).
    pub async fn open(endpoint: &Endpoint, rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let start = Instant::now();
        loop {
            match Self::try_open(endpoint, rng).await {
                Ok(raw) => return raw,
                Err(e) if e.code == ErrorCode::Overloaded && start.elapsed().as_secs() < 10 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("session refused: {e:?}"),
            }
        }
    }

    async fn try_open(
        endpoint: &Endpoint,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, chrysalis_protocol::ErrorMessage> {
        use chrysalis_protocol::{ClientHandshake, PlainMessage};
        let verdict = chrysalis_client::attest::fetch_and_verify(endpoint, &insecure_trust())
            .await
            .expect("verified evidence");
        let (handshake, open) = ClientHandshake::start(rng, &verdict.evidence);
        let mut socket = endpoint.open_socket().await.expect("session socket");
        let frame = PlainMessage::SessionOpen(open.clone())
            .to_frame_bytes()
            .expect("session open");
        send_on(&mut socket, frame).await;
        match next_on(&mut socket).await {
            Reply::Frame(f) => match PlainMessage::from_frame(&f) {
                Ok(PlainMessage::SessionAccept(accept)) => Ok(Self {
                    socket,
                    channel: handshake.finish(&accept).expect("a signed accept"),
                    open,
                    accept,
                    verdict,
                }),
                Ok(PlainMessage::Error(e)) => Err(e),
                other => panic!("expected a session accept, got {other:?}"),
            },
            other => panic!("expected a session accept, got {other:?}"),
        }
    }

    /// Sends one binary message.
    pub async fn send(&mut self, bytes: Vec<u8>) {
        send_on(&mut self.socket, bytes).await;
    }

    /// The next frame or close, waiting at most a minute.
    pub async fn next(&mut self) -> Reply {
        next_on(&mut self.socket).await
    }

    /// Reads sealed replies until the response ends; returns the text.
    pub async fn read_answer(&mut self) -> String {
        use chrysalis_protocol::SealedMessage;
        let mut text = String::new();
        loop {
            let Reply::Frame(frame) = self.next().await else {
                panic!("the session closed before the answer ended");
            };
            match self.channel.open_message(&frame).expect("a sealed reply") {
                SealedMessage::Chunk(c) => text.push_str(&c.text),
                SealedMessage::End(_) => return text,
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }

    /// Reads the plain error the enclave sends when it refuses a frame, and the close.
    pub async fn expect_plain_error(&mut self) -> String {
        use chrysalis_protocol::PlainMessage;
        match self.next().await {
            Reply::Frame(f) => match PlainMessage::from_frame(&f) {
                Ok(PlainMessage::Error(e)) => e.message,
                other => panic!("expected a plain error, got {other:?}"),
            },
            other => panic!("expected a plain error, got {other:?}"),
        }
    }
}

/// Sends one binary message on a session socket.
pub async fn send_on(socket: &mut chrysalis_client::transport::SessionSocket, bytes: Vec<u8>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .expect("send on the session socket");
}

/// The next binary message on a session socket, raw, or how it closed; waits at most a
/// minute.
pub async fn next_raw(
    socket: &mut chrysalis_client::transport::SessionSocket,
) -> Result<Vec<u8>, Option<(u16, String)>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a reply within a minute");
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(c))) => {
                return Err(c.map(|c| (u16::from(c.code), c.reason.to_string())))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// The next frame or close on a session socket, waiting at most a minute.
pub async fn next_on(socket: &mut chrysalis_client::transport::SessionSocket) -> Reply {
    match next_raw(socket).await {
        Ok(b) => Reply::Frame(chrysalis_protocol::Frame::decode(&b).expect("a well-formed frame")),
        Err(close) => Reply::Closed(close),
    }
}
