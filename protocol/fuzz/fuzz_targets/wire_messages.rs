//! Fuzzes every decoder that a peer's bytes reach in protocol v2, from the frame
//! header to the handshake, with fixed keys so the fuzzer can reach past the
//! signature checks.
//!
//! Run (nightly; `cargo install cargo-fuzz` once), from `protocol/fuzz/`:
//!
//! ```text
//! cargo +nightly fuzz run wire_messages -- -max_total_time=300
//! ```
//!
//! Input layout: byte 0 picks the chunk size the stream is cut into (1..=256) and,
//! in its low 3 bits, which handshake check runs; the rest is the payload. Every input
//! goes through:
//!
//! - the incremental `FrameDecoder` (chunked and in one piece), `Envelope`,
//!   `ForeignFrame`, `Frame::decode`; every frame re-encodes to the exact bytes it came
//!   from;
//! - `PlainMessage`, `SealedMessage` and the handshake messages' own decoders, on each
//!   frame's body and on the raw payload, then the TON BOC parsers behind the billing
//!   messages. A decoded value re-encodes, decodes back to itself, and its encoding is
//!   never longer than the input (postcard accepts over-long varints, `docs/protocol.md`
//!   §3, so the check is on values, not bytes);
//!
//! then one handshake check, with the enclave key of the golden transcript
//! (`tests/golden/transcript_v2.hex`); a payload that is exactly one frame is read as
//! its body by the accept and open decoders:
//!
//! - 0, 1: the client verifies the payload as a `SessionAccept` to the golden
//!   session-open: it succeeds exactly when the accept is the golden one;
//! - 2, 3: the payload gives the accept's fields and the harness signs them with the
//!   enclave key, as a compromised enclave could: the client's DH and ML-KEM paths run
//!   on arbitrary values and refuse only low-order X25519 shares;
//! - 4, 5: the enclave answers the payload as a `SessionOpen`: it refuses only
//!   evidence it did not issue, a non-canonical ML-KEM key or a low-order X25519 key,
//!   and an accept it signs verifies; the golden open gets the golden accept;
//! - 6, 7: an established golden session opens every payload frame on both sides: only
//!   the golden sealed frames open, and a failure closes the channel.
#![no_main]

use std::sync::OnceLock;

use chrysalis_protocol::billing::{Bill, ChannelBind, ChannelStatus};
use chrysalis_protocol::ton::{ChannelConfig, SignedCharge};
use chrysalis_protocol::{
    accept_signing_bytes, transcript_hash, ClientHandshake, EnclaveKeys, Envelope, Evidence,
    ForeignFrame, Frame, FrameDecoder, PlainMessage, ProtocolError, Receipt, SealedChannel,
    SealedMessage, SessionAccept, SessionOpen, WireMessage, MAX_FRAME_LEN, MLKEM_CIPHERTEXT_LEN,
    MLKEM_ENCAPSULATION_KEY_LEN, PROTOCOL_VERSION,
};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};

/// The golden transcript, `name hex` per line.
const GOLDEN: &str = include_str!("../../tests/golden/transcript_v2.hex");

/// What every input shares, decoded once from the golden transcript.
struct Golden {
    keys: EnclaveKeys,
    evidence: Evidence,
    client_rng: Vec<u8>,
    enclave_rng: Vec<u8>,
    session_id: [u8; 16],
    open: SessionOpen,
    accept: SessionAccept,
    sealed_request: Vec<u8>,
    sealed_to_client: Vec<Vec<u8>>,
}

fn golden_bytes(name: &str) -> Vec<u8> {
    let line = GOLDEN
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from the golden transcript"));
    hex::decode(line).expect("golden hex")
}

fn golden_plain(name: &str) -> PlainMessage {
    PlainMessage::from_frame(&Frame::decode(&golden_bytes(name)).expect("golden frame"))
        .expect("golden plain message")
}

