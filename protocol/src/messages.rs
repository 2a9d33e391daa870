//! Wire messages: what travels in plain frames (seen by the shim) and what travels only
//! inside sealed frames.
//!
//! Types may grow within a version only by adding enum variants at the end; anything
//! else changes bytes on the wire and bumps [`crate::PROTOCOL_VERSION`]. Version 2
//! changed [`SessionOpen`] and [`SessionAccept`] (the forward-secret, hybrid
//! handshake); [`PlainMessage::Error`] keeps its discriminant (5) and layout in every
//! version, so a peer can always read why it was refused.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{check_len, fixed_bytes, WireMessage};
use crate::evidence::Evidence;
use crate::frame::{Frame, FrameKind};
use crate::signing::{Receipt, Signed};
use crate::ProtocolError;

/// Domain label of [`InferenceRequest::hash`].
pub const REQUEST_HASH_LABEL: &[u8] = b"chrysalis/v1/request";

/// Longest error text accepted, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Most chat messages in one request.
pub const MAX_CHAT_MESSAGES: usize = 1024;
/// Most token ids in one stream chunk.
pub const MAX_CHUNK_TOKENS: usize = 4096;

/// Client to enclave, plain: "prove who you are", with a fresh challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRequest {
    /// 32 random bytes; the enclave binds them into `REPORT_DATA`.
    pub nonce: [u8; 32],
}

/// Length of an ML-KEM-768 encapsulation key (FIPS 203: 384·k + 32 bytes, k = 3).
pub const MLKEM_ENCAPSULATION_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext (FIPS 203: 32·(du·k + dv) bytes).
pub const MLKEM_CIPHERTEXT_LEN: usize = 1088;

/// Client to enclave, plain: start a sealed session (protocol v2).
///
/// Every field is a fixed-size byte array, written as its bytes with no length prefix:
/// the encoding is exactly 32 + 1184 + 32 = 1248 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// The client's fresh X25519 public key for this session.
    pub client_ephemeral_pub: [u8; 32],
    /// The client's fresh ML-KEM-768 encapsulation key for this session.
    #[serde(with = "fixed_bytes")]
    pub client_mlkem_pub: [u8; MLKEM_ENCAPSULATION_KEY_LEN],
    /// [`Evidence::hash`] of the evidence the client verified.
    pub evidence_hash: [u8; 32],
}

/// Enclave to client, plain: the session is open; sealed frames may follow.
///
/// The enclave's fresh contributions to the key schedule, signed with its
/// evidence-bound Ed25519 key over the transcript hash
/// ([`crate::transcript_hash`], [`crate::accept_signing_bytes`]). The encoding is
/// exactly 16 + 32 + 1088 + 64 = 1200 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAccept {
    /// An identifier the enclave chose for logs and metrics; not secret, not a key.
    pub session_id: [u8; 16],
    /// The enclave's fresh X25519 public key for this session.
    pub enclave_ephemeral_pub: [u8; 32],
    /// An ML-KEM-768 ciphertext encapsulated to [`SessionOpen::client_mlkem_pub`].
    #[serde(with = "fixed_bytes")]
    pub mlkem_ciphertext: [u8; MLKEM_CIPHERTEXT_LEN],
    /// Ed25519 signature (R ‖ s) of [`crate::accept_signing_bytes`] under
    /// [`Evidence::ed25519_pub`].
    #[serde(with = "fixed_bytes")]
    pub signature: [u8; 64],
}

/// Why a request or session failed; travels plain or sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer sent something this protocol version does not allow.
    BadRequest,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// Evidence or a session could not be established.
    HandshakeFailed,
    /// The request cannot be served right now; retry later.
    Overloaded,
    /// The payment channel does not cover the request.
    PaymentRequired,
    /// The enclave failed; nothing about the request is revealed.
    Internal,
}

/// An error report. Its text must never quote plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// Human-readable detail (at most [`MAX_ERROR_MESSAGE_LEN`] bytes).
    pub message: String,
}

/// A [`crate::ton::SignedCharge`] as its BOC bytes (`SignedCharge::to_boc`), at most
/// [`crate::ton::MAX_SIGNED_CHARGE_BOC`] bytes; parse with `SignedCharge::from_boc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeBoc {
    /// The BOC bytes.
    pub boc: Vec<u8>,
}

/// Shim to enclave, plain: certificates that endorse the enclave's SEV-SNP reports,
/// leaf first (VCEK or VLEK, then ASK or ASVK, then ARK; DER or PEM), which the shim
/// read from a file or fetched from AMD's key distribution service.
///
/// Untrusted: the enclave keeps a bundle only when it verifies one of its own reports
/// against the pinned AMD root, and hands it out with its evidence only when the
/// firmware's extended report carries no certificates. The enclave sends no answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBundle {
    /// The certificates (at most [`crate::MAX_CERTS`] of [`crate::MAX_CERT_LEN`] bytes).
    pub certs: Vec<Vec<u8>>,
}

impl CertBundle {
    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len("certificate bundle", self.certs.len(), crate::MAX_CERTS)?;
        for cert in &self.certs {
            check_len("bundled certificate", cert.len(), crate::MAX_CERT_LEN)?;
        }
        Ok(())
    }
}

