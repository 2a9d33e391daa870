//! The v2 handshake against a hostile network: every bit flip of the session-open and
//! of the accept is refused, a replayed session-open gets no usable session, a stolen
//! static key opens no recorded session, and untrusted handshake bytes never panic.

mod common;

use chrysalis_protocol::{
    session_keys, transcript_hash, ClientHandshake, Frame, PlainMessage, ProtocolError,
    SealedChannel, SessionAccept, SessionOpen, WireMessage, C2S_INFO, HEADER_LEN,
};
use common::{
    channel_pair, client_start, enclave_keys, evidence, server_accept, FixedRng, CLIENT_SEED,
    SERVER_SEED, SESSION_ID,
};
use ml_kem::KemCore;
use proptest::prelude::*;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

/// What the enclave makes of session-open frame bytes: its accept and channel, or why
/// it refused.
fn enclave_answers(frame: &[u8]) -> Result<(SealedChannel, SessionAccept), ProtocolError> {
    let keys = enclave_keys();
    let issued = evidence(&keys).hash();
    let message = PlainMessage::from_frame(&Frame::decode(frame)?)?;
    let PlainMessage::SessionOpen(open) = message else {
        return Err(ProtocolError::UnexpectedFrameKind {
            found: "other plain message",
            expected: "session open",
        });
    };
    SealedChannel::server(
        &mut FixedRng::new(SERVER_SEED),
        &keys,
        &open,
        &issued,
        SESSION_ID,
    )
}

/// What the client makes of accept frame bytes, having sent `handshake`'s open.
fn client_finishes(
    handshake: ClientHandshake,
    frame: &[u8],
) -> Result<SealedChannel, ProtocolError> {
    let message = PlainMessage::from_frame(&Frame::decode(frame)?)?;
    let PlainMessage::SessionAccept(accept) = message else {
        return Err(ProtocolError::UnexpectedFrameKind {
            found: "other plain message",
            expected: "session accept",
        });
    };
    handshake.finish(&accept)
}

#[test]
fn every_bit_flip_of_the_session_open_is_refused() {
    let (_, open) = client_start(CLIENT_SEED);
    let frame = PlainMessage::SessionOpen(open).to_frame_bytes().unwrap();
    // Unflipped, the handshake completes: the refusals below come from the flips.
    let (_, accept) = enclave_answers(&frame).unwrap();
    let (handshake, _) = client_start(CLIENT_SEED);
    handshake.finish(&accept).unwrap();

    let (mut by_enclave, mut by_client) = (0, 0);
    for bit in 0..frame.len() * 8 {
        let tampered = flip(&frame, bit);
        match enclave_answers(&tampered) {
            Err(_) => by_enclave += 1,
            Ok((_, accept)) => {
                // The enclave signed a transcript with the tampered open; the client,
                // which hashes the open it sent, refuses it before deriving a key.
                let (handshake, _) = client_start(CLIENT_SEED);
                let err = handshake.finish(&accept).map(|_| ()).unwrap_err();
                assert!(
                    matches!(err, ProtocolError::BadSignature { .. }),
                    "bit {bit}: {err:?}"
                );
                by_client += 1;
            }
        }
    }
    assert_eq!(by_enclave + by_client, frame.len() * 8);
    // Header and evidence-hash flips are refused by the enclave, key flips by the
    // client (most ML-KEM key flips stay canonical).
    assert!(by_enclave >= (HEADER_LEN + 1 + 32) * 8, "{by_enclave}");
    assert!(by_client > 0, "{by_client}");
}

#[test]
fn every_bit_flip_of_the_accept_is_refused() {
    let (_, open) = client_start(CLIENT_SEED);
    let (_, accept) = server_accept(&open, SERVER_SEED);
    let frame = PlainMessage::SessionAccept(accept)
        .to_frame_bytes()
        .unwrap();
    let (handshake, _) = client_start(CLIENT_SEED);
    client_finishes(handshake, &frame).unwrap();
    for bit in 0..frame.len() * 8 {
        let (handshake, _) = client_start(CLIENT_SEED);
        let result = client_finishes(handshake, &flip(&frame, bit));
        assert!(result.is_err(), "flip of accept bit {bit} was accepted");
    }
}

#[test]
fn a_bad_accept_signature_is_a_named_error() {
    let (handshake, open) = client_start(CLIENT_SEED);
    let (_, mut accept) = server_accept(&open, SERVER_SEED);
    accept.signature[10] ^= 0x20;
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
    let text = err.to_string();
    assert!(
        text.contains("session accept signature does not verify")
            && text.contains(&hex::encode(evidence(&enclave_keys()).ed25519_pub)),
        "{text}"
    );
}

