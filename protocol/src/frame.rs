//! Length-prefixed framing with a hard maximum size.
//!
//! Every frame is a fixed 16-byte header followed by a body:
//!
//! ```text
//! offset size field
//!  0     4    body length, u32 big-endian (header excluded)
//!  4     2    protocol version, u16 big-endian (PROTOCOL_VERSION)
//!  6     1    kind: 0x01 plain, 0x02 sealed
//!  7     1    flags: must be 0 in versions 1 and 2
//!  8     8    counter, u64 big-endian: the sender's sequence number for sealed
//!             frames, 0 for plain frames
//! ```
//!
//! Bytes 0..6 (length and version) mean the same in every version: an [`Envelope`].
//! A relay needs nothing more to carry frames of any version, and a peer that meets a
//! frame of another version answers in that version ([`ForeignFrame::refusal`]), so
//! an old client reads why it was refused instead of a dropped connection.
//!
//! The header is checked (version, kind, flags, counter, length against
//! [`MAX_FRAME_LEN`]) before a single body byte is buffered or allocated. For sealed
//! frames the whole header is the AEAD's associated data.

use crate::codec::WireMessage;
use crate::messages::{ErrorMessage, PlainMessage};
use crate::version::{check_version, PROTOCOL_VERSION};
use crate::ProtocolError;

/// Size of the fixed frame header, in bytes.
pub const HEADER_LEN: usize = 16;

/// Hard maximum of one frame, header included: 1 MiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Largest body a frame may carry.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A postcard-encoded [`crate::PlainMessage`], readable by the untrusted shim.
    Plain,
    /// AES-256-GCM ciphertext and tag of a postcard-encoded [`crate::SealedMessage`].
    Sealed,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Plain => 0x01,
            FrameKind::Sealed => 0x02,
        }
    }

    /// Parses a kind byte.
    pub fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        match byte {
            0x01 => Ok(FrameKind::Plain),
            0x02 => Ok(FrameKind::Sealed),
            found => Err(ProtocolError::UnknownFrameKind { found }),
        }
    }

    /// A lowercase name for messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Plain => "plain",
            FrameKind::Sealed => "sealed",
        }
    }

    /// Fails with [`ProtocolError::UnexpectedFrameKind`] unless `self == expected`.
    pub fn expect(self, expected: FrameKind) -> Result<(), ProtocolError> {
        if self == expected {
            Ok(())
        } else {
            Err(ProtocolError::UnexpectedFrameKind {
                found: self.name(),
                expected: expected.name(),
            })
        }
    }
}

/// A parsed and validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length in bytes, at most [`MAX_BODY_LEN`].
    pub body_len: u32,
    /// What the body holds.
    pub kind: FrameKind,
    /// Sequence number of a sealed frame; 0 for plain frames.
    pub counter: u64,
}

impl FrameHeader {
    /// Builds a header for a body of `body_len` bytes, refusing oversize bodies.
    pub fn new(kind: FrameKind, body_len: usize, counter: u64) -> Result<Self, ProtocolError> {
        check_body_len(body_len as u64)?;
        if kind == FrameKind::Plain && counter != 0 {
            return Err(ProtocolError::NonZeroReserved {
                field: "counter of a plain frame",
                found: counter,
            });
        }
        // Cannot truncate: check_body_len bounds it by MAX_BODY_LEN < u32::MAX.
        let body_len = body_len as u32;
        Ok(FrameHeader {
            body_len,
            kind,
            counter,
        })
    }

    /// The header's 16 wire bytes (also the AAD of a sealed frame).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.body_len.to_be_bytes());
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        out[6] = self.kind.to_byte();
        out[7] = 0;
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Parses and validates 16 header bytes: version first, then kind, flags, counter
    /// and length.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let [l0, l1, l2, l3, v0, v1, kind, flags, c @ ..] = *bytes;
        check_version(u16::from_be_bytes([v0, v1]))?;
        let kind = FrameKind::from_byte(kind)?;
        if flags != 0 {
            return Err(ProtocolError::NonZeroReserved {
                field: "flags",
                found: u64::from(flags),
            });
        }
        let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
        FrameHeader::new(kind, body_len as usize, u64::from_be_bytes(c))
    }

    /// Total frame length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

fn check_body_len(body_len: u64) -> Result<(), ProtocolError> {
    if body_len > MAX_BODY_LEN as u64 {
        Err(ProtocolError::FrameTooLarge {
            len: body_len.saturating_add(HEADER_LEN as u64),
            max: MAX_FRAME_LEN,
        })
    } else {
        Ok(())
    }
}

/// The version-independent start of a frame header: the body length (bytes 0..4) and
/// the protocol version (bytes 4..6). Every version keeps these two fields where they
/// are, so a relay can carry, and a peer can size, a frame of any version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The version the sender speaks.
    pub version: u16,
    /// Body length in bytes, at most [`MAX_BODY_LEN`].
    pub body_len: u32,
}