/// Messages carried in plain frames, visible to the untrusted shim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlainMessage {
    /// Client asks for evidence.
    EvidenceRequest(EvidenceRequest),
    /// Enclave answers with its evidence.
    EvidenceResponse(Evidence),
    /// Client opens a sealed session.
    SessionOpen(SessionOpen),
    /// Enclave accepts it.
    SessionAccept(SessionAccept),
    /// Enclave hands the shim a signed cumulative charge for settlement.
    Charge(ChargeBoc),
    /// Either side reports a failure outside a session.
    Error(ErrorMessage),
    /// The shim hands the enclave certificates for its reports (no answer follows).
    CertBundle(CertBundle),
    /// Client binds its session to a payment channel ([`crate::billing`]).
    ChannelBind(crate::billing::ChannelBind),
    /// Shim reports what the chain holds for the bound channel ([`crate::billing`]).
    ChannelStatus(crate::billing::ChannelStatus),
}

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person asking.
    User,
    /// The model's earlier replies.
    Assistant,
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub content: String,
}

/// The input of an inference request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    /// A conversation, rendered by the model's chat template inside the enclave.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as it is.
    Text(String),
}

/// How to pick tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy. Must be finite and non-negative.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Seed of the sampler's RNG, for reproducible sampling.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
    };

    fn check(&self) -> Result<(), ProtocolError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid("temperature", self.temperature, "finite and >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", self.top_p, "in (0, 1]"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, found: f32, expected: &'static str) -> ProtocolError {
    ProtocolError::InvalidValue {
        field,
        found: found.to_string(),
        expected,
    }
}

/// Client to enclave, sealed: run the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceRequest {
    /// The client's id for this request, echoed in the [`Receipt`].
    pub request_id: u64,
    /// What to complete.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// How to pick them.
    pub sampling: SamplingParams,
    /// Stream [`StreamChunk`]s as tokens come, or send one chunk at the end.
    pub stream: bool,
}

impl InferenceRequest {
    /// SHA-256("chrysalis/v1/request" ‖ postcard(self)): what a [`Receipt`] names.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(REQUEST_HASH_LABEL);
        hasher.update(self.to_wire());
        hasher.finalize().into()
    }
}

/// Enclave to client, sealed: newly generated text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// Position of this chunk in the response, from 0.
    pub index: u32,
    /// Text decoded from `token_ids` (may be empty while a character is incomplete).
    pub text: String,
    /// Token ids generated since the previous chunk.
    pub token_ids: Vec<u32>,
}

/// Tokens counted inside the enclave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The client or the enclave cancelled the request.
    Cancelled,
}

/// Enclave to client, sealed: the end of a response, with the signed receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnd {
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The enclave's signature over the model, the request and the usage (the usage
    /// lives only here, so it cannot disagree with what was signed).
    pub receipt: Signed<Receipt>,
}

/// Messages carried only inside sealed frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SealedMessage {
    /// Client asks for a completion.
    Request(InferenceRequest),
    /// Enclave streams text.
    Chunk(StreamChunk),
    /// Enclave ends the response.
    End(ResponseEnd),
    /// Either side reports a failure inside the session.
    Error(ErrorMessage),
    /// Enclave bills a response on the bound channel, before its [`ResponseEnd`].
    Bill(Signed<crate::billing::Bill>),
}

impl WireMessage for SessionOpen {
    const NAME: &'static str = "session open";
}

impl WireMessage for SessionAccept {
    const NAME: &'static str = "session accept";
}

impl WireMessage for ErrorMessage {
    const NAME: &'static str = "error message";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len("error message", self.message.len(), MAX_ERROR_MESSAGE_LEN)
    }
}

impl WireMessage for InferenceRequest {
    const NAME: &'static str = "inference request";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        if let Prompt::Chat(turns) = &self.prompt {
            check_len("chat messages", turns.len(), MAX_CHAT_MESSAGES)?;
        }
        self.sampling.check()
    }
}

impl WireMessage for StreamChunk {
    const NAME: &'static str = "stream chunk";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len("chunk token ids", self.token_ids.len(), MAX_CHUNK_TOKENS)
    }
}

impl WireMessage for PlainMessage {
    const NAME: &'static str = "plain message";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        match self {
            PlainMessage::EvidenceResponse(evidence) => evidence.check_bounds(),
            PlainMessage::Error(error) => error.check_bounds(),
            PlainMessage::CertBundle(bundle) => bundle.check_bounds(),
            PlainMessage::Charge(charge) => check_len(
                "charge boc",
                charge.boc.len(),
                crate::ton::MAX_SIGNED_CHARGE_BOC,
            ),
            PlainMessage::ChannelBind(bind) => bind.check_bounds(),
            PlainMessage::ChannelStatus(status) => status.check_bounds(),
            PlainMessage::EvidenceRequest(_)
            | PlainMessage::SessionOpen(_)
            | PlainMessage::SessionAccept(_) => Ok(()),
        }
    }
}

impl WireMessage for SealedMessage {
    const NAME: &'static str = "sealed message";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        match self {
            SealedMessage::Request(request) => request.check_bounds(),
            SealedMessage::Chunk(chunk) => chunk.check_bounds(),
            SealedMessage::Error(error) => error.check_bounds(),
            SealedMessage::End(_) => Ok(()),
            SealedMessage::Bill(bill) => bill.body.check_bounds(),
        }
    }
}

impl PlainMessage {
    /// This message as a plain frame.
    pub fn to_frame(&self) -> Result<Frame, ProtocolError> {
        Frame::new(FrameKind::Plain, 0, self.to_wire())
    }

    /// This message as plain-frame wire bytes, ready to send.
    pub fn to_frame_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        Ok(self.to_frame()?.to_bytes())
    }

    /// Decodes the message in a plain frame; a sealed frame is refused.
    pub fn from_frame(frame: &Frame) -> Result<Self, ProtocolError> {
        frame.kind().expect(FrameKind::Plain)?;
        Self::from_wire(frame.body())
    }
}
