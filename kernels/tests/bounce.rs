//! The bounce-buffer protocol against the CPU stand-in for a GPU: staging only ever holds
//! ciphertext, and any change the host makes to staging (a flipped bit, a replayed or
//! reordered chunk) aborts the transfer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrysalis_kernels::bounce::{
    BounceChannel, BounceDevice, BounceError, BounceKey, ChunkHeader, CpuStandInDevice, Direction,
    StagingObserver, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, TAG_BYTES,
};

const CHUNK: usize = MIN_CHUNK_BYTES;

/// The fixture's rendered ChatML prompt (shared/fixtures/smollm2/*.json).
const PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?\
<|im_end|>\n<|im_start|>assistant\n";

/// Real model output bytes: SmolLM2-135M's 49152 first-step logits (192 KiB, 3 chunks),
/// from the copy of the shared fixture that the models crate's tests keep.
fn fixture_logits() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/data/capital_of_france.f32.first_logits.f32le"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("fixture {path} missing: {e}"))
}

/// A Q4_1 weight matrix with known bytes: 256 rows of 512 values, scales and nibbles
/// from a fixed pattern (what a model upload looks like on the wire).
fn known_q4_1_weights() -> Vec<u8> {
    let rows = 256;
    let blocks = 512 / 32;
    let mut data = Vec::with_capacity(rows * blocks * 20);
    for b in 0..rows * blocks {
        let d = half::f16::from_f32(0.01 + (b % 7) as f32 * 0.001);
        let m = half::f16::from_f32(-0.05);
        data.extend_from_slice(&d.to_le_bytes());
        data.extend_from_slice(&m.to_le_bytes());
        data.extend((0..16u32).map(|i| ((b as u32 * 31 + i * 7) % 251) as u8));
    }
    data
}

/// Every chunk as it sat in staging, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Staged>>>);

/// One staged chunk: its header and the bytes staging held.
type Staged = (ChunkHeader, Vec<u8>);

impl StagingObserver for Recorder {
    fn observe(&mut self, header: &ChunkHeader, staging: &mut [u8]) {
        let mut seen = self.0.lock().expect("recorder poisoned");
        seen.push((*header, staging.to_vec()));
    }
}

/// Flips one bit of the `target`-th chunk seen in `direction`.
struct BitFlipper {
    direction: Direction,
    target: usize,
    byte: usize,
    seen: usize,
}

impl StagingObserver for BitFlipper {
    fn observe(&mut self, header: &ChunkHeader, staging: &mut [u8]) {
        if header.direction != self.direction {
            return;
        }
        if self.seen == self.target {
            staging[self.byte.min(staging.len() - 1)] ^= 0x10;
        }
        self.seen += 1;
    }
}

/// Replaces each chunk after the first of a transfer with the first one's staging bytes
/// (a replay), or keeps the previous chunk's bytes to stand in for a swap.
struct Replayer {
    first: Option<Vec<u8>>,
}

impl StagingObserver for Replayer {
    fn observe(&mut self, header: &ChunkHeader, staging: &mut [u8]) {
        match (&self.first, header.index) {
            (None, 0) => self.first = Some(staging.to_vec()),
            (Some(first), _) if first.len() == staging.len() => staging.copy_from_slice(first),
            _ => {}
        }
    }
}

fn channel() -> BounceChannel<CpuStandInDevice> {
    BounceChannel::new(CpuStandInDevice::new(CHUNK), &BounceKey::generate(), CHUNK)
        .expect("channel with a valid chunk size")
}

/// Fails if `needle` or any 16-byte window of it appears in `haystack`.
fn assert_no_plaintext(needle: &[u8], staged: &[Staged], what: &str) {
    let windows: HashSet<&[u8]> = needle.windows(16).collect();
    for (header, bytes) in staged {
        assert!(
            needle.len() < 16 || !bytes.windows(needle.len()).any(|w| w == needle),
            "{what}: whole plaintext found in staging chunk {header:?}"
        );
        if let Some(hit) = bytes.windows(16).position(|w| windows.contains(w)) {
            panic!("{what}: 16-byte plaintext window at offset {hit} of chunk {header:?}");
        }
    }
}

