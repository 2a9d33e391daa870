//! Golden transcript of protocol v2: fixed keys, nonces and RNGs give exact bytes,
//! checked in under `tests/golden/transcript_v2.hex`, so any change of the wire format
//! or the key schedule fails here. The values are the test vectors of
//! `docs/protocol.md`.
//!
//! To regenerate after a deliberate change (which must also bump `PROTOCOL_VERSION`):
//!
//! ```text
//! CHRYSALIS_BLESS=1 cargo test -p chrysalis-protocol --test golden
//! ```
//!
//! `tests/golden/check_transcript_v2.py` recomputes the transcript's cryptography with
//! Python's `cryptography` package (50 or later, for ML-KEM), independently of this
//! crate (the last test below runs it). `tests/golden/transcript_v1.hex` is what a v1
//! peer sent; `tests/version_refusal.rs` uses its frames.

mod common;

use std::path::PathBuf;

use chrysalis_protocol::{
    accept_signing_bytes, session_keys, transcript_hash, ChatMessage, ErrorCode, ErrorMessage,
    Evidence, EvidenceRequest, FinishReason, Frame, FrameDecoder, InferenceRequest, PlainMessage,
    Prompt, Receipt, ResponseEnd, Role, SamplingParams, SealedChannel, SealedMessage, Signable,
    Signed, StreamChunk, Usage, WireMessage,
};
use common::{
    client_start, enclave_keys, evidence, server_accept, FixedRng, CLIENT_SEED, SERVER_SEED,
};
use ml_kem::kem::Decapsulate;
use ml_kem::{KemCore, MlKem768};
use rand_core::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transcript_v2.hex")
}

fn request() -> InferenceRequest {
    InferenceRequest {
        request_id: 42,
        prompt: Prompt::Chat(vec![
            ChatMessage {
                role: Role::System,
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "What is the capital of France?".into(),
            },
        ]),
        max_tokens: 32,
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            seed: 1234,
        },
        stream: true,
    }
}

/// The server's side of the conversation, in order.
fn server_messages(receipt: Signed<Receipt>) -> Vec<SealedMessage> {
    vec![
        SealedMessage::Chunk(StreamChunk {
            index: 0,
            text: "The capital".into(),
            token_ids: vec![504, 3575],
        }),
        SealedMessage::Chunk(StreamChunk {
            index: 1,
            text: " of France is Paris.".into(),
            token_ids: vec![282, 4649, 314, 7042, 30],
        }),
        SealedMessage::End(ResponseEnd {
            finish_reason: FinishReason::Stop,
            receipt,
        }),
    ]
}

/// The receipt the golden transcript's `sealed_end` carries: for `request()`, with the
/// usage and the output (ids and finish reason) that `server_messages` delivers.
fn golden_receipt(evidence: &Evidence) -> Receipt {
    Receipt {
        request_id: request().request_id,
        evidence_hash: evidence.hash(),
        model_root: evidence.model_root,
        request_hash: request().hash(),
        usage: Usage {
            prompt_tokens: 31,
            completion_tokens: 7,
        },
        output_hash: chrysalis_protocol::output_hash(
            &[504, 3575, 282, 4649, 314, 7042, 30],
            FinishReason::Stop,
        ),
    }
}

