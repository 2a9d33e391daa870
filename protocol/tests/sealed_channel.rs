//! The sealed channel: round trips, and every kind of tampering refused with its own
//! error.

mod common;

use chrysalis_protocol::{
    ChannelRole, ChatMessage, Frame, FrameKind, InferenceRequest, Prompt, ProtocolError, Role,
    SamplingParams, SealedChannel, SealedMessage, HEADER_LEN, MAX_FRAME_LEN, MAX_PLAINTEXT_LEN,
    PROTOCOL_VERSION,
};
use common::{channel_pair, client_start, enclave_keys, evidence, FixedRng};

#[test]
fn client_and_server_talk_both_ways() {
    let (mut client, mut server, ..) = channel_pair();
    assert_eq!(client.role(), ChannelRole::Client);
    for round in 0..3u8 {
        let question = vec![round; 10 + round as usize];
        let frame = client.seal(&question).unwrap();
        assert_eq!(server.open_bytes(&frame).unwrap(), question);
        let answer = vec![round ^ 0xff; 100];
        let frame = server.seal(&answer).unwrap();
        assert_eq!(client.open_bytes(&frame).unwrap(), answer);
    }
}

#[test]
fn a_client_cannot_open_its_own_frames() {
    // Each direction has its own key: a reflected frame fails authentication.
    let (mut client, ..) = channel_pair();
    let frame = client.seal(b"hello").unwrap();
    let err = client.open_bytes(&frame).unwrap_err();
    assert!(matches!(err, ProtocolError::AuthenticationFailed), "{err}");
}

/// A fresh pair, and the client's first sealed frame carrying `payload`.
fn first_frame(payload: &[u8]) -> (SealedChannel, Vec<u8>) {
    let (mut client, server, ..) = channel_pair();
    let frame = client.seal(payload).unwrap();
    (server, frame)
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let (mut server, frame) = first_frame(b"the capital of France");
    for bit in 0..frame.len() * 8 {
        let mut tampered = frame.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        let (mut fresh, _) = first_frame(b"the capital of France");
        let result = fresh.open_bytes(&tampered);
        assert!(result.is_err(), "flip of bit {bit} was accepted");
        assert!(
            fresh.is_poisoned(),
            "flip of bit {bit} left the session open"
        );
    }
    // The untampered frame still opens: the rejections came from the flips.
    assert_eq!(server.open_bytes(&frame).unwrap(), b"the capital of France");
}

#[test]
fn body_flips_fail_authentication_and_header_flips_fail_parsing_or_counter() {
    let (_, frame) = first_frame(b"x");
    let flip = |byte: usize| {
        let mut tampered = frame.clone();
        tampered[byte] ^= 0x01;
        let (mut server, _) = first_frame(b"x");
        server.open_bytes(&tampered).unwrap_err()
    };
    assert!(matches!(
        flip(HEADER_LEN),
        ProtocolError::AuthenticationFailed
    ));
    assert!(matches!(
        flip(frame.len() - 1),
        ProtocolError::AuthenticationFailed
    ));
    assert!(matches!(
        flip(5),
        ProtocolError::UnknownVersion { found: 3, .. }
    ));
    assert!(matches!(
        flip(6),
        ProtocolError::UnknownFrameKind { found: 3 }
    ));
    assert!(matches!(flip(7), ProtocolError::NonZeroReserved { .. }));
    assert!(matches!(
        flip(15),
        ProtocolError::Reordered {
            counter: 1,
            expected: 0
        }
    ));
    assert!(matches!(
        flip(3),
        ProtocolError::Truncated { .. } | ProtocolError::TrailingBytes { .. }
    ));
}