#[test]
fn round_trip_returns_the_same_bytes_and_device_holds_plaintext() {
    let mut ch = channel();
    let logits = fixture_logits();
    let id = ch.upload(&logits).expect("upload");
    assert_eq!(ch.device().memory(id), Some(logits.as_slice()));
    let back = ch.download(id, 0, logits.len()).expect("download");
    assert_eq!(back, logits);
    // An unaligned middle range crossing a chunk boundary.
    let back = ch.download(id, CHUNK - 5, 1000).expect("partial download");
    assert_eq!(back, &logits[CHUNK - 5..CHUNK + 995]);
}

#[test]
fn staging_sees_only_ciphertext_of_prompt_weights_and_key() {
    let key = BounceKey::generate();
    let mut ch = BounceChannel::new(CpuStandInDevice::new(CHUNK), &key, CHUNK).expect("channel");
    let recorder = Recorder::default();
    ch.set_observer(Box::new(recorder.clone()));

    let weights = known_q4_1_weights();
    let logits = fixture_logits();
    let zeros = vec![0u8; 3 * CHUNK + 17];
    let w = ch.upload(&weights).expect("weights");
    let p = ch.upload(PROMPT.as_bytes()).expect("prompt");
    let z = ch.upload(&zeros).expect("zeros");
    let l = ch.upload(&logits).expect("logits");
    assert_eq!(ch.download(w, 0, weights.len()).expect("w back"), weights);
    assert_eq!(
        ch.download(p, 0, PROMPT.len()).expect("p back"),
        PROMPT.as_bytes()
    );
    assert_eq!(ch.download(l, 0, logits.len()).expect("l back"), logits);
    assert_eq!(ch.download(z, 0, zeros.len()).expect("z back"), zeros);

    let staged = recorder.0.lock().expect("recorder").clone();
    // Every byte moved passed through staging: the observer really saw the traffic.
    let total: usize = staged.iter().map(|(h, b)| b.len() - h.len).sum();
    assert_eq!(total, staged.len() * TAG_BYTES);
    let moved: usize = staged.iter().map(|(h, _)| h.len).sum();
    assert_eq!(
        moved,
        2 * (weights.len() + PROMPT.len() + zeros.len() + logits.len())
    );

    assert_no_plaintext(PROMPT.as_bytes(), &staged, "prompt");
    assert_no_plaintext(&weights, &staged, "weights");
    assert_no_plaintext(&logits, &staged, "logits");
    assert_no_plaintext(key.as_bytes(), &staged, "key");
    // Ciphertext of zeros must not be zeros (or any other 16-byte run of one value).
    for (header, bytes) in &staged {
        assert!(
            !bytes.windows(16).any(|w| w.iter().all(|&b| b == w[0])),
            "a constant 16-byte run in staging chunk {header:?}"
        );
    }
}

#[test]
fn flipped_bit_in_staging_aborts_upload_and_leaves_device_memory_alone() {
    let data = fixture_logits();
    for (target, byte) in [(0, 0), (1, 12345), (2, CHUNK + 3)] {
        let mut ch = channel();
        ch.set_observer(Box::new(BitFlipper {
            direction: Direction::HostToDevice,
            target,
            byte,
            seen: 0,
        }));
        let dst = ch.device_mut().alloc(data.len()).expect("alloc");
        let err = ch.upload_into(&data, dst, 0).expect_err("tampered upload");
        assert_eq!(
            err,
            BounceError::TagMismatch {
                direction: Direction::HostToDevice,
                transfer: 0,
                index: target as u32
            }
        );
        let mem = ch.device().memory(dst).expect("buffer");
        let tampered = &mem[target * CHUNK..((target + 1) * CHUNK).min(mem.len())];
        assert!(
            tampered.iter().all(|&b| b == 0),
            "tampered chunk reached device memory"
        );
    }
}

#[test]
fn flipped_bit_in_staging_aborts_download() {
    let data = known_q4_1_weights();
    let mut ch = channel();
    let id = ch.upload(&data).expect("upload");
    ch.set_observer(Box::new(BitFlipper {
        direction: Direction::DeviceToHost,
        target: 1,
        byte: 7,
        seen: 0,
    }));
    let err = ch
        .download(id, 0, data.len())
        .expect_err("tampered download");
    assert!(matches!(
        err,
        BounceError::TagMismatch {
            direction: Direction::DeviceToHost,
            index: 1,
            ..
        }
    ));
}

