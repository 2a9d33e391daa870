//! Protocol versions across the real processes: an old (v1) client, replayed from the
//! bytes a v1 client really sent (`protocol/tests/golden/transcript_v1.hex`), gets an
//! error frame in its own version naming both versions, for its evidence request and
//! for its session-open; and this (v2) client, facing an enclave that speaks v1 behind a
//! real shim, reports both versions instead of a parse failure.
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use chrysalis_client::attest::{self, AttestError};
use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::{
    Envelope, ErrorCode, ErrorMessage, ForeignFrame, HEADER_LEN, PROTOCOL_VERSION,
};
use common::{insecure_trust, next_raw, send_on, start, Stack, StackOptions};

const UPGRADE: &str = "client speaks protocol v1, this enclave speaks v2: upgrade the client";

/// A frame a v1 client sent, from the checked-in v1 transcript.
fn v1_frame(name: &str) -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/golden/transcript_v1.hex");
    let text = std::fs::read_to_string(&path).expect("the v1 transcript is checked in");
    text.lines()
        .find_map(|l| {
            let (n, hex) = l.split_once(' ')?;
            (n == name).then(|| hex::decode(hex).expect("hex"))
        })
        .unwrap_or_else(|| panic!("{name} missing from {}", path.display()))
}

/// `POST path` with a binary body on a fresh connection: status and body bytes.
fn http_post(base_url: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let hostport = base_url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).expect("connect to the shim");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("send POST");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw[split + 4..].to_vec())
}

/// The error a v1 client reads from `answer`: the frame must carry version 1.
fn v1_error(answer: &[u8]) -> ErrorMessage {
    assert_eq!(&answer[4..6], &[0, 1], "the answer is not a v1 frame");
    let foreign = ForeignFrame::parse(answer).expect("one frame");
    assert_eq!(foreign.version, 1);
    foreign.error.expect("a plain error frame")
}

#[test]
fn an_old_client_is_told_to_upgrade_in_its_own_version() {
    let stack = Stack::start(StackOptions::default());

    // Its evidence request: the shim relays it, the enclave answers in v1.
    let (status, answer) = http_post(
        &stack.url,
        "/v1/evidence",
        &v1_frame("frame_evidence_request"),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let error = v1_error(&answer);
    assert_eq!(error.code, ErrorCode::UnsupportedVersion);
    assert_eq!(error.message, UPGRADE);

    // Its session-open on a session socket: the same answer, then the end.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut socket = stack
            .endpoint()
            .open_socket()
            .await
            .expect("session socket");
        send_on(&mut socket, v1_frame("frame_session_open")).await;
        let answer = next_raw(&mut socket).await.expect("an answer frame");
        let error = v1_error(&answer);
        assert_eq!(error.code, ErrorCode::UnsupportedVersion);
        assert_eq!(error.message, UPGRADE);
        assert!(next_raw(&mut socket).await.is_err(), "the session must end");
    });

    // The enclave is unharmed: a v2 client still gets its answer.
    rt.block_on(common::assert_fresh_session_answers(&stack.endpoint()));
}

/// A stand-in for an enclave that speaks v1: it answers every frame with the error a
/// v1 enclave sends for a frame of another version, in a v1 frame.
fn start_v1_enclave() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer_as_v1(conn));
        }
    });
    addr
}

fn answer_as_v1(mut conn: TcpStream) {
    let mut head = [0u8; HEADER_LEN];
    if conn.read_exact(&mut head).is_err() {
        return;
    }
    let Ok(envelope) = Envelope::parse(&head) else {
        return;
    };
    let mut body = vec![0u8; envelope.body_len as usize];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    let refusal = ForeignFrame::refusal(
        1,
        ErrorMessage {
            code: ErrorCode::UnsupportedVersion,
            message: format!(
                "frame refused, connection closed: unknown protocol version {}, expected 1",
                envelope.version
            ),
        },
    )
    .expect("a v1 error frame");
    let _ = conn.write_all(&refusal);
}

#[test]
fn this_client_names_both_versions_when_the_enclave_is_older() {
    let enclave = start_v1_enclave();
    let (_shim, url) = start(common::shim_command(&format!("tcp:{enclave}"), None));
    let endpoint = Endpoint::new(&url, None).expect("endpoint");
    let err = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(attest::fetch_and_verify(&endpoint, &insecure_trust()))
        .expect_err("an enclave of another version");
    assert!(matches!(err, AttestError::Version(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "enclave speaks protocol v1, this client speaks v{PROTOCOL_VERSION}: the enclave \
             must be upgraded, or use a client that speaks v1"
        )),
        "{text}"
    );
    assert!(
        text.contains("(the enclave said: frame refused, connection closed: unknown protocol version 2, expected 1)"),
        "{text}"
    );
}