/// Builds the whole transcript as (name, bytes) lines.
fn transcript() -> Vec<(&'static str, Vec<u8>)> {
    let keys = enclave_keys();
    let evidence = evidence(&keys);
    let nonce = [0x33; 32];
    let mut lines = vec![
        ("enclave_seed", vec![0x11; 32]),
        ("enclave_x25519_pub", keys.x25519_public().to_vec()),
        ("enclave_ed25519_pub", keys.ed25519_public().to_vec()),
        ("model_root", evidence.model_root.to_vec()),
        ("nonce", nonce.to_vec()),
        (
            "report_data",
            evidence.expected_report_data(&nonce).to_vec(),
        ),
    ];
    let plain = |m: PlainMessage| m.to_frame_bytes().unwrap();
    lines.push((
        "frame_evidence_request",
        plain(PlainMessage::EvidenceRequest(EvidenceRequest { nonce })),
    ));
    lines.push((
        "frame_evidence_response",
        plain(PlainMessage::EvidenceResponse(evidence.clone())),
    ));
    lines.push(("evidence_hash", evidence.hash().to_vec()));

    // The client's RNG stream: X25519 secret, then ML-KEM-768's d and z.
    let mut client_secrets = [0u8; 96];
    FixedRng::new(CLIENT_SEED).fill_bytes(&mut client_secrets);
    lines.push(("client_rng_bytes", client_secrets.to_vec()));
    let (handshake, open) = client_start(CLIENT_SEED);
    lines.push(("client_ephemeral_pub", open.client_ephemeral_pub.to_vec()));
    lines.push(("client_mlkem_pub", open.client_mlkem_pub.to_vec()));
    lines.push((
        "frame_session_open",
        plain(PlainMessage::SessionOpen(open.clone())),
    ));

    // The enclave's RNG stream: X25519 ephemeral secret, then ML-KEM's m.
    let mut server_secrets = [0u8; 64];
    FixedRng::new(SERVER_SEED).fill_bytes(&mut server_secrets);
    lines.push(("enclave_rng_bytes", server_secrets.to_vec()));
    let (mut server, accept) = server_accept(&open, SERVER_SEED);
    lines.push(("session_id", accept.session_id.to_vec()));
    lines.push((
        "enclave_ephemeral_pub",
        accept.enclave_ephemeral_pub.to_vec(),
    ));
    lines.push(("mlkem_ciphertext", accept.mlkem_ciphertext.to_vec()));

    // Recompute every input of the key schedule from the raw secrets.
    let client_x25519 = StaticSecret::from(<[u8; 32]>::try_from(&client_secrets[..32]).unwrap());
    let static_dh = client_x25519.diffie_hellman(&PublicKey::from(keys.x25519_public()));
    let ephemeral_dh = client_x25519.diffie_hellman(&PublicKey::from(accept.enclave_ephemeral_pub));
    let mut mlkem_rng = FixedRng::new(CLIENT_SEED);
    mlkem_rng.fill_bytes(&mut [0u8; 32]);
    let (dk, _) = MlKem768::generate(&mut mlkem_rng);
    let kem_secret: [u8; 32] = dk
        .decapsulate(&accept.mlkem_ciphertext.into())
        .unwrap()
        .into();
    lines.push(("static_dh", static_dh.as_bytes().to_vec()));
    lines.push(("ephemeral_dh", ephemeral_dh.as_bytes().to_vec()));
    lines.push(("mlkem_shared_secret", kem_secret.to_vec()));
    let th = transcript_hash(&evidence.hash(), &open, &accept);
    lines.push(("transcript_hash", th.to_vec()));
    lines.push(("accept_signing_bytes", accept_signing_bytes(&th)));
    lines.push(("accept_signature", accept.signature.to_vec()));
    lines.push((
        "frame_session_accept",
        plain(PlainMessage::SessionAccept(accept.clone())),
    ));
    let [c2s, s2c] = *session_keys(
        static_dh.as_bytes(),
        ephemeral_dh.as_bytes(),
        &kem_secret,
        &th,
    );
    lines.push(("key_c2s", c2s.to_vec()));
    lines.push(("key_s2c", s2c.to_vec()));
    let mut client = handshake.finish(&accept).unwrap();

    let request = request();
    lines.push((
        "sealed_request",
        client
            .seal_message(&SealedMessage::Request(request.clone()))
            .unwrap(),
    ));
    let receipt = golden_receipt(&evidence);
    lines.push(("output_hash", receipt.output_hash.to_vec()));
    lines.push(("receipt_signing_bytes", receipt.signing_bytes()));
    let signed = Signed::sign(receipt, keys.signing_key());
    lines.push(("receipt_signature", signed.signature.to_vec()));
    let names = ["sealed_chunk_0", "sealed_chunk_1", "sealed_end"];
    for (name, message) in names.into_iter().zip(server_messages(signed)) {
        lines.push((name, server.seal_message(&message).unwrap()));
    }
    lines.push((
        "frame_error",
        plain(PlainMessage::Error(ErrorMessage {
            code: ErrorCode::Overloaded,
            message: "too many sessions".into(),
        })),
    ));
    lines
}

fn render(lines: &[(&str, Vec<u8>)]) -> String {
    lines
        .iter()
        .map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes)))
        .collect()
}

fn read_golden() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(golden_path()).expect("golden transcript is checked in");
    text.lines()
        .map(|line| {
            let (name, hex) = line.split_once(' ').expect("`name hex` lines");
            (name.to_string(), hex::decode(hex).expect("hex"))
        })
        .collect()
}

fn golden(name: &str) -> Vec<u8> {
    read_golden()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing from the golden transcript"))
        .1
}

