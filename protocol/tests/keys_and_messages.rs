//! Enclave keys, signed receipts, and the bounds every decoded message respects.

mod common;

use chrysalis_protocol::{
    session_keys, ChargeBoc, EnclaveKeys, ErrorCode, ErrorMessage, Evidence, Frame, FrameKind,
    InferenceRequest, PlainMessage, Prompt, ProtocolError, Receipt, SamplingParams, SealedChannel,
    Signable, Signed, Usage, WireMessage, ED25519_SEED_INFO, MAX_CERTS, MAX_ERROR_MESSAGE_LEN,
    X25519_SEED_INFO,
};
use common::{enclave_keys, evidence, FixedRng};
use hkdf::Hkdf;
use sha2::Sha256;

/// Every rendering of `secret` a `Debug` impl might produce.
fn renderings(secret: &[u8]) -> Vec<String> {
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        format!("{secret:?}"),
        format!("{:?}", &secret[..8])
            .trim_end_matches(']')
            .to_string(),
    ]
}

fn assert_hidden(debug: &str, secret: &[u8]) {
    for form in renderings(secret) {
        assert!(!debug.contains(&form), "secret leaked as {form} in {debug}");
    }
}

#[test]
fn debug_output_never_contains_secret_keys() {
    let seed = [0x11; 32];
    let keys = EnclaveKeys::from_seed(&seed);
    let hkdf = Hkdf::<Sha256>::new(None, &seed);
    let mut x_secret = [0u8; 32];
    let mut ed_secret = [0u8; 32];
    hkdf.expand(X25519_SEED_INFO, &mut x_secret).unwrap();
    hkdf.expand(ED25519_SEED_INFO, &mut ed_secret).unwrap();
    let shown = format!("{keys:?} {keys:#?}");
    assert!(
        shown.contains(&hex::encode(keys.x25519_public())),
        "{shown}"
    );
    for secret in [&x_secret[..], &ed_secret[..], &seed[..]] {
        assert_hidden(&shown, secret);
    }

    let (handshake, open) = common::client_start(common::CLIENT_SEED);
    let mut client_secrets = [0u8; 96];
    rand_core::RngCore::fill_bytes(&mut FixedRng::new(common::CLIENT_SEED), &mut client_secrets);
    let shown = format!("{handshake:?} {handshake:#?}");
    assert!(
        shown.contains(&hex::encode(open.client_ephemeral_pub)),
        "{shown}"
    );
    // The X25519 secret, and ML-KEM's d and z.
    for secret in client_secrets.chunks(32) {
        assert_hidden(&shown, secret);
    }
    let (server, accept) = common::server_accept(&open, common::SERVER_SEED);
    let client = handshake.finish(&accept).unwrap();
    let static_dh =
        x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(&client_secrets[..32]).unwrap())
            .diffie_hellman(&x25519_dalek::PublicKey::from(keys.x25519_public()));
    let mut server_secrets = [0u8; 64];
    rand_core::RngCore::fill_bytes(&mut FixedRng::new(common::SERVER_SEED), &mut server_secrets);
    let th = chrysalis_protocol::transcript_hash(&open.evidence_hash, &open, &accept);
    let shown = format!("{client:?} {server:#?}");
    assert!(
        shown.contains("Client") && shown.contains("Server"),
        "{shown}"
    );
    // The enclave's ephemeral secret and ML-KEM's m never show either; nor does a key
    // derived from the static DH.
    let session = session_keys(static_dh.as_bytes(), &[0; 32], &[0; 32], &th);
    for secret in [&session[0][..], &session[1][..], static_dh.as_bytes()]
        .into_iter()
        .chain(server_secrets.chunks(32))
    {
        assert_hidden(&shown, secret);
    }
}

#[test]
fn seeded_keys_are_reproducible_and_distinct() {
    let a = EnclaveKeys::from_seed(&[1; 32]);
    let b = EnclaveKeys::from_seed(&[1; 32]);
    let c = EnclaveKeys::from_seed(&[2; 32]);
    assert_eq!(a.x25519_public(), b.x25519_public());
    assert_eq!(a.ed25519_public(), b.ed25519_public());
    assert_ne!(a.x25519_public(), c.x25519_public());
    assert_ne!(a.ed25519_public(), c.ed25519_public());
    let random = EnclaveKeys::generate(&mut rand_core::OsRng);
    assert_ne!(random.x25519_public(), a.x25519_public());
}

fn receipt() -> Receipt {
    Receipt {
        request_id: 1,
        evidence_hash: [1; 32],
        model_root: [2; 32],
        request_hash: [3; 32],
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
        },
        output_hash: [4; 32],
    }
}

#[test]
fn receipts_verify_only_unchanged_and_under_the_signer() {
    let keys = enclave_keys();
    let signed = Signed::sign(receipt(), keys.signing_key());
    assert_eq!(signed.verify(&keys.ed25519_public()).unwrap(), &receipt());

    let mut inflated = signed.clone();
    inflated.body.usage.completion_tokens += 1;
    let err = inflated.verify(&keys.ed25519_public()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::BadSignature {
                what: "receipt",
                ..
            }
        ),
        "{err:?}"
    );

    let other = EnclaveKeys::from_seed(&[9; 32]);
    let err = signed.verify(&other.ed25519_public()).unwrap_err();
    assert!(matches!(err, ProtocolError::BadSignature { .. }), "{err:?}");

    let mut forged = signed.clone();
    forged.signature[63] ^= 0x10;
    assert!(forged.verify(&keys.ed25519_public()).is_err());
}

