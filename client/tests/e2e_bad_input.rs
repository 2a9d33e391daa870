//! Bad input against the real processes (enclave in dev mode, shim): malformed and
//! oversized frames, replayed, reordered and tampered sealed frames, evidence for
//! another nonce, a client that vanishes mid-stream, an enclave that restarts. Each
//! is refused with a message that names the problem; afterwards a fresh session still
//! gets the right answer, the shim's session gauge is back to 0 and neither process
//! holds more file descriptors than before (no leaked connections).
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chrysalis_client::attest::{self, AttestError};
use chrysalis_client::session::{Session, SessionError};
use chrysalis_protocol::{
    FrameKind, PlainMessage, SealedMessage, HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use common::{
    assert_fresh_session_answers, chat_request, insecure_trust, open_fds, wait_until, RawSession,
    Reply, Stack, StackOptions, QUESTION,
};
use rand_core::{OsRng, RngCore};

const SESSIONS_ACTIVE: &str = "chrysalis_shim_sessions_active";

/// A frame header with arbitrary fields (the protocol's own constructor refuses bad
/// ones, which is the point here).
fn raw_header(body_len: u32, version: u16, kind: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&body_len.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&[kind, 0]);
    h.extend_from_slice(&0u64.to_be_bytes());
    h
}

/// Sends `bytes` straight to the enclave's socket (as a compromised shim could) and
/// returns the plain error it answers with before closing.
fn enclave_answer(stack: &Stack, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(stack.enclave_socket_addr()).expect("connect to the enclave");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(bytes).expect("write to the enclave");
    let mut answer = Vec::new();
    // The enclave closes after refusing: read to the end.
    let _ = s.read_to_end(&mut answer);
    // A frame of another version is answered in that version.
    if let Some(foreign) = chrysalis_protocol::ForeignFrame::parse(&answer) {
        let error = foreign.error.expect("a plain error in the peer's version");
        return format!("v{}: {}", foreign.version, error.message);
    }
    let frame = chrysalis_protocol::Frame::decode(&answer)
        .unwrap_or_else(|e| panic!("enclave answer {} bytes, not one frame: {e}", answer.len()));
    match PlainMessage::from_frame(&frame) {
        Ok(PlainMessage::Error(e)) => e.message,
        other => panic!("expected a plain error, got {other:?}"),
    }
}

/// Sends one message on a fresh session socket and returns how the shim closed it.
async fn shim_close_for(stack: &Stack, msg: tokio_tungstenite::tungstenite::Message) -> Reply {
    use futures_util::{SinkExt, StreamExt};
    let mut socket = stack.endpoint().open_socket().await.expect("socket");
    // The send itself may fail when the shim refuses early; the close says why.
    let _ = socket.send(msg).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the shim answers within 30 s")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => {
                return Reply::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())))
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                return Reply::Frame(chrysalis_protocol::Frame::decode(&b).expect("frame"))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Reply::Closed(None),
        }
    }
}

fn assert_closed_with(reply: &Reply, code: u16, reason: &str) {
    match reply {
        Reply::Closed(Some((c, r))) if *c == code && r.contains(reason) => {}
        other => panic!("expected close {code} {reason:?}, got {other:?}"),
    }
}

/// Fds of both processes now, and a check that they come back to it later.
struct FdBaseline {
    enclave: usize,
    shim: usize,
}

impl FdBaseline {
    fn take(stack: &Stack) -> Self {
        Self {
            enclave: open_fds(stack.enclave.pid()),
            shim: open_fds(stack.shim.pid()),
        }
    }

    fn assert_back(&self, stack: &Stack) {
        let (e, s) = (stack.enclave.pid(), stack.shim.pid());
        let back = wait_until(Duration::from_secs(15), || {
            open_fds(e) <= self.enclave && open_fds(s) <= self.shim
        });
        assert!(
            back,
            "descriptors leaked: enclave {} (was {}), shim {} (was {})",
            open_fds(e),
            self.enclave,
            open_fds(s),
            self.shim
        );
    }
}