#[test]
fn a_replayed_session_open_gets_a_fresh_session_nobody_else_can_use() {
    let keys = enclave_keys();
    let issued = evidence(&keys).hash();
    let (handshake, open) = client_start(CLIENT_SEED);
    let (mut first_server, first_accept) =
        SealedChannel::server(&mut rand_core::OsRng, &keys, &open, &issued, SESSION_ID).unwrap();
    let mut client = handshake.finish(&first_accept).unwrap();
    let recorded_request = client.seal(b"my secret prompt").unwrap();
    assert_eq!(
        first_server.open_bytes(&recorded_request).unwrap(),
        b"my secret prompt"
    );

    // A replayer sends the recorded session-open again (the enclave's single-use
    // evidence check aside): the enclave answers with a fresh share and ciphertext.
    let (mut second_server, second_accept) =
        SealedChannel::server(&mut rand_core::OsRng, &keys, &open, &issued, SESSION_ID).unwrap();
    assert_ne!(
        first_accept.enclave_ephemeral_pub,
        second_accept.enclave_ephemeral_pub
    );
    assert_ne!(
        first_accept.mlkem_ciphertext,
        second_accept.mlkem_ciphertext
    );
    // The second session cannot open the first session's traffic...
    let err = second_server.open_bytes(&recorded_request).unwrap_err();
    assert!(
        matches!(err, ProtocolError::AuthenticationFailed),
        "{err:?}"
    );
    // ...and its answers are sealed under keys the replayer (who has no client
    // ephemeral secrets) cannot compute: the original client cannot open them either.
    let (mut fresh_server, _) =
        SealedChannel::server(&mut rand_core::OsRng, &keys, &open, &issued, SESSION_ID).unwrap();
    let reply = fresh_server.seal(b"answer").unwrap();
    assert!(matches!(
        client.open_bytes(&reply).unwrap_err(),
        ProtocolError::AuthenticationFailed
    ));
}

#[test]
fn a_stolen_static_key_opens_no_recorded_session() {
    // An attacker records a whole session, then steals the enclave's long-lived keys.
    let keys = enclave_keys();
    let (mut client, mut server, open, accept) = channel_pair();
    let recorded = client.seal(b"what the client asked").unwrap();
    assert!(server.open_bytes(&recorded).is_ok());

    // With the static secret it computes the static DH and the transcript hash...
    let seed_hkdf = hkdf::Hkdf::<Sha256>::new(None, &[0x11; 32]);
    let mut stolen = [0u8; 32];
    seed_hkdf
        .expand(chrysalis_protocol::X25519_SEED_INFO, &mut stolen)
        .unwrap();
    let stolen = StaticSecret::from(stolen);
    assert_eq!(PublicKey::from(&stolen).to_bytes(), keys.x25519_public());
    let static_dh = stolen.diffie_hellman(&PublicKey::from(open.client_ephemeral_pub));
    let th = transcript_hash(&open.evidence_hash, &open, &accept);
    // ...but not the ephemeral DH (two secrets that died with the session) nor the KEM
    // secret. Its best guesses open nothing, and neither does the v1 schedule.
    let guesses = [
        *session_keys(static_dh.as_bytes(), &[0; 32], &[0; 32], &th),
        *session_keys(static_dh.as_bytes(), static_dh.as_bytes(), &[0; 32], &th),
        v1_keys(static_dh.as_bytes(), &open),
    ];
    for [c2s, _] in guesses {
        assert!(open_with_key(&c2s, &recorded).is_none());
    }
}

/// The v1 schedule: HKDF(salt = SHA-256(evidence_hash ‖ client_pub), ikm = static DH).
fn v1_keys(shared: &[u8; 32], open: &SessionOpen) -> [[u8; 32]; 2] {
    use sha2::Digest;
    let salt: [u8; 32] = Sha256::new()
        .chain_update(open.evidence_hash)
        .chain_update(open.client_ephemeral_pub)
        .finalize()
        .into();
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut keys = [[0u8; 32]; 2];
    hkdf.expand(b"chrysalis/v1/c2s", &mut keys[0]).unwrap();
    hkdf.expand(b"chrysalis/v1/s2c", &mut keys[1]).unwrap();
    keys
}

/// Opens a sealed frame with a raw AES-256-GCM key as docs/protocol.md describes.
fn open_with_key(key: &[u8; 32], frame: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm::Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&frame[8..16]);
    cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &frame[HEADER_LEN..],
                aad: &frame[..HEADER_LEN],
            },
        )
        .ok()
}

