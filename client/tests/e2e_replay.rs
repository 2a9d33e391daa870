//! A recorded session-open replayed against the real enclave (through the real shim)
//! gets no usable session: the enclave refuses the second use of its evidence before
//! any key exists, and the recorded sealed traffic replayed behind it is refused too.
//! (`protocol/tests/handshake.rs` shows that even an enclave that accepted the replay
//! would answer with a fresh share, so keys the replayer cannot compute.)
//!
//! Needs the model: `cargo xtask fetch-model smollm2-135m`.

mod common;

use chrysalis_protocol::{ErrorCode, ForeignFrame, Frame, PlainMessage, SealedMessage};
use common::{chat_request, next_raw, send_on, RawSession, Stack, StackOptions, QUESTION};
use rand_core::OsRng;

#[test]
fn a_replayed_session_open_gets_no_usable_session() {
    let stack = Stack::start(StackOptions::default());
    let endpoint = stack.endpoint();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            // The recorded session: its open, its accept, its first sealed request.
            let mut first = RawSession::open(&endpoint, &mut OsRng).await;
            let open_frame = PlainMessage::SessionOpen(first.open.clone())
                .to_frame_bytes()
                .expect("session open");
            let request = first
                .channel
                .seal_message(&SealedMessage::Request(chat_request(QUESTION, 4)))
                .expect("seal");
            first.send(request.clone()).await;
            assert!(!first.read_answer().await.is_empty());

            // The replayer sends the same bytes on a new session socket.
            let mut socket = endpoint.open_socket().await.expect("session socket");
            send_on(&mut socket, open_frame).await;
            let answer = next_raw(&mut socket).await.expect("an answer frame");
            assert!(ForeignFrame::parse(&answer).is_none());
            let frame = Frame::decode(&answer).expect("a frame");
            match PlainMessage::from_frame(&frame).expect("a plain message") {
                PlainMessage::Error(e) => {
                    assert_eq!(e.code, ErrorCode::HandshakeFailed, "{}", e.message);
                    assert!(e.message.contains("already used"), "{}", e.message);
                }
                PlainMessage::SessionAccept(_) => panic!("the replayed session-open was accepted"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            // The session is over: the recorded request behind it goes nowhere.
            send_on_if_open(&mut socket, request).await;
            assert!(
                next_raw(&mut socket).await.is_err(),
                "the enclave answered after refusing the handshake"
            );
        });
}

/// Sends when the socket still takes messages; a closed socket is the expected end.
async fn send_on_if_open(socket: &mut chrysalis_client::transport::SessionSocket, bytes: Vec<u8>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let _ = socket.send(Message::Binary(bytes.into())).await;
}
