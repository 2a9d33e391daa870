//! Fuzzes the incremental frame decoder and the message decoders behind it with
//! arbitrary bytes from the network.
//!
//! Run (nightly; `cargo install cargo-fuzz` once), from `protocol/fuzz/`:
//!
//! ```text
//! cargo +nightly fuzz run frame_decoder -- -max_total_time=60
//! ```
//!
//! Input layout: the first byte picks the chunk size the stream is cut into (1..=256),
//! the rest is the stream. Invariants checked: no panic; every frame re-encodes to
//! exactly the bytes it was decoded from; the bytes the decoder consumed equal the
//! frames it produced; the same stream decoded in one piece gives the same frames.
#![no_main]

use chrysalis_protocol::{
    Frame, FrameDecoder, PlainMessage, SealedMessage, WireMessage, MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Decodes `stream` fed in `chunk`-byte pieces; returns frames and the bytes they used.
fn decode(stream: &[u8], chunk: usize) -> (Vec<Frame>, usize, bool) {
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

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let (frames, used, failed) = decode(stream, chunk);
    assert!(used <= stream.len());
    let mut offset = 0;
    for frame in &frames {
        let bytes = frame.to_bytes();
        assert!(bytes.len() <= MAX_FRAME_LEN);
        assert_eq!(&stream[offset..offset + bytes.len()], &bytes[..]);
        offset += bytes.len();
        // The message decoders must refuse garbage without panicking too.
        let _ = PlainMessage::from_frame(frame);
        let _ = SealedMessage::from_wire(frame.body());
    }
    let (whole, whole_used, whole_failed) = decode(stream, stream.len().max(1));
    assert_eq!(whole, frames);
    assert_eq!((whole_used, whole_failed), (used, failed));
});