#[test]
fn malformed_and_oversized_frames_are_refused_and_nothing_breaks() {
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::start(StackOptions::default());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // One real session first, so lazily opened descriptors are in the baseline.
    rt.block_on(assert_fresh_session_answers(&stack.endpoint()));
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
    let fds = FdBaseline::take(&stack);
    let errors_before = stack.metric("chrysalis_shim_client_errors_total");

    rt.block_on(async {
        // Through the shim: bytes that are not a frame.
        let garbage = shim_close_for(&stack, Message::Binary(b"not a frame".to_vec().into())).await;
        assert_closed_with(&garbage, 1008, "malformed frame");
        // A header that claims a 2 MiB body (the limit is 1 MiB).
        let mut oversized = raw_header(2 << 20, PROTOCOL_VERSION, 1);
        oversized.extend_from_slice(&[0u8; 64]);
        let claim = shim_close_for(&stack, Message::Binary(oversized.into())).await;
        assert_closed_with(&claim, 1008, "malformed frame");
        // A WebSocket message really over 1 MiB: refused before it is buffered whole.
        let huge = vec![0u8; MAX_FRAME_LEN + 1];
        let closed = shim_close_for(&stack, Message::Binary(huge.into())).await;
        assert!(
            matches!(&closed, Reply::Closed(c) if c.as_ref().is_none_or(|(code, _)| *code != 1000)),
            "{closed:?}"
        );
        // Text instead of binary frames.
        let text = shim_close_for(&stack, Message::Text("hello".into())).await;
        assert_closed_with(&text, 1003, "text message");
        // A well-formed sealed frame before any session: the shim relays it (it cannot
        // tell), the enclave refuses it in the clear.
        let mut sealed = raw_header(32, PROTOCOL_VERSION, FrameKind::Sealed.to_byte());
        sealed.extend_from_slice(&[7u8; 32]);
        match shim_close_for(&stack, Message::Binary(sealed.into())).await {
            Reply::Frame(f) => match PlainMessage::from_frame(&f) {
                Ok(PlainMessage::Error(e)) => assert!(
                    e.message
                        .contains("unexpected sealed frame, expected a plain frame"),
                    "{}",
                    e.message
                ),
                other => panic!("expected a plain error, got {other:?}"),
            },
            other => panic!("expected the enclave's refusal, got {other:?}"),
        }
    });
    // Straight at the enclave, as a compromised shim could: a header claiming 4 GiB
    // (nothing may be allocated for it), an unknown version, a body that is not a
    // message.
    let claim = enclave_answer(&stack, &raw_header(u32::MAX, PROTOCOL_VERSION, 1));
    assert!(
        claim.contains("exceeds the maximum of 1048576 bytes"),
        "{claim}"
    );
    let version = enclave_answer(&stack, &raw_header(0, 99, 1));
    assert_eq!(
        version,
        format!(
            "v99: client speaks protocol v99, this enclave speaks v{PROTOCOL_VERSION}: this \
             enclave is older than the client; use a client that speaks v{PROTOCOL_VERSION}"
        )
    );
    let mut junk = raw_header(5, PROTOCOL_VERSION, 1);
    junk.extend_from_slice(&[0xff; 5]);
    let body = enclave_answer(&stack, &junk);
    assert!(body.contains("expected a plain message"), "{body}");

    assert!(stack.metric("chrysalis_shim_client_errors_total") >= errors_before + 3);
    assert_eq!(stack.get("/healthz").0, 200);
    rt.block_on(assert_fresh_session_answers(&stack.endpoint()));
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
    fds.assert_back(&stack);
}