#[test]
fn a_replayed_frame_is_refused_as_a_replay() {
    let (mut client, mut server, ..) = channel_pair();
    let first = client.seal(b"one").unwrap();
    server.open_bytes(&first).unwrap();
    let err = server.open_bytes(&first).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Replayed {
                counter: 0,
                expected: 1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_reordered_frame_is_refused_as_a_reorder() {
    let (mut client, mut server, ..) = channel_pair();
    let _first = client.seal(b"one").unwrap();
    let second = client.seal(b"two").unwrap();
    let err = server.open_bytes(&second).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Reordered {
                counter: 1,
                expected: 0
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_truncated_frame_is_refused_as_truncated() {
    let (mut server, frame) = first_frame(b"hello");
    let err = server.open_bytes(&frame[..frame.len() - 1]).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Truncated {
                what: "frame body",
                needed: 21,
                found: 20
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_sealed_body_shorter_than_the_tag_is_refused_as_truncated() {
    let (mut server, _) = first_frame(b"");
    let frame = Frame::new(FrameKind::Sealed, 0, vec![0; 15]).unwrap();
    let err = server.open(&frame).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Truncated {
                what: "sealed body",
                needed: 16,
                found: 15
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_frame_over_the_maximum_is_refused_as_too_large() {
    let (mut server, frame) = first_frame(b"hello");
    let mut huge = frame.clone();
    let announced = (MAX_FRAME_LEN - HEADER_LEN + 1) as u32;
    huge[..4].copy_from_slice(&announced.to_be_bytes());
    let err = server.open_bytes(&huge).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, max } if len == MAX_FRAME_LEN as u64 + 1 && max == MAX_FRAME_LEN),
        "{err:?}"
    );
}

#[test]
fn an_unknown_version_is_refused_as_unknown_version() {
    let (mut server, frame) = first_frame(b"hello");
    let mut future = frame.clone();
    future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let err = server.open_bytes(&future).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::UnknownVersion {
                found: 3,
                expected: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_plain_frame_is_not_opened_as_sealed() {
    let (mut server, _) = first_frame(b"");
    let frame = Frame::new(FrameKind::Plain, 0, vec![0; 32]).unwrap();
    let err = server.open(&frame).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::UnexpectedFrameKind {
                found: "plain",
                expected: "sealed"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn after_any_failure_the_session_refuses_everything() {
    let (mut client, mut server, ..) = channel_pair();
    let good = client.seal(b"one").unwrap();
    let mut bad = good.clone();
    bad[HEADER_LEN] ^= 0x80;
    assert!(matches!(
        server.open_bytes(&bad).unwrap_err(),
        ProtocolError::AuthenticationFailed
    ));
    // The genuine frame, with the right counter, is now refused too.
    let err = server.open_bytes(&good).unwrap_err();
    assert!(
        matches!(err, ProtocolError::Poisoned { what: "session" }),
        "{err:?}"
    );
    assert!(matches!(
        server.seal(b"reply").unwrap_err(),
        ProtocolError::Poisoned { .. }
    ));
}

#[test]
fn counters_never_repeat_across_frames() {
    let (mut client, ..) = channel_pair();
    let counters: Vec<u64> = (0..5)
        .map(|_| {
            let bytes = client.seal(b"same plaintext").unwrap();
            *Frame::decode(&bytes).unwrap().header()
        })
        .map(|header| header.counter)
        .collect();
    assert_eq!(counters, [0, 1, 2, 3, 4]);
    // Same plaintext, different nonces: the ciphertexts differ.
    let a = client.seal(b"same plaintext").unwrap();
    let b = client.seal(b"same plaintext").unwrap();
    assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
}

#[test]
fn plaintexts_over_the_frame_limit_are_refused_before_sealing() {
    let (mut client, ..) = channel_pair();
    let too_big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
    let err = client.seal(&too_big).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { .. }),
        "{err:?}"
    );
    // The largest allowed plaintext seals into exactly MAX_FRAME_LEN bytes.
    let (mut client, mut server, ..) = channel_pair();
    let biggest = vec![7u8; MAX_PLAINTEXT_LEN];
    let frame = client.seal(&biggest).unwrap();
    assert_eq!(frame.len(), MAX_FRAME_LEN);
    assert_eq!(server.open_bytes(&frame).unwrap(), biggest);
}

#[test]
fn the_server_refuses_a_session_for_other_evidence() {
    let (_, open) = client_start(1);
    let keys = enclave_keys();
    let err = SealedChannel::server(&mut FixedRng::new(9), &keys, &open, &[0u8; 32], [0; 16])
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::EvidenceMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn sessions_under_different_evidence_do_not_interoperate() {
    // The client verified evidence A; the session-open is rewritten to name B and the
    // enclave (wrongly) accepts it as B: the signed transcripts differ, so the client
    // refuses the accept before deriving anything.
    let keys = enclave_keys();
    let (handshake, mut open) = client_start(2);
    open.evidence_hash = [0xbb; 32];
    let (_, accept) =
        SealedChannel::server(&mut FixedRng::new(9), &keys, &open, &[0xbb; 32], [0; 16]).unwrap();
    let err = handshake.finish(&accept).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::BadSignature {
                what: "session accept",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn low_order_client_keys_are_refused() {
    let keys = enclave_keys();
    let hash = evidence(&keys).hash();
    // The all-zero point has small order: X25519 with it is all zeros.
    let (_, mut open) = client_start(3);
    open.client_ephemeral_pub = [0; 32];
    let err =
        SealedChannel::server(&mut FixedRng::new(9), &keys, &open, &hash, [0; 16]).unwrap_err();
    assert!(matches!(err, ProtocolError::WeakPublicKey), "{err:?}");
}

#[test]
fn non_canonical_mlkem_keys_are_refused() {
    // 0xff bytes decode to 12-bit coefficients of 4095, above q = 3329: FIPS 203's
    // encapsulation-key check must refuse them.
    let keys = enclave_keys();
    let hash = evidence(&keys).hash();
    let (_, mut open) = client_start(4);
    open.client_mlkem_pub[..3].copy_from_slice(&[0xff; 3]);
    let err =
        SealedChannel::server(&mut FixedRng::new(9), &keys, &open, &hash, [0; 16]).unwrap_err();
    assert!(matches!(err, ProtocolError::InvalidKemKey), "{err:?}");
    assert!(err.to_string().contains("3329"), "{err}");
}

#[test]
fn typed_messages_round_trip_through_the_seal() {
    let (mut client, mut server, ..) = channel_pair();
    let request = SealedMessage::Request(InferenceRequest {
        request_id: 9,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: "What is the capital of France?".into(),
        }]),
        max_tokens: 16,
        sampling: SamplingParams::GREEDY,
        stream: true,
    });
    let bytes = client.seal_message(&request).unwrap();
    let frame = Frame::decode(&bytes).unwrap();
    assert_eq!(server.open_message(&frame).unwrap(), request);
}