#[test]
fn replayed_or_reordered_chunks_are_rejected() {
    let data = fixture_logits();
    let mut ch = channel();
    ch.set_observer(Box::new(Replayer { first: None }));
    let err = ch.upload(&data).expect_err("replayed chunk 0 as chunk 1");
    assert!(
        matches!(err, BounceError::TagMismatch { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn ciphertext_from_an_earlier_transfer_is_rejected() {
    // The host keeps staging from one transfer and replays it in the next one.
    let data = vec![7u8; CHUNK];
    let recorder = Recorder::default();
    let mut ch = channel();
    ch.set_observer(Box::new(recorder.clone()));
    ch.upload(&data).expect("first upload");
    let old = recorder.0.lock().expect("recorder")[0].1.clone();

    struct Inject(Vec<u8>);
    impl StagingObserver for Inject {
        fn observe(&mut self, _: &ChunkHeader, staging: &mut [u8]) {
            staging.copy_from_slice(&self.0);
        }
    }
    ch.set_observer(Box::new(Inject(old)));
    let err = ch.upload(&data).expect_err("replayed transfer");
    assert!(
        matches!(err, BounceError::TagMismatch { transfer: 1, .. }),
        "{err}"
    );
}

#[test]
fn iv_counters_never_repeat_across_transfers_and_directions() {
    let recorder = Recorder::default();
    let mut ch = channel();
    ch.set_observer(Box::new(recorder.clone()));
    let data = known_q4_1_weights();
    let id = ch.upload(&data).expect("upload");
    for len in [1, CHUNK, CHUNK + 1, data.len()] {
        ch.download(id, 0, len).expect("download");
        ch.upload(&data[..len]).expect("upload");
    }
    // A failed transfer still consumes its counters.
    ch.set_observer(Box::new(BitFlipper {
        direction: Direction::HostToDevice,
        target: 0,
        byte: 0,
        seen: 0,
    }));
    ch.upload(&data).expect_err("tampered");
    ch.set_observer(Box::new(recorder.clone()));
    ch.upload(&data).expect("upload after failure");

    let staged = recorder.0.lock().expect("recorder");
    let ivs: Vec<[u8; 12]> = staged.iter().map(|(h, _)| h.iv()).collect();
    let unique: HashSet<_> = ivs.iter().collect();
    assert_eq!(unique.len(), ivs.len(), "an IV was used twice");
    assert!(staged
        .iter()
        .any(|(h, _)| h.direction == Direction::DeviceToHost));
}

#[test]
fn device_refuses_a_counter_it_has_already_used() {
    let mut dev = CpuStandInDevice::new(CHUNK);
    dev.install_key(&BounceKey::generate()).expect("key");
    let buf = dev.alloc(16).expect("alloc");
    let header = ChunkHeader {
        direction: Direction::DeviceToHost,
        counter: 5,
        transfer: 0,
        index: 0,
        count: 1,
        transfer_len: 16,
        len: 16,
    };
    dev.seal_to_staging(&header, buf, 0).expect("first seal");
    let err = dev
        .seal_to_staging(&header, buf, 0)
        .expect_err("same counter");
    assert_eq!(
        err,
        BounceError::CounterReuse {
            direction: Direction::DeviceToHost,
            found: 5,
            last: 5
        }
    );
}

#[test]
fn out_of_range_chunk_sizes_and_buffers_are_errors() {
    for bad in [0, MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1] {
        let err = BounceChannel::new(CpuStandInDevice::new(bad), &BounceKey::generate(), bad)
            .err()
            .expect("bad chunk size");
        assert_eq!(err, BounceError::ChunkSize { found: bad });
    }
    let mut ch = channel();
    let id = ch.upload(&[1, 2, 3]).expect("upload");
    let err = ch.download(id, 2, 5).expect_err("past the end");
    assert_eq!(
        err,
        BounceError::OutOfRange {
            len: 3,
            offset: 2,
            end: 7
        }
    );
}
