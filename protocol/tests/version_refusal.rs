//! A peer of another version: the frames a v1 client really sent (the checked-in v1
//! golden transcript) are refused with an error naming both versions, a relay still
//! carries them, and the refusal the enclave sends back is, byte for byte, a frame a v1
//! client decodes as an error.

use std::path::PathBuf;

use chrysalis_protocol::{
    Envelope, ErrorCode, ErrorMessage, ForeignFrame, Frame, FrameDecoder, FrameHeader,
    PlainMessage, ProtocolError, HEADER_LEN, PROTOCOL_VERSION,
};

/// A line of the v1 golden transcript.
fn v1(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transcript_v1.hex");
    let text = std::fs::read_to_string(path).expect("the v1 transcript is checked in");
    text.lines()
        .find_map(|line| {
            let (n, hex) = line.split_once(' ')?;
            (n == name).then(|| hex::decode(hex).expect("hex"))
        })
        .unwrap_or_else(|| panic!("{name} missing from transcript_v1.hex"))
}

#[test]
fn v1_frames_are_refused_naming_both_versions() {
    assert_eq!(PROTOCOL_VERSION, 2);
    for name in [
        "frame_evidence_request",
        "frame_session_open",
        "sealed_request",
    ] {
        let frame = v1(name);
        let err = Frame::decode(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::UnknownVersion {
                    found: 1,
                    expected: 2
                }
            ),
            "{name}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            "peer speaks protocol v1, this build speaks v2"
        );
        // The stream decoder refuses at the header, before buffering the body.
        let mut decoder = FrameDecoder::new();
        let mut head = &frame[..HEADER_LEN];
        assert!(decoder.decode(&mut head).is_err(), "{name}");
    }
}

#[test]
fn a_relay_carries_frames_of_any_version() {
    // The shim checks only the envelope (length and version) of foreign frames.
    let open = v1("frame_session_open");
    let envelope = Envelope::check_exact(&open).unwrap();
    assert_eq!(envelope.version, 1);
    assert_eq!(envelope.frame_len(), open.len());
    let mut long = open.clone();
    long.push(0);
    assert!(matches!(
        Envelope::check_exact(&long).unwrap_err(),
        ProtocolError::TrailingBytes { extra: 1, .. }
    ));
    assert!(matches!(
        Envelope::check_exact(&open[..open.len() - 1]).unwrap_err(),
        ProtocolError::Truncated { .. }
    ));
    // A foreign header still may not announce more than the maximum.
    let mut huge = open.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Envelope::check_exact(&huge).unwrap_err(),
        ProtocolError::FrameTooLarge { .. }
    ));
    let head: [u8; HEADER_LEN] = open[..HEADER_LEN].try_into().unwrap();
    assert!(FrameHeader::parse(&head).is_err());
    assert!(Envelope::parse(&head).is_ok());
}

#[test]
fn the_refusal_is_a_frame_a_v1_client_reads_as_an_error() {
    // transcript_v1.hex holds a v1 enclave's plain error frame: a refusal built by this
    // build for a v1 peer has exactly its layout.
    let v1_error = v1("frame_error");
    let same = ForeignFrame::refusal(
        1,
        ErrorMessage {
            code: ErrorCode::Overloaded,
            message: "too many sessions".into(),
        },
    )
    .unwrap();
    assert_eq!(hex::encode(&same), hex::encode(&v1_error));

    let refusal = ForeignFrame::refusal(
        1,
        ErrorMessage {
            code: ErrorCode::UnsupportedVersion,
            message: "client speaks protocol v1, this enclave speaks v2: upgrade the client".into(),
        },
    )
    .unwrap();
    assert_eq!(
        &refusal[4..6],
        &[0, 1],
        "the header carries the peer's version"
    );
    let read = ForeignFrame::parse(&refusal).unwrap();
    assert_eq!(read.version, 1);
    let error = read.error.unwrap();
    assert_eq!(error.code, ErrorCode::UnsupportedVersion);
    assert!(error.message.contains("v1") && error.message.contains("v2"));
    // And this build refuses it as a frame of its own version.
    assert!(Frame::decode(&refusal).is_err());
}

#[test]
fn frames_of_this_version_are_not_foreign() {
    let frame = PlainMessage::Error(ErrorMessage {
        code: ErrorCode::Internal,
        message: String::new(),
    })
    .to_frame_bytes()
    .unwrap();
    assert!(ForeignFrame::parse(&frame).is_none());
    assert!(ForeignFrame::parse(b"not a frame").is_none());
    // A foreign frame that is not an error still names its version.
    let open = ForeignFrame::parse(&v1("frame_session_open")).unwrap();
    assert_eq!((open.version, open.error), (1, None));
}
