//! The shim-to-enclave certificate bundle: wire position, round trip, bounds.

use chrysalis_protocol::{
    CertBundle, PlainMessage, ProtocolError, WireMessage, MAX_CERTS, MAX_CERT_LEN,
};

#[test]
fn a_bundle_round_trips_as_the_seventh_plain_variant() {
    let bundle = PlainMessage::CertBundle(CertBundle {
        certs: vec![vec![0x30, 0x82], vec![b'-'; 10]],
    });
    let wire = bundle.to_wire();
    // Appended after Error (5): the earlier variants keep their bytes on the wire.
    assert_eq!(wire[0], 6);
    let frame = bundle.to_frame().unwrap();
    assert_eq!(PlainMessage::from_frame(&frame).unwrap(), bundle);
}

#[test]
fn oversized_bundles_are_refused_on_decode() {
    let too_many = PlainMessage::CertBundle(CertBundle {
        certs: vec![vec![1]; MAX_CERTS + 1],
    });
    let err = PlainMessage::from_wire(&too_many.to_wire()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::FieldTooLong {
                field: "certificate bundle",
                ..
            }
        ),
        "{err:?}"
    );
    let too_long = PlainMessage::CertBundle(CertBundle {
        certs: vec![vec![1; MAX_CERT_LEN + 1]],
    });
    let err = PlainMessage::from_wire(&too_long.to_wire()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::FieldTooLong {
                field: "bundled certificate",
                ..
            }
        ),
        "{err:?}"
    );
}