fn golden() -> &'static Golden {
    static GOLDEN_CELL: OnceLock<Golden> = OnceLock::new();
    GOLDEN_CELL.get_or_init(|| {
        let seed: [u8; 32] = golden_bytes("enclave_seed").try_into().expect("32 bytes");
        let PlainMessage::EvidenceResponse(evidence) = golden_plain("frame_evidence_response")
        else {
            panic!("golden evidence response");
        };
        let PlainMessage::SessionOpen(open) = golden_plain("frame_session_open") else {
            panic!("golden session open");
        };
        let PlainMessage::SessionAccept(accept) = golden_plain("frame_session_accept") else {
            panic!("golden session accept");
        };
        Golden {
            keys: EnclaveKeys::from_seed(&seed),
            evidence,
            client_rng: golden_bytes("client_rng_bytes"),
            enclave_rng: golden_bytes("enclave_rng_bytes"),
            session_id: golden_bytes("session_id").try_into().expect("16 bytes"),
            open,
            accept,
            sealed_request: golden_bytes("sealed_request"),
            sealed_to_client: ["sealed_chunk_0", "sealed_chunk_1", "sealed_end"]
                .map(golden_bytes)
                .to_vec(),
        }
    })
}

/// Replays fixed bytes as randomness, so the handshakes are the golden ones.
struct ReplayRng<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ReplayRng<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
}

impl RngCore for ReplayRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // The golden handshakes draw exactly the recorded bytes; cycling is only a
        // fallback that keeps the harness total.
        for byte in dest {
            *byte = self.bytes[self.at % self.bytes.len()];
            self.at += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ReplayRng<'_> {}

/// Decodes `stream` fed in `chunk`-byte pieces; returns frames, bytes used, and
/// whether the decoder failed.
fn decode_frames(stream: &[u8], chunk: usize) -> (Vec<Frame>, usize, bool) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut used = 0;
    for piece in stream.chunks(chunk) {
        let mut rest = piece;
        loop {
            match decoder.decode(&mut rest) {
                Ok(Some(frame)) => {
                    used += frame.to_bytes().len();
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, used, true),
            }
        }
    }
    (frames, used, false)
}

/// Frames re-encode to exactly their bytes, and chunking changes nothing.
fn check_frames(stream: &[u8], chunk: usize) -> Vec<Frame> {
    let (frames, used, failed) = decode_frames(stream, chunk);
    assert!(used <= stream.len());
    let mut offset = 0;
    for frame in &frames {
        let bytes = frame.to_bytes();
        assert!(bytes.len() <= MAX_FRAME_LEN);
        assert_eq!(&stream[offset..offset + bytes.len()], &bytes[..]);
        assert_eq!(Frame::decode(&bytes).as_ref().ok(), Some(frame));
        offset += bytes.len();
    }
    let (whole, whole_used, whole_failed) = decode_frames(stream, stream.len().max(1));
    assert_eq!(whole, frames);
    assert_eq!((whole_used, whole_failed), (used, failed));
    frames
}

/// The one-shot frame readers on `bytes` as one whole frame: they agree with each
/// other and with the header.
fn check_exact_frame(bytes: &[u8]) {
    let envelope = Envelope::check_exact(bytes);
    let foreign = ForeignFrame::parse(bytes);
    match Frame::decode(bytes) {
        Ok(frame) => {
            assert_eq!(frame.to_bytes(), bytes);
            let envelope = envelope.expect("a decoded frame is an envelope");
            assert_eq!(envelope.version, PROTOCOL_VERSION);
            assert_eq!(envelope.frame_len(), bytes.len());
            assert!(foreign.is_none());
        }
        Err(_) => {
            if let Ok(envelope) = envelope {
                // Exactly one frame, but not of this version: relayed as foreign.
                assert_ne!(envelope.version, PROTOCOL_VERSION);
                assert_eq!(foreign.map(|f| f.version), Some(envelope.version));
            }
        }
    }
}

/// Decodes `bytes` as `T`; what decodes re-encodes to a value that decodes to itself,
/// in no more bytes than it came in.
fn round_trip<T: WireMessage + PartialEq + core::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let value = T::from_wire(bytes).ok()?;
    let encoded = value.to_wire();
    assert!(encoded.len() <= bytes.len(), "{} grew", T::NAME);
    let again = T::from_wire(&encoded).expect("a re-encoded message decodes");
    assert_eq!(again, value);
    assert_eq!(again.to_wire(), encoded);
    Some(value)
}