#[test]
fn transcript_matches_the_checked_in_bytes() {
    let fresh = transcript();
    if std::env::var_os("CHRYSALIS_BLESS").is_some() {
        std::fs::write(golden_path(), render(&fresh)).unwrap();
        return;
    }
    let checked_in = read_golden();
    let names: Vec<&str> = fresh.iter().map(|(n, _)| *n).collect();
    let golden_names: Vec<&str> = checked_in.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, golden_names, "transcript lines changed");
    for ((name, bytes), (_, expected)) in fresh.iter().zip(&checked_in) {
        assert_eq!(
            hex::encode(bytes),
            hex::encode(expected),
            "{name} differs from tests/golden/transcript_v1.hex: the wire format changed \
             (bump PROTOCOL_VERSION, then re-bless with CHRYSALIS_BLESS=1)"
        );
    }
}

/// Feeds the checked-in frames through a decoder, as one stream, and opens them.
fn decode_stream(names: &[&str]) -> Vec<Frame> {
    let wire: Vec<u8> = names.iter().flat_map(|n| golden(n)).collect();
    let mut decoder = FrameDecoder::new();
    let mut rest = &wire[..];
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut rest).unwrap() {
        frames.push(frame);
    }
    decoder.finish().unwrap();
    frames
}

#[test]
fn checked_in_frames_decode_to_the_expected_messages() {
    let keys = enclave_keys();
    let evidence = evidence(&keys);
    let plain = decode_stream(&[
        "frame_evidence_request",
        "frame_evidence_response",
        "frame_session_open",
    ]);
    assert_eq!(
        PlainMessage::from_frame(&plain[1]).unwrap(),
        PlainMessage::EvidenceResponse(evidence.clone())
    );
    let PlainMessage::SessionOpen(open) = PlainMessage::from_frame(&plain[2]).unwrap() else {
        panic!("third frame is not a session-open");
    };
    // The enclave, replaying its RNG, answers with the checked-in accept byte for byte.
    let (mut server, accept) = SealedChannel::server(
        &mut FixedRng::new(SERVER_SEED),
        &keys,
        &open,
        &evidence.hash(),
        common::SESSION_ID,
    )
    .unwrap();
    assert_eq!(
        PlainMessage::SessionAccept(accept)
            .to_frame_bytes()
            .unwrap(),
        golden("frame_session_accept")
    );
    let request = &decode_stream(&["sealed_request"])[0];
    assert_eq!(
        server.open_message(request).unwrap(),
        SealedMessage::Request(self::request())
    );
}

#[test]
fn the_client_finishes_the_checked_in_handshake_and_opens_the_answer() {
    let (handshake, open) = client_start(CLIENT_SEED);
    assert_eq!(
        PlainMessage::SessionOpen(open).to_frame_bytes().unwrap(),
        golden("frame_session_open")
    );
    let accept = &decode_stream(&["frame_session_accept"])[0];
    let PlainMessage::SessionAccept(accept) = PlainMessage::from_frame(accept).unwrap() else {
        panic!("frame_session_accept is not a session accept");
    };
    let mut client = handshake.finish(&accept).unwrap();
    let frames = decode_stream(&["sealed_chunk_0", "sealed_chunk_1", "sealed_end"]);
    let opened: Vec<SealedMessage> = frames
        .iter()
        .map(|f| client.open_message(f).unwrap())
        .collect();
    let keys = enclave_keys();
    let evidence = evidence(&keys);
    let receipt = Signed::sign(golden_receipt(&evidence), keys.signing_key());
    assert_eq!(opened, server_messages(receipt));
}

#[test]
fn checked_in_receipt_verifies_under_the_enclave_key() {
    let keys = enclave_keys();
    let evidence = evidence(&keys);
    let signing_bytes = golden("receipt_signing_bytes");
    let body = &signing_bytes[Receipt::DOMAIN.len() + 1..];
    let signed = Signed {
        body: Receipt::from_wire(body).unwrap(),
        signature: golden("receipt_signature").try_into().unwrap(),
    };
    let receipt = signed.verify(&evidence.ed25519_pub).unwrap();
    assert_eq!(receipt.request_hash, request().hash());
    assert_eq!(receipt.usage.completion_tokens, 7);
}

/// Runs in CI, which installs `.ci/requirements.txt` first; fails (never skips) when
/// python3 (or `$CHRYSALIS_PYTHON`) cannot import ML-KEM from `cryptography`.
#[test]
fn python_recomputes_the_transcript_independently() {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/check_transcript_v2.py");
    let python = std::env::var("CHRYSALIS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(golden_path())
        .output()
        .unwrap_or_else(|e| panic!("{python} could not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_transcript_v2.py failed (needs `cryptography` with ML-KEM: \
         `python3 -m pip install -r .ci/requirements.txt`)\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
