//! Confidentiality end to end: a known prompt goes client → shim → enclave and back,
//! and nothing the untrusted side handles, logs or exports holds the prompt, the answer
//! or the session keys; the enclave's own logs hold neither plaintext nor keys.
//!
//! Every byte the shim handled is recorded outside it, by TCP taps on both of its
//! links (client ↔ tap ↔ shim ↔ tap ↔ enclave), so the check does not depend on the
//! shim's cooperation. WebSocket frames from the client are masked on the first link;
//! the shim forwards each one unmasked, exactly as it decoded it, over the second link,
//! so the tapped bytes cover what the shim saw in the clear. Both processes log at
//! `RUST_LOG=trace`.
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`.

mod common;

use std::sync::{Arc, Mutex};

use chrysalis_client::transport::Endpoint;
use chrysalis_protocol::SealedMessage;
use common::{
    chat_request, find_leak, start_until, Direction, RawSession, Stack, StackOptions, Tap,
    PARIS_TEXT,
};
use rand_core::{CryptoRng, OsRng, RngCore};

/// A prompt no component prints by accident (no template or log text shares a
/// 16-byte window with it).
const PROMPT: &str =
    "Zebra lighthouse quartz: answer briefly, what is the capital of France? Violet anchor.";

/// OsRng that keeps a copy of every byte it hands out, so the test knows the client's
/// ephemeral secret and can derive the session keys independently.
#[derive(Clone, Default)]
struct RecordingRng(Arc<Mutex<Vec<u8>>>);

impl RngCore for RecordingRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        OsRng.fill_bytes(dest);
        self.0.lock().expect("rng log").extend_from_slice(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for RecordingRng {}

/// Hands out recorded bytes again, in order: replays the client's key generation.
struct Replay(Vec<u8>);

impl RngCore for Replay {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(self.0.len() >= dest.len(), "replayed past the recording");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Replay {}

/// The secrets of one session as the test derives them, with their names: the client's
/// ephemeral X25519 secret, its ML-KEM seeds d and z, both DH results, the ML-KEM
/// shared secret, and the two AES-256-GCM keys.
fn session_secrets(rng: &RecordingRng, session: &RawSession) -> Vec<(&'static str, Vec<u8>)> {
    use ml_kem::kem::Decapsulate;
    use ml_kem::KemCore;
    let (open, accept) = (&session.open, &session.accept);
    let drawn = rng.0.lock().expect("rng log").clone();
    assert!(drawn.len() >= 96, "the client drew {} bytes", drawn.len());
    let ephemeral: [u8; 32] = drawn[..32].try_into().expect("32 random bytes drawn");
    let secret = x25519_dalek::StaticSecret::from(ephemeral);
    assert_eq!(
        x25519_dalek::PublicKey::from(&secret).to_bytes(),
        open.client_ephemeral_pub,
        "the recorded bytes are the ephemeral key"
    );
    let enclave_pub = session.verdict.evidence.x25519_pub;
    let static_dh = secret.diffie_hellman(&x25519_dalek::PublicKey::from(enclave_pub));
    let ephemeral_dh =
        secret.diffie_hellman(&x25519_dalek::PublicKey::from(accept.enclave_ephemeral_pub));
    let (dk, ek) = ml_kem::MlKem768::generate(&mut Replay(drawn[32..96].to_vec()));
    assert_eq!(
        ml_kem::EncodedSizeUser::as_bytes(&ek).as_slice(),
        open.client_mlkem_pub.as_slice(),
        "the recorded bytes are the ML-KEM seeds"
    );
    let kem: [u8; 32] = dk
        .decapsulate(&accept.mlkem_ciphertext.into())
        .expect("decapsulation")
        .into();
    let th = chrysalis_protocol::transcript_hash(&open.evidence_hash, open, accept);
    let keys =
        chrysalis_protocol::session_keys(static_dh.as_bytes(), ephemeral_dh.as_bytes(), &kem, &th);
    vec![
        ("client ephemeral secret", ephemeral.to_vec()),
        ("ML-KEM seed d", drawn[32..64].to_vec()),
        ("ML-KEM seed z", drawn[64..96].to_vec()),
        ("static DH secret", static_dh.as_bytes().to_vec()),
        ("ephemeral DH secret", ephemeral_dh.as_bytes().to_vec()),
        ("ML-KEM shared secret", kem.to_vec()),
        ("c2s key", keys[0].to_vec()),
        ("s2c key", keys[1].to_vec()),
    ]
}

/// Fails naming the place and the window when any secret shows up in `haystack`.
fn assert_no_leak(place: &str, haystack: &[u8], secrets: &[(&str, &[u8])]) {
    for (name, secret) in secrets {
        if let Some(window) = find_leak(haystack, secret) {
            panic!("{place} holds part of the {name}: {window}");
        }
    }
}

#[test]
fn prompt_answer_and_keys_never_reach_the_shim_or_any_log() {
    let logs = common::log_dir("leaks");
    // Enclave alone (trace logs), then the shim behind a tap to the enclave, then a tap
    // in front of the shim for the client.
    let stack = Stack::start(StackOptions {
        log_dir: Some(&logs),
        ..StackOptions::default()
    });
    let enclave_tap = Tap::start(stack.enclave_socket_addr());
    let shim_log = logs.join("tapped-shim.log");
    let (_shim, shim_url) = start_until(
        common::shim_command(&format!("tcp:{}", enclave_tap.addr), Some(&shim_log)),
        "listening on ",
        Some(&shim_log),
    );
    let client_tap = Tap::start(shim_url.trim_start_matches("http://"));
    let endpoint = Endpoint::new(&format!("http://{}", client_tap.addr), None).expect("endpoint");

    let rng = RecordingRng::default();
    let (answer, secrets) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let mut session = RawSession::open(&endpoint, &mut rng.clone()).await;
            let request = chat_request(PROMPT, 24);
            let sealed = session
                .channel
                .seal_message(&SealedMessage::Request(request))
                .expect("seal");
            session.send(sealed).await;
            let answer = session.read_answer().await;
            let secrets = session_secrets(&rng, &session);
            (answer, secrets)
        });
    // The path worked, so the scans below look at a real exchange.
    assert!(answer.contains("Paris"), "answer: {answer:?}");
    let (_, metrics) = common::http_get(&shim_url, "/metrics");
    assert!(
        metrics.contains("chrysalis_shim_sessions_total 1"),
        "{metrics}"
    );

    let plaintext: [(&str, &[u8]); 3] = [
        ("prompt", PROMPT.as_bytes()),
        ("answer", answer.as_bytes()),
        ("fixture answer", PARIS_TEXT.as_bytes()),
    ];
    let tapped = [
        ("client→shim bytes", client_tap.bytes(Direction::Upstream)),
        ("shim→client bytes", client_tap.bytes(Direction::Downstream)),
        ("shim→enclave bytes", enclave_tap.bytes(Direction::Upstream)),
        (
            "enclave→shim bytes",
            enclave_tap.bytes(Direction::Downstream),
        ),
    ];
    for (place, bytes) in &tapped {
        assert!(
            bytes.len() > 100,
            "the tap saw only {} {place}",
            bytes.len()
        );
        assert_no_leak(place, bytes, &plaintext);
    }
    let shim_log_text = std::fs::read(&shim_log).expect("shim log");
    assert!(
        String::from_utf8_lossy(&shim_log_text).contains("TRACE"),
        "the shim did not log at trace level"
    );
    let named: Vec<(&str, &[u8])> = secrets
        .iter()
        .map(|(name, bytes)| (*name, bytes.as_slice()))
        .collect();
    let everything: Vec<(&str, &[u8])> = plaintext.iter().copied().chain(named).collect();
    assert_no_leak("the shim's log", &shim_log_text, &everything);
    assert_no_leak("the shim's /metrics", metrics.as_bytes(), &everything);

    let enclave_log = std::fs::read(logs.join("enclave.log")).expect("enclave log");
    assert!(
        String::from_utf8_lossy(&enclave_log).contains("session opened"),
        "the enclave log misses its session lines"
    );
    assert_no_leak("the enclave's log", &enclave_log, &everything);
}

#[test]
fn the_leak_scanner_finds_what_it_looks_for() {
    // The scan above could pass by being blind: check it on planted data.
    let secret = PROMPT.as_bytes();
    let mut log = b"INFO relay: frame of 123 bytes ".to_vec();
    assert!(find_leak(&log, secret).is_none());
    log.extend_from_slice(&secret[20..36]);
    assert!(find_leak(&log, secret).is_some(), "a raw 16-byte window");
    let hex_log = format!("key={}", hex::encode(&secret[40..56]));
    assert!(
        find_leak(hex_log.as_bytes(), secret).is_some(),
        "a hex window"
    );
}

/// Reads the next reply of `session` and returns the sealed error's text.
async fn expect_sealed_error(session: &mut RawSession) -> String {
    let common::Reply::Frame(frame) = session.next().await else {
        panic!("the session closed instead of answering with a sealed error");
    };
    assert_eq!(
        frame.kind(),
        chrysalis_protocol::FrameKind::Sealed,
        "a refusal inside a session must travel sealed"
    );
    match session
        .channel
        .open_message(&frame)
        .expect("a sealed reply")
    {
        SealedMessage::Error(e) => e.message,
        other => panic!("expected a sealed error, got {other:?}"),
    }
}

#[test]
fn a_request_refused_inside_a_session_shows_the_shim_no_request_field() {
    let logs = common::log_dir("refusal-leaks");
    let stack = Stack::start(StackOptions {
        log_dir: Some(&logs),
        ..StackOptions::default()
    });
    let enclave_tap = Tap::start(stack.enclave_socket_addr());
    let shim_log = logs.join("tapped-shim.log");
    let (_shim, shim_url) = start_until(
        common::shim_command(&format!("tcp:{}", enclave_tap.addr), Some(&shim_log)),
        "listening on ",
        Some(&shim_log),
    );
    let client_tap = Tap::start(shim_url.trim_start_matches("http://"));
    let endpoint = Endpoint::new(&format!("http://{}", client_tap.addr), None).expect("endpoint");

    // Two refusals: one by the scheduler (the session goes on), one by the decoder (a
    // field out of range; the session ends).
    const TOO_MANY: u32 = 987_654;
    let (scheduler_refusal, decoder_refusal) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let mut session = RawSession::open(&endpoint, &mut OsRng).await;
            let greedy = chat_request(PROMPT, TOO_MANY);
            let sealed = session
                .channel
                .seal_message(&SealedMessage::Request(greedy))
                .expect("seal");
            session.send(sealed).await;
            let first = expect_sealed_error(&mut session).await;

            // Encoding does not validate, so a hostile client can seal this.
            let mut bad_top_p = chat_request(PROMPT, 4);
            bad_top_p.sampling.top_p = 0.0;
            let sealed = session
                .channel
                .seal_message(&SealedMessage::Request(bad_top_p))
                .expect("seal");
            session.send(sealed).await;
            let second = expect_sealed_error(&mut session).await;
            (first, second)
        });
    // The client, and only the client, learns why.
    assert!(
        scheduler_refusal.contains(&TOO_MANY.to_string()),
        "{scheduler_refusal}"
    );
    assert!(decoder_refusal.contains("top_p"), "{decoder_refusal}");

    let too_many = TOO_MANY.to_string();
    let fields: [(&str, &[u8]); 4] = [
        ("the refused max_tokens", too_many.as_bytes()),
        ("the refused field's name", b"top_p"),
        ("the scheduler's reason", scheduler_refusal.as_bytes()),
        ("the decoder's reason", decoder_refusal.as_bytes()),
    ];
    for (place, bytes) in [
        ("client→shim bytes", client_tap.bytes(Direction::Upstream)),
        ("shim→client bytes", client_tap.bytes(Direction::Downstream)),
        ("shim→enclave bytes", enclave_tap.bytes(Direction::Upstream)),
        (
            "enclave→shim bytes",
            enclave_tap.bytes(Direction::Downstream),
        ),
        (
            "the shim's log",
            std::fs::read(&shim_log).expect("shim log"),
        ),
        (
            "the enclave's log",
            std::fs::read(logs.join("enclave.log")).expect("enclave log"),
        ),
    ] {
        assert_no_leak(place, &bytes, &fields);
    }
    let enclave_log = std::fs::read_to_string(logs.join("enclave.log")).expect("enclave log");
    assert!(
        enclave_log.contains("request refused") && enclave_log.contains("malformed"),
        "the enclave logs that it refused, without the reason: {enclave_log}"
    );
}