impl Envelope {
    /// Reads the length and version of a header of any version; only the length is
    /// checked (against [`MAX_BODY_LEN`]).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let body_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        check_body_len(u64::from(body_len))?;
        Ok(Envelope {
            version: u16::from_be_bytes([bytes[4], bytes[5]]),
            body_len,
        })
    }

    /// Checks that `bytes` is exactly one frame of any version (a header whose length
    /// is under the maximum, then exactly that many body bytes). A frame of this build's
    /// version gets [`Frame::parse_exact`]'s full header check.
    pub fn check_exact(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let head = bytes
            .first_chunk::<HEADER_LEN>()
            .ok_or(ProtocolError::Truncated {
                what: "frame header",
                needed: HEADER_LEN,
                found: bytes.len(),
            })?;
        let envelope = Envelope::parse(head)?;
        if envelope.version == PROTOCOL_VERSION {
            Frame::parse_exact(bytes)?;
            return Ok(envelope);
        }
        let body = bytes.len() - HEADER_LEN;
        match body.cmp(&(envelope.body_len as usize)) {
            core::cmp::Ordering::Less => Err(ProtocolError::Truncated {
                what: "frame body",
                needed: envelope.body_len as usize,
                found: body,
            }),
            core::cmp::Ordering::Greater => Err(ProtocolError::TrailingBytes {
                what: "frame",
                extra: body - envelope.body_len as usize,
            }),
            core::cmp::Ordering::Equal => Ok(envelope),
        }
    }

    /// Total frame length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// A frame of a protocol version other than this build's, read as far as every
/// version agrees: which version the peer speaks and, when the frame is a plain error
/// report (kind 0x01, [`PlainMessage::Error`], whose discriminant and layout never
/// change), what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignFrame {
    /// The version in the frame's header.
    pub version: u16,
    /// The peer's error report, if the frame is one.
    pub error: Option<ErrorMessage>,
}

impl ForeignFrame {
    /// `None` when `bytes` is not exactly one frame, or is a frame of this build's
    /// version (decode that with [`Frame::decode`]).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let envelope = Envelope::check_exact(bytes).ok()?;
        if envelope.version == PROTOCOL_VERSION {
            return None;
        }
        let error = match (bytes[6], bytes[7]) {
            (0x01, 0) => match PlainMessage::from_wire(&bytes[HEADER_LEN..]) {
                Ok(PlainMessage::Error(error)) => Some(error),
                _ => None,
            },
            _ => None,
        };
        Some(ForeignFrame {
            version: envelope.version,
            error,
        })
    }

    /// A plain error frame in `peer_version`, the version the peer spoke: the header
    /// of this version with only the version field changed, and a
    /// [`PlainMessage::Error`] body. The answer to a frame this build cannot read.
    pub fn refusal(peer_version: u16, error: ErrorMessage) -> Result<Vec<u8>, ProtocolError> {
        let mut bytes = PlainMessage::Error(error).to_frame_bytes()?;
        bytes[4..6].copy_from_slice(&peer_version.to_be_bytes());
        Ok(bytes)
    }
}

/// One complete frame: a validated header and exactly `header.body_len` body bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    header: FrameHeader,
    body: Vec<u8>,
}

impl core::fmt::Debug for Frame {
    // Bodies may hold plaintext on the enclave side: print sizes only.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Frame")
            .field("header", &self.header)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

impl Frame {
    /// Wraps `body` in a frame, refusing bodies over [`MAX_BODY_LEN`].
    pub fn new(kind: FrameKind, counter: u64, body: Vec<u8>) -> Result<Self, ProtocolError> {
        let header = FrameHeader::new(kind, body.len(), counter)?;
        Ok(Frame { header, body })
    }

    /// The frame's header.
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// The frame's body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Consumes the frame, returning its body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The frame's wire bytes: header then body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.frame_len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes exactly one frame from `bytes`, rejecting short input
    /// ([`ProtocolError::Truncated`]) and leftovers ([`ProtocolError::TrailingBytes`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (header, body) = Frame::parse_exact(bytes)?;
        Ok(Frame {
            header,
            body: body.to_vec(),
        })
    }