#[test]
fn replayed_reordered_and_tampered_sealed_frames_end_the_session() {
    // One session at a time: each new session below proves the refused one gave its
    // slot back.
    let stack = Stack::start(StackOptions {
        enclave_args: &["--max-sessions", "1"],
        ..StackOptions::default()
    });
    let endpoint = stack.endpoint();
    let request = SealedMessage::Request(chat_request(QUESTION, 4));
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            // Replay: the first request is served, the same bytes again are refused.
            let mut s = RawSession::open(&endpoint, &mut OsRng).await;
            let first = s.channel.seal_message(&request).expect("seal");
            s.send(first.clone()).await;
            assert!(s.read_answer().await.starts_with("The capital"));
            s.send(first).await;
            let why = s.expect_plain_error().await;
            assert!(
                why.contains("replayed sealed frame: counter 0, expected 1"),
                "{why}"
            );
            assert!(matches!(s.next().await, Reply::Closed(_)));

            // Out of order: the second sealed frame arrives first.
            let mut s = RawSession::open(&endpoint, &mut OsRng).await;
            let _zero = s.channel.seal_message(&request).expect("seal");
            let one = s.channel.seal_message(&request).expect("seal");
            s.send(one).await;
            let why = s.expect_plain_error().await;
            assert!(
                why.contains("reordered sealed frame: counter 1, expected 0"),
                "{why}"
            );

            // Tampered: one ciphertext bit flipped.
            let mut s = RawSession::open(&endpoint, &mut OsRng).await;
            let mut tampered = s.channel.seal_message(&request).expect("seal");
            tampered[HEADER_LEN + 3] ^= 0x01;
            s.send(tampered).await;
            let why = s.expect_plain_error().await;
            assert!(why.contains("failed authentication"), "{why}");

            // Every refused session gave its only slot back.
            assert_fresh_session_answers(&endpoint).await;
        });
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
}

#[test]
fn evidence_for_another_nonce_is_refused() {
    let stack = Stack::start(StackOptions::default());
    let endpoint = stack.endpoint();
    let mut ours = [0u8; 32];
    OsRng.fill_bytes(&mut ours);
    let evidence = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(attest::fetch_evidence(&endpoint, &ours))
        .expect("evidence");
    let trust = insecure_trust();
    attest::verify(evidence.clone(), &ours, &trust).expect("evidence for our nonce");

    // The same evidence presented to a client that sent another nonce (a replay).
    let mut other = ours;
    other[0] ^= 0x80;
    let err = attest::verify(evidence.clone(), &other, &trust).expect_err("another nonce");
    assert!(matches!(err, AttestError::ReportData { .. }), "{err}");
    assert!(err.to_string().contains("our nonce"), "{err}");

    // One value changed at a time: the model root, then the channel key.
    let mut wrong_model = evidence.clone();
    wrong_model.model_root[0] ^= 1;
    let err = attest::verify(wrong_model, &ours, &trust).expect_err("another model");
    assert!(matches!(err, AttestError::ReportData { .. }), "{err}");
    let mut wrong_key = evidence.clone();
    wrong_key.x25519_pub[31] ^= 1;
    let err = attest::verify(wrong_key, &ours, &trust).expect_err("another key");
    assert!(matches!(err, AttestError::ReportData { .. }), "{err}");
    // And a forged signature over a report that binds the right data: a simulated
    // report has the SNP layout, signature R at 0x2A0 (earlier builds: 160 bytes,
    // the signature last).
    let mut forged = evidence;
    let sig_at = if forged.report.len() > 0x2A0 {
        0x2A0
    } else {
        forged.report.len() - 1
    };
    forged.report[sig_at] ^= 1;
    let err = attest::verify(forged, &ours, &trust).expect_err("a forged report");
    assert!(matches!(err, AttestError::Simulated(_)), "{err}");
}

