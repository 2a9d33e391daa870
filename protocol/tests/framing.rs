//! Framing: the incremental decoder against arbitrary splits and arbitrary bytes, and
//! the size and version checks that run before any allocation.

mod common;

use chrysalis_protocol::{
    Frame, FrameDecoder, FrameHeader, FrameKind, ProtocolError, HEADER_LEN, MAX_BODY_LEN,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use common::channel_pair;
use proptest::prelude::*;

/// Feeds `wire` to a decoder in pieces cut at `cuts` and collects the frames.
fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, ProtocolError> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    for end in ends {
        let mut rest = &wire[start..end];
        while let Some(frame) = decoder.decode(&mut rest)? {
            frames.push(frame);
        }
        assert!(rest.is_empty(), "decoder returned None with input left");
        start = end;
    }
    decoder.finish()?;
    Ok(frames)
}

#[test]
fn a_header_announcing_four_gib_is_refused_before_allocating() {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    header[6] = FrameKind::Sealed.to_byte();
    let mut decoder = FrameDecoder::new();
    let err = decoder.decode(&mut &header[..]).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, max: MAX_FRAME_LEN } if len == u64::from(u32::MAX) + HEADER_LEN as u64),
        "{err:?}"
    );
    // The stream has lost its framing: the decoder stays closed.
    let err = decoder.decode(&mut &[0u8; 4][..]).unwrap_err();
    assert!(matches!(err, ProtocolError::Poisoned { .. }), "{err:?}");
}

#[test]
fn the_largest_body_is_accepted_and_one_more_byte_is_not() {
    assert!(FrameHeader::new(FrameKind::Plain, MAX_BODY_LEN, 0).is_ok());
    let err = FrameHeader::new(FrameKind::Plain, MAX_BODY_LEN + 1, 0).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { .. }),
        "{err:?}"
    );
}

#[test]
fn header_fields_are_where_the_docs_say() {
    let header = FrameHeader::new(FrameKind::Sealed, 0x0102, 0x0a0b_0c0d_0e0f_1011).unwrap();
    assert_eq!(
        header.to_bytes(),
        [0, 0, 1, 2, 0, 2, 2, 0, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11]
    );
    assert_eq!(FrameHeader::parse(&header.to_bytes()).unwrap(), header);
}

#[test]
fn plain_frames_must_have_counter_zero() {
    let mut bytes = Frame::new(FrameKind::Plain, 0, vec![1, 2])
        .unwrap()
        .to_bytes();
    bytes[15] = 1;
    let err = Frame::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, ProtocolError::NonZeroReserved { found: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn exact_decoding_refuses_trailing_and_missing_bytes() {
    let bytes = Frame::new(FrameKind::Plain, 0, vec![9; 5])
        .unwrap()
        .to_bytes();
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Frame::decode(&longer).unwrap_err(),
        ProtocolError::TrailingBytes {
            what: "frame",
            extra: 1
        }
    ));
    assert!(matches!(
        Frame::decode(&bytes[..10]).unwrap_err(),
        ProtocolError::Truncated {
            what: "frame header",
            needed: 16,
            found: 10
        }
    ));
}

#[test]
fn parse_exact_borrows_the_body_and_agrees_with_decode() {
    let bytes = Frame::new(FrameKind::Sealed, 3, vec![8; 20])
        .unwrap()
        .to_bytes();
    let (header, body) = Frame::parse_exact(&bytes).unwrap();
    assert_eq!(
        (header.kind, header.counter, body),
        (FrameKind::Sealed, 3, &[8u8; 20][..])
    );
    assert_eq!(Frame::decode(&bytes).unwrap().body(), body);
    assert!(matches!(
        Frame::parse_exact(&bytes[..30]).unwrap_err(),
        ProtocolError::Truncated {
            what: "frame body",
            needed: 20,
            found: 14
        }
    ));
}

#[test]
fn end_of_stream_inside_a_frame_is_truncation() {
    let bytes = Frame::new(FrameKind::Plain, 0, vec![9; 5])
        .unwrap()
        .to_bytes();
    for cut in 1..bytes.len() {
        let mut decoder = FrameDecoder::new();
        assert!(decoder.decode(&mut &bytes[..cut]).unwrap().is_none());
        let err = decoder.finish().unwrap_err();
        assert!(
            matches!(err, ProtocolError::Truncated { .. }),
            "cut {cut}: {err:?}"
        );
    }
}

#[test]
fn frame_debug_prints_sizes_not_bodies() {
    let frame = Frame::new(FrameKind::Plain, 0, b"secret prompt".to_vec()).unwrap();
    let shown = format!("{frame:?}");
    assert!(shown.contains("<13 bytes>"), "{shown}");
    assert!(!shown.contains("115, 101, 99"), "{shown}"); // "sec" as a byte list
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sealed_payloads_survive_any_split_of_the_stream(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (mut client, mut server, ..) = channel_pair();
        let wire: Vec<u8> = payloads.iter().flat_map(|p| client.seal(p).unwrap()).collect();
        let frames = decode_in_pieces(&wire, &cuts).unwrap();
        prop_assert_eq!(frames.len(), payloads.len());
        for (frame, payload) in frames.iter().zip(&payloads) {
            prop_assert_eq!(&server.open(frame).unwrap(), payload);
        }
    }

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Any outcome but a panic is fine; frames that come out respect the limits.
        if let Ok(frames) = decode_in_pieces(&bytes, &cuts) {
            for frame in frames {
                prop_assert!(frame.body().len() <= MAX_BODY_LEN);
                prop_assert_eq!(frame.to_bytes().len(), HEADER_LEN + frame.body().len());
            }
        }
    }

    #[test]
    fn the_decoder_never_panics_on_plausible_headers(
        body_len in 0u32..600,
        kind in 0u8..4,
        counter in 0u64..3,
        tail in prop::collection::vec(any::<u8>(), 0..1200),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // A right version with random kinds, counters and lengths gets past the first
        // check, so the body path and the kind/counter checks are exercised too.
        let mut bytes = body_len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bytes.extend_from_slice(&[kind, 0]);
        bytes.extend_from_slice(&counter.to_be_bytes());
        bytes.extend_from_slice(&tail);
        match decode_in_pieces(&bytes, &cuts) {
            Ok(frames) => prop_assert!(frames.iter().all(|f| f.body().len() <= MAX_BODY_LEN)),
            Err(err) => {
                let too_large = matches!(err, ProtocolError::FrameTooLarge { .. });
                prop_assert!(!too_large, "lengths under 600 are never too large: {}", err);
            }
        }
    }

    #[test]
    fn valid_headers_with_random_bodies_decode_whatever_the_split(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 0..5),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let frames: Vec<Frame> = bodies
            .iter()
            .map(|b| Frame::new(FrameKind::Plain, 0, b.clone()).unwrap())
            .collect();
        let wire: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        prop_assert_eq!(decode_in_pieces(&wire, &cuts).unwrap(), frames);
    }
}