#[test]
fn the_documented_schedule_opens_the_first_frame() {
    // Raw keys from the documented schedule (session_keys over the two DH results and
    // the KEM secret, salted with the transcript hash) open what the channel sealed;
    // leaving out any one of the three secrets opens nothing.
    let (mut client, _, open, accept) = channel_pair();
    let mut rng = FixedRng::new(CLIENT_SEED);
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rng, &mut secret);
    let (dk, _) = ml_kem::MlKem768::generate(&mut rng);
    let kem: [u8; 32] = ml_kem::kem::Decapsulate::decapsulate(&dk, &accept.mlkem_ciphertext.into())
        .unwrap()
        .into();
    let x = StaticSecret::from(secret);
    let static_dh = *x
        .diffie_hellman(&PublicKey::from(enclave_keys().x25519_public()))
        .as_bytes();
    let ephemeral_dh = *x
        .diffie_hellman(&PublicKey::from(accept.enclave_ephemeral_pub))
        .as_bytes();
    let th = transcript_hash(&open.evidence_hash, &open, &accept);
    let frame = client.seal(b"hello").unwrap();
    let [c2s, _] = *session_keys(&static_dh, &ephemeral_dh, &kem, &th);
    assert_eq!(open_with_key(&c2s, &frame).unwrap(), b"hello");
    for (s, e, k) in [
        ([0; 32], ephemeral_dh, kem),
        (static_dh, [0; 32], kem),
        (static_dh, ephemeral_dh, [0; 32]),
    ] {
        let [c2s, _] = *session_keys(&s, &e, &k, &th);
        assert!(open_with_key(&c2s, &frame).is_none());
    }
    assert_eq!(C2S_INFO, b"chrysalis/v2/c2s");
}

#[test]
fn handshake_messages_have_their_documented_sizes() {
    let (_, _, open, accept) = channel_pair();
    assert_eq!(open.to_wire().len(), 32 + 1184 + 32);
    assert_eq!(accept.to_wire().len(), 16 + 32 + 1088 + 64);
    // In a frame: header, one discriminant byte, the message.
    let frame = PlainMessage::SessionOpen(open).to_frame_bytes().unwrap();
    assert_eq!((frame.len(), frame[HEADER_LEN]), (HEADER_LEN + 1 + 1248, 2));
    let frame = PlainMessage::SessionAccept(accept)
        .to_frame_bytes()
        .unwrap();
    assert_eq!((frame.len(), frame[HEADER_LEN]), (HEADER_LEN + 1 + 1200, 3));
}

#[test]
fn short_and_long_handshake_messages_are_refused() {
    let (_, _, open, accept) = channel_pair();
    let open_bytes = open.to_wire();
    let accept_bytes = accept.to_wire();
    for cut in [0, 1, 31, 32, 1000, open_bytes.len() - 1] {
        assert!(SessionOpen::from_wire(&open_bytes[..cut]).is_err(), "{cut}");
    }
    for cut in [0, 16, 48, 1136, accept_bytes.len() - 1] {
        assert!(
            SessionAccept::from_wire(&accept_bytes[..cut]).is_err(),
            "{cut}"
        );
    }
    let mut long = open_bytes.clone();
    long.push(0);
    assert!(matches!(
        SessionOpen::from_wire(&long).unwrap_err(),
        ProtocolError::TrailingBytes { extra: 1, .. }
    ));
    let mut long = accept_bytes.clone();
    long.push(0);
    assert!(matches!(
        SessionAccept::from_wire(&long).unwrap_err(),
        ProtocolError::TrailingBytes { extra: 1, .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn untrusted_session_opens_never_panic_the_enclave(
        bytes in proptest::collection::vec(any::<u8>(), 1248),
    ) {
        // Any 1248 bytes decode to a session-open; the handshake then refuses or
        // answers, but never panics.
        let open = SessionOpen::from_wire(&bytes).unwrap();
        let keys = enclave_keys();
        let _ = SealedChannel::server(
            &mut FixedRng::new(1),
            &keys,
            &open,
            &open.evidence_hash,
            SESSION_ID,
        );
    }

    #[test]
    fn untrusted_accepts_never_panic_the_client(
        bytes in proptest::collection::vec(any::<u8>(), 1200),
    ) {
        let accept = SessionAccept::from_wire(&bytes).unwrap();
        let (handshake, _) = client_start(CLIENT_SEED);
        prop_assert!(handshake.finish(&accept).is_err());
    }

    #[test]
    fn random_plain_bodies_never_panic_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2600),
        discriminant in 0u8..12,
    ) {
        let mut body = vec![discriminant];
        body.extend_from_slice(&bytes);
        let _ = PlainMessage::from_wire(&body);
    }
}