#[test]
fn a_client_that_vanishes_mid_stream_frees_its_slot() {
    let logs = common::log_dir("vanish");
    let stack = Stack::start(StackOptions {
        enclave_args: &["--max-sessions", "1"],
        log_dir: Some(&logs),
    });
    let endpoint = stack.endpoint();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(assert_fresh_session_answers(&endpoint));
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
    let fds = FdBaseline::take(&stack);
    rt.block_on(async {
        let mut s = RawSession::open(&endpoint, &mut OsRng).await;
        let long = SealedMessage::Request(chat_request(
            "Write a long story about a lighthouse keeper.",
            400,
        ));
        let sealed = s.channel.seal_message(&long).expect("seal");
        s.send(sealed).await;
        // Wait for the first streamed chunk, then vanish without a close handshake.
        assert!(matches!(s.next().await, Reply::Frame(_)));
        drop(s);
    });
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
    // The enclave dropped the sequence instead of generating 400 tokens for nobody.
    let cancelled = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(logs.join("enclave.log"))
            .is_ok_and(|log| log.contains("sequence abandoned by its session"))
    });
    assert!(
        cancelled,
        "the enclave never dropped the abandoned sequence"
    );
    // The only slot is free again.
    rt.block_on(assert_fresh_session_answers(&endpoint));
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
    fds.assert_back(&stack);
}

#[test]
fn an_enclave_restart_is_reported_and_the_shim_recovers_without_one() {
    let logs = common::log_dir("restart");
    let mut stack = Stack::start(StackOptions {
        log_dir: Some(&logs),
        ..StackOptions::default()
    });
    let endpoint = stack.endpoint();
    let shim_pid = stack.shim.pid();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut session = rt
        .block_on(Session::open(&endpoint, &insecure_trust()))
        .expect("session");
    let old_key = session.verdict().evidence.x25519_pub;
    let old_verdict = session.verdict().clone();
    rt.block_on(session.request(&chat_request(QUESTION, 4), |_| {}))
        .expect("a request before the restart");
    assert_eq!(stack.get("/healthz").0, 200);

    stack.kill_enclave();
    // The shim notices on its own (the open session's link ended) and logs it.
    let shim_log = logs.join("shim.log");
    let logged = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&shim_log).is_ok_and(|l| l.contains("enclave_up=false"))
    });
    assert!(logged, "the shim did not log the enclave's loss");
    let (status, body) = stack.get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("enclave unreachable"), "{body}");
    assert_eq!(stack.metric("chrysalis_shim_enclave_up"), 0);
    // The open session fails with an error that says what happened and what to do.
    let err = rt
        .block_on(session.request(&chat_request(QUESTION, 4), |_| {}))
        .expect_err("the enclave is gone");
    assert!(matches!(err, SessionError::Closed(_)), "{err:?}");
    assert!(
        err.to_string().contains("enclave unreachable")
            && err.to_string().contains("verify it again"),
        "{err}"
    );
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);

    stack.restart_enclave();
    let healthy = wait_until(Duration::from_secs(30), || stack.get("/healthz").0 == 200);
    assert!(healthy, "the shim did not see the enclave come back");
    assert_eq!(stack.shim.pid(), shim_pid, "the shim was not restarted");
    assert_eq!(stack.metric("chrysalis_shim_enclave_up"), 1);
    let shim_log = std::fs::read_to_string(&shim_log).expect("shim log");
    assert!(shim_log.contains("enclave unreachable"), "shim log");
    assert!(shim_log.contains("enclave_up=true"), "shim log");
    assert!(stack.metric("chrysalis_shim_enclave_disconnects_total") >= 1);

    // The old verification is worthless now (new keys): opening with it is refused,
    // a freshly verified session works.
    let stale = rt
        .block_on(Session::open_verified(&endpoint, old_verdict))
        .expect_err("stale evidence");
    assert!(
        stale.to_string().contains("did not issue"),
        "stale evidence: {stale}"
    );
    let fresh = rt
        .block_on(Session::open(&endpoint, &insecure_trust()))
        .expect("a fresh session");
    assert_ne!(fresh.verdict().evidence.x25519_pub, old_key);
    rt.block_on(assert_fresh_session_answers(&endpoint));
    drop(fresh);
    stack.wait_for_metric(SESSIONS_ACTIVE, 0);
}