#[test]
fn signed_bytes_are_domain_separated() {
    let bytes = receipt().signing_bytes();
    assert!(bytes.starts_with(b"chrysalis/v2/receipt\0"));
    assert_eq!(
        &bytes[Receipt::DOMAIN.len() + 1..],
        &receipt().to_wire()[..]
    );
}

#[test]
fn evidence_over_its_bounds_is_refused() {
    let keys = enclave_keys();
    let mut too_many = evidence(&keys);
    too_many.cert_chain = vec![vec![0; 4]; MAX_CERTS + 1];
    let err = Evidence::from_wire(&too_many.to_wire()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FieldTooLong { len: 5, max: 4, .. }),
        "{err:?}"
    );
    let mut long_id = evidence(&keys);
    long_id.manifest_id = "x".repeat(129);
    let err = Evidence::from_wire(&long_id.to_wire()).unwrap_err();
    assert!(matches!(err, ProtocolError::FieldTooLong { .. }), "{err:?}");
}

#[test]
fn bounds_are_checked_inside_enclosing_messages() {
    let long = PlainMessage::Error(ErrorMessage {
        code: ErrorCode::Internal,
        message: "e".repeat(MAX_ERROR_MESSAGE_LEN + 1),
    });
    let frame = long.to_frame().unwrap();
    let err = PlainMessage::from_frame(&frame).unwrap_err();
    assert!(matches!(err, ProtocolError::FieldTooLong { .. }), "{err:?}");

    let charge = PlainMessage::Charge(ChargeBoc {
        boc: vec![0; chrysalis_protocol::ton::MAX_SIGNED_CHARGE_BOC + 1],
    });
    let err = PlainMessage::from_frame(&charge.to_frame().unwrap()).unwrap_err();
    assert!(matches!(err, ProtocolError::FieldTooLong { .. }), "{err:?}");
}

#[test]
fn messages_refuse_trailing_bytes_and_unknown_variants() {
    let mut bytes = receipt().to_wire();
    bytes.push(0);
    let err = Receipt::from_wire(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::TrailingBytes {
                what: "receipt",
                extra: 1
            }
        ),
        "{err:?}"
    );
    let err = PlainMessage::from_wire(&[0x7f]).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Malformed {
                what: "plain message",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_huge_length_prefix_fails_without_reading_past_the_input() {
    // Variant 5 (Error), code 0, then a string length of 2^32 - 1 with 3 bytes behind it.
    let bytes = [5u8, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a', b'b', b'c'];
    let err = PlainMessage::from_wire(&bytes).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { .. }), "{err:?}");
}

#[test]
fn nonsense_sampling_parameters_are_refused() {
    for (temperature, top_p) in [(f32::NAN, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, 1.5)] {
        let request = InferenceRequest {
            request_id: 0,
            prompt: Prompt::Text("hi".into()),
            max_tokens: 1,
            sampling: SamplingParams {
                temperature,
                top_p,
                ..SamplingParams::GREEDY
            },
            stream: false,
        };
        let err = InferenceRequest::from_wire(&request.to_wire()).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidValue { .. }), "{err:?}");
    }
}

#[test]
fn plain_and_sealed_frames_are_not_interchangeable() {
    let sealed = Frame::new(FrameKind::Sealed, 0, vec![0; 20]).unwrap();
    let err = PlainMessage::from_frame(&sealed).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::UnexpectedFrameKind {
                found: "sealed",
                expected: "plain"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn report_data_binds_every_input() {
    let base = chrysalis_protocol::report_data(&[1; 32], &[2; 32], &[3; 32], &[4; 32]);
    let variants = [
        chrysalis_protocol::report_data(&[9; 32], &[2; 32], &[3; 32], &[4; 32]),
        chrysalis_protocol::report_data(&[1; 32], &[9; 32], &[3; 32], &[4; 32]),
        chrysalis_protocol::report_data(&[1; 32], &[2; 32], &[9; 32], &[4; 32]),
        chrysalis_protocol::report_data(&[1; 32], &[2; 32], &[3; 32], &[9; 32]),
    ];
    for changed in variants {
        assert_ne!(changed, base);
    }
}

#[test]
fn sessions_need_the_enclave_static_key() {
    // An impostor holding another static key cannot sign as the evidence's Ed25519 key;
    // even if it could, its static DH differs. Here it signs with its own key: refused.
    let (handshake, open) = common::client_start(3);
    let impostor = EnclaveKeys::from_seed(&[0x99; 32]);
    let hash = evidence(&enclave_keys()).hash();
    let (_, accept) =
        SealedChannel::server(&mut FixedRng::new(9), &impostor, &open, &hash, [0; 16]).unwrap();
    assert!(matches!(
        handshake.finish(&accept).unwrap_err(),
        ProtocolError::BadSignature {
            what: "session accept",
            ..
        }
    ));
}