/// BOC parsers: what parses re-serialises and parses to the same value.
fn check_boc(bytes: &[u8]) {
    if let Ok(charge) = SignedCharge::from_boc(bytes) {
        let _ = charge.verify(&golden().keys.ed25519_public());
        let boc = charge.to_boc().expect("a parsed charge serialises");
        assert_eq!(SignedCharge::from_boc(&boc).ok(), Some(charge));
    }
    if let Ok(config) = ChannelConfig::from_boc(bytes) {
        let _ = config.address(0);
        let boc = config.to_boc().expect("a parsed configuration serialises");
        assert_eq!(ChannelConfig::from_boc(&boc).ok(), Some(config));
    }
}

/// What the shim, the enclave and the client do with a decoded plain message.
fn check_plain(message: &PlainMessage) {
    match message {
        PlainMessage::EvidenceResponse(evidence) => {
            let _ = evidence.hash();
        }
        PlainMessage::Charge(charge) => check_boc(&charge.boc),
        PlainMessage::ChannelBind(bind) => {
            check_boc(&bind.config_boc);
            let g = golden();
            let _ = bind.verify(
                &g.evidence.hash(),
                &g.open.client_ephemeral_pub,
                &g.keys.ed25519_public(),
            );
        }
        PlainMessage::ChannelStatus(status) => {
            if let Some(charge) = &status.latest_charge {
                check_boc(&charge.boc);
            }
        }
        _ => {}
    }
}

/// What a client does with a decoded sealed message.
fn check_sealed(message: &SealedMessage) {
    let key = golden().keys.ed25519_public();
    match message {
        SealedMessage::End(end) => {
            let _ = end.receipt.verify(&key);
        }
        SealedMessage::Bill(bill) => {
            let _ = bill.verify(&key);
            check_boc(&bill.body.charge.boc);
        }
        _ => {}
    }
}

/// Every message decoder on `bytes` as a body.
fn check_bodies(bytes: &[u8]) {
    if let Some(message) = round_trip::<PlainMessage>(bytes) {
        check_plain(&message);
    }
    if let Some(message) = round_trip::<SealedMessage>(bytes) {
        check_sealed(&message);
    }
    round_trip::<SessionOpen>(bytes);
    round_trip::<SessionAccept>(bytes);
    round_trip::<Evidence>(bytes);
    round_trip::<Receipt>(bytes);
    round_trip::<Bill>(bytes);
    round_trip::<ChannelBind>(bytes);
    round_trip::<ChannelStatus>(bytes);
    check_boc(bytes);
}

/// The body when `payload` is exactly one frame (as the seeds are), else `payload`:
/// the handshake checks read a message either way.
fn body_of(payload: &[u8]) -> &[u8] {
    Frame::parse_exact(payload).map_or(payload, |(_, body)| body)
}

/// `payload` cycled (or cut) to exactly `N` bytes, so every input gives values.
fn fill<const N: usize>(payload: &[u8], skip: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if !payload.is_empty() {
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = payload[(skip + i) % payload.len()];
        }
    }
    out
}

fn golden_client() -> ClientHandshake {
    let g = golden();
    let (handshake, open) = ClientHandshake::start(&mut ReplayRng::new(&g.client_rng), &g.evidence);
    assert_eq!(open, g.open, "the replayed client is the golden one");
    handshake
}

/// Mode 0, 1: an accept from the network; only the golden one verifies.
fn client_verifies_accept(payload: &[u8]) {
    let payload = body_of(payload);
    let accept = match PlainMessage::from_wire(payload) {
        Ok(PlainMessage::SessionAccept(accept)) => accept,
        _ => match SessionAccept::from_wire(payload) {
            Ok(accept) => accept,
            Err(_) => return,
        },
    };
    let finished = golden_client().finish(&accept);
    assert_eq!(finished.is_ok(), accept == golden().accept, "{finished:?}");
}

