//! Golden transcript: fixed keys, nonces and RNG give exact bytes, checked in under
//! `tests/golden/transcript_v1.hex`, so any change of the wire format or the key
//! schedule fails here.
//!
//! To regenerate after a deliberate change (which must also bump `PROTOCOL_VERSION`):
//!
//! ```text
//! CHRYSALIS_BLESS=1 cargo test -p chrysalis-protocol --test golden
//! ```
//!
//! `tests/golden/check_transcript.py` recomputes the transcript's cryptography with
//! Python's `cryptography` package, independently of this crate (see the ignored test
//! below).

mod common;

use std::path::PathBuf;

use chrysalis_protocol::{
    session_keys, ChatMessage, ErrorCode, ErrorMessage, EvidenceRequest, FinishReason, Frame,
    FrameDecoder, InferenceRequest, PlainMessage, Prompt, Receipt, ResponseEnd, Role,
    SamplingParams, SealedChannel, SealedMessage, SessionAccept, Signable, Signed, StreamChunk,
    Usage, WireMessage,
};
use common::{enclave_keys, evidence, FixedRng};
use rand_core::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};

const CLIENT_RNG_SEED: u8 = 7;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transcript_v1.hex")
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

    let mut ephemeral = [0u8; 32];
    FixedRng::new(CLIENT_RNG_SEED).fill_bytes(&mut ephemeral);
    lines.push(("client_ephemeral_secret", ephemeral.to_vec()));
    let (mut client, open) = SealedChannel::client(
        &mut FixedRng::new(CLIENT_RNG_SEED),
        &keys.x25519_public(),
        &evidence.hash(),
    )
    .unwrap();
    let shared =
        StaticSecret::from(ephemeral).diffie_hellman(&PublicKey::from(keys.x25519_public()));
    let [c2s, s2c] = *session_keys(shared.as_bytes(), &open);
    lines.push(("key_c2s", c2s.to_vec()));
    lines.push(("key_s2c", s2c.to_vec()));
    lines.push((
        "frame_session_open",
        plain(PlainMessage::SessionOpen(open.clone())),
    ));
    lines.push((
        "frame_session_accept",
        plain(PlainMessage::SessionAccept(SessionAccept {
            session_id: [0x44; 16],
        })),
    ));

    let mut server = SealedChannel::server(&keys, &open, &evidence.hash()).unwrap();
    let request = request();
    lines.push((
        "sealed_request",
        client
            .seal_message(&SealedMessage::Request(request.clone()))
            .unwrap(),
    ));
    let receipt = Receipt {
        request_id: request.request_id,
        evidence_hash: evidence.hash(),
        model_root: evidence.model_root,
        request_hash: request.hash(),
        usage: Usage {
            prompt_tokens: 31,
            completion_tokens: 7,
        },
    };
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
    let mut server = SealedChannel::server(&keys, &open, &evidence.hash()).unwrap();
    let request = &decode_stream(&["sealed_request"])[0];
    assert_eq!(
        server.open_message(request).unwrap(),
        SealedMessage::Request(self::request())
    );
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

#[test]
#[ignore = "needs python3 with the `cryptography` package; run: cargo test -p chrysalis-protocol --test golden -- --ignored"]
fn python_recomputes_the_transcript_independently() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/check_transcript.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(golden_path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