    /// Like [`Frame::decode`] but without copying: validates that `bytes` is exactly one
    /// frame and returns its header and body. A relay that only checks and forwards
    /// frames needs nothing more.
    pub fn parse_exact(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), ProtocolError> {
        let (head, body) =
            bytes
                .split_first_chunk::<HEADER_LEN>()
                .ok_or(ProtocolError::Truncated {
                    what: "frame header",
                    needed: HEADER_LEN,
                    found: bytes.len(),
                })?;
        let header = FrameHeader::parse(head)?;
        let body_len = header.body_len as usize;
        match body.len().cmp(&body_len) {
            core::cmp::Ordering::Less => Err(ProtocolError::Truncated {
                what: "frame body",
                needed: body_len,
                found: body.len(),
            }),
            core::cmp::Ordering::Greater => Err(ProtocolError::TrailingBytes {
                what: "frame",
                extra: body.len() - body_len,
            }),
            core::cmp::Ordering::Equal => Ok((header, body)),
        }
    }
}

/// Incremental frame decoder for a byte stream (TCP, vsock, WebSocket messages).
///
/// It buffers at most one frame: the 16 header bytes, then, once the header has been
/// validated (size at most [`MAX_BODY_LEN`]), body bytes as they arrive. Feed it
/// whatever chunks arrive:
///
/// ```
/// use chrysalis_protocol::{Frame, FrameDecoder, FrameKind};
///
/// let wire = Frame::new(FrameKind::Plain, 0, b"hello".to_vec()).unwrap().to_bytes();
/// let mut decoder = FrameDecoder::new();
/// let mut frames = Vec::new();
/// for chunk in wire.chunks(3) {
///     let mut rest = chunk;
///     while let Some(frame) = decoder.decode(&mut rest).unwrap() {
///         frames.push(frame);
///     }
/// }
/// decoder.finish().unwrap(); // no partial frame left at end of stream
/// assert_eq!(frames[0].body(), b"hello");
/// ```
///
/// After any error the stream has lost its framing, so the decoder refuses everything
/// that follows with [`ProtocolError::Poisoned`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    state: DecoderState,
}

#[derive(Debug)]
enum DecoderState {
    /// Collecting the 16 header bytes; `filled == 0` between frames.
    Header {
        bytes: [u8; HEADER_LEN],
        filled: usize,
    },
    /// Header validated; collecting exactly `header.body_len` body bytes.
    Body { header: FrameHeader, body: Vec<u8> },
    /// An error desynchronised the stream.
    Failed,
}

impl Default for DecoderState {
    fn default() -> Self {
        DecoderState::Header {
            bytes: [0; HEADER_LEN],
            filled: 0,
        }
    }
}

impl FrameDecoder {
    /// A decoder waiting for the first header byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` until one frame is complete or `input`
    /// is empty. Returns the completed frame, or `None` when more bytes are needed
    /// (then `input` is empty). Bytes after a completed frame stay in `input`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtocolError> {
        let result = self.step(input);
        if result.is_err() {
            self.state = DecoderState::Failed;
        }
        result
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtocolError> {
        if let DecoderState::Header { bytes, filled } = &mut self.state {
            *filled += take_into(&mut bytes[*filled..], input);
            if *filled < HEADER_LEN {
                return Ok(None);
            }
            let header = FrameHeader::parse(bytes)?;
            // The body buffer grows only as bytes arrive, so a peer that announces a
            // large frame and then stalls holds no more memory than it has sent.
            self.state = DecoderState::Body {
                header,
                body: Vec::new(),
            };
        }
        match &mut self.state {
            DecoderState::Body { header, body } => {
                let missing = header.body_len as usize - body.len();
                let (now, later) = input.split_at(missing.min(input.len()));
                body.extend_from_slice(now);
                *input = later;
                if body.len() < header.body_len as usize {
                    return Ok(None);
                }
                let frame = Frame {
                    header: *header,
                    body: core::mem::take(body),
                };
                self.state = DecoderState::default();
                Ok(Some(frame))
            }
            DecoderState::Failed => Err(ProtocolError::Poisoned {
                what: "frame decoder",
            }),
            // Unreachable after the block above, which leaves Header only when complete.
            DecoderState::Header { .. } => Ok(None),
        }
    }

    /// Call at end of stream: fails with [`ProtocolError::Truncated`] if a frame was
    /// left incomplete.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match &self.state {
            DecoderState::Header { filled: 0, .. } => Ok(()),
            DecoderState::Header { filled, .. } => Err(ProtocolError::Truncated {
                what: "frame header",
                needed: HEADER_LEN,
                found: *filled,
            }),
            DecoderState::Body { header, body } => Err(ProtocolError::Truncated {
                what: "frame body",
                needed: header.body_len as usize,
                found: body.len(),
            }),
            DecoderState::Failed => Err(ProtocolError::Poisoned {
                what: "frame decoder",
            }),
        }
    }
}

/// Copies as many bytes as fit from the front of `input` into `dst`; returns the count.
fn take_into(dst: &mut [u8], input: &mut &[u8]) -> usize {
    let n = dst.len().min(input.len());
    let (now, later) = input.split_at(n);
    dst[..n].copy_from_slice(now);
    *input = later;
    n
}