/// Mode 2, 3: accept fields from the payload, signed with the enclave key.
fn client_finishes_signed_accept(payload: &[u8]) {
    let g = golden();
    let mut accept = SessionAccept {
        session_id: fill(payload, 0),
        enclave_ephemeral_pub: fill(payload, 16),
        mlkem_ciphertext: fill::<MLKEM_CIPHERTEXT_LEN>(payload, 48),
        signature: [0; 64],
    };
    let th = transcript_hash(&g.evidence.hash(), &g.open, &accept);
    accept.signature = g
        .keys
        .signing_key()
        .sign(&accept_signing_bytes(&th))
        .to_bytes();
    match golden_client().finish(&accept) {
        Ok(mut channel) => {
            // Keys were derived: the channel seals.
            channel
                .seal(payload.get(..64).unwrap_or(payload))
                .expect("seal");
        }
        Err(ProtocolError::WeakPublicKey) => {}
        Err(other) => panic!("a signed accept refused for {other}"),
    }
}

fn session_open_from(payload: &[u8]) -> SessionOpen {
    let payload = body_of(payload);
    match PlainMessage::from_wire(payload) {
        Ok(PlainMessage::SessionOpen(open)) => open,
        _ => SessionOpen::from_wire(payload).unwrap_or_else(|_| SessionOpen {
            client_ephemeral_pub: fill(payload, 0),
            client_mlkem_pub: fill::<MLKEM_ENCAPSULATION_KEY_LEN>(payload, 32),
            evidence_hash: golden().evidence.hash(),
        }),
    }
}

/// Mode 4, 5: the enclave answers a session-open naming the golden evidence.
fn server_answers_open(payload: &[u8]) {
    let g = golden();
    let open = session_open_from(payload);
    let issued = g.evidence.hash();
    let mut rng = ReplayRng::new(&g.enclave_rng);
    match SealedChannel::server(&mut rng, &g.keys, &open, &issued, g.session_id) {
        Ok((_, accept)) => {
            assert_eq!(open.evidence_hash, issued);
            let th = transcript_hash(&issued, &open, &accept);
            VerifyingKey::from_bytes(&g.keys.ed25519_public())
                .expect("golden key")
                .verify_strict(
                    &accept_signing_bytes(&th),
                    &Signature::from_bytes(&accept.signature),
                )
                .expect("the enclave signs what it accepts");
            assert_eq!(open == g.open, accept == g.accept);
        }
        Err(ProtocolError::EvidenceMismatch { .. }) => assert_ne!(open.evidence_hash, issued),
        Err(ProtocolError::InvalidKemKey | ProtocolError::WeakPublicKey) => {}
        Err(other) => panic!("a session open refused for {other}"),
    }
}

/// Mode 6, 7: an open golden session reads every payload frame, both ways.
fn session_opens_frames(frames: &[Frame]) {
    let g = golden();
    let mut client = golden_client().finish(&g.accept).expect("golden handshake");
    let mut rng = ReplayRng::new(&g.enclave_rng);
    let (mut server, _) =
        SealedChannel::server(&mut rng, &g.keys, &g.open, &g.evidence.hash(), g.session_id)
            .expect("golden open");
    for frame in frames {
        let bytes = frame.to_bytes();
        open_one(&mut server, frame, bytes == g.sealed_request);
        let expected = g.sealed_to_client.iter().position(|f| *f == bytes);
        open_one(&mut client, frame, expected.is_some());
    }
}

/// Opens `frame`: only a golden frame opens, on a channel not yet closed, and any
/// failure leaves the channel closed (no forged frame authenticates, so a failure is
/// never a golden frame's plaintext failing to decode).
fn open_one(channel: &mut SealedChannel, frame: &Frame, golden_frame: bool) {
    let was_poisoned = channel.is_poisoned();
    match channel.open_message(frame) {
        Ok(message) => {
            assert!(golden_frame && !was_poisoned);
            round_trip::<SealedMessage>(&message.to_wire()).expect("an opened message");
        }
        Err(_) => assert!(channel.is_poisoned()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    let frames = check_frames(payload, usize::from(first) + 1);
    check_exact_frame(payload);
    for frame in &frames {
        check_exact_frame(&frame.to_bytes());
        check_bodies(frame.body());
    }
    check_bodies(payload);
    match first & 7 {
        0 | 1 => client_verifies_accept(payload),
        2 | 3 => client_finishes_signed_accept(payload),
        4 | 5 => server_answers_open(payload),
        _ => session_opens_frames(&frames),
    }
});
