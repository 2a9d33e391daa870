//! The sealed channel: round trips, and every kind of tampering refused with its own
//! error.

mod common;

use chrysalis_protocol::{ChannelRole, ProtocolError};
use common::channel_pair;

#[test]
fn client_and_server_talk_both_ways() {
    let (mut client, mut server, _) = channel_pair();
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
    let (mut client, _, _) = channel_pair();
    let frame = client.seal(b"hello").unwrap();
    let err = client.open_bytes(&frame).unwrap_err();
    assert!(matches!(err, ProtocolError::AuthenticationFailed), "{err}");
}
