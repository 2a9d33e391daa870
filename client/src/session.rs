//! A sealed session through the shim: verify, open, request, stream, check receipt.

use chrysalis_protocol::{
    ErrorMessage, FinishReason, Frame, InferenceRequest, PlainMessage, Receipt, SealedChannel,
    SealedMessage, StreamChunk, Usage,
};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio_tungstenite::tungstenite::Message;

use crate::attest::{self, AttestError, TrustOptions, Verdict};
use crate::transport::{Endpoint, SessionSocket};

/// Why a session or request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The evidence was not accepted.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The shim could not be reached or the socket failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The enclave refused (limits, overload, bad request), with its reason.
    #[error("enclave refused the request ({code:?}): {message}")]
    Refused {
        /// The enclave's error category.
        code: chrysalis_protocol::ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The session ended before the response did.
    #[error("session closed: {0}")]
    Closed(String),
    /// A frame from the enclave did not open or decode: the session is unusable.
    #[error("protocol: {0}")]
    Protocol(#[from] chrysalis_protocol::ProtocolError),
    /// The receipt does not match what was asked and received.
    #[error("receipt check failed: {0}")]
    Receipt(String),
}

/// One finished response.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Generated text (special tokens left out).
    pub text: String,
    /// Generated token ids, the stop token included.
    pub token_ids: Vec<u32>,
    /// Tokens metered by the enclave, as signed in the receipt.
    pub usage: Usage,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// The verified receipt.
    pub receipt: Receipt,
}

/// An open sealed session.
pub struct Session {
    socket: SessionSocket,
    channel: SealedChannel,
    verdict: Verdict,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("insecure", &self.verdict.insecure)
            .finish_non_exhaustive()
    }
}

fn transport(e: impl std::fmt::Display) -> SessionError {
    SessionError::Transport(e.to_string())
}

impl Session {
    /// Fetches and verifies fresh evidence, then opens a session bound to it.
    pub async fn open(endpoint: &Endpoint, trust: &TrustOptions) -> Result<Self, SessionError> {
        let verdict = attest::fetch_and_verify(endpoint, trust).await?;
        Self::open_verified(endpoint, verdict).await
    }

    /// Opens a session bound to evidence already verified (once per session).
    pub async fn open_verified(
        endpoint: &Endpoint,
        verdict: Verdict,
    ) -> Result<Self, SessionError> {
        let mut socket = endpoint
            .open_socket()
            .await
            .map_err(SessionError::Transport)?;
        let (channel, open) = SealedChannel::client(
            &mut OsRng,
            &verdict.evidence.x25519_pub,
            &verdict.evidence.hash(),
        )?;
        let frame = PlainMessage::SessionOpen(open).to_frame_bytes()?;
        socket
            .send(Message::Binary(frame.into()))
            .await
            .map_err(transport)?;
        let reply = next_frame(&mut socket).await?;
        match PlainMessage::from_frame(&reply)? {
            PlainMessage::SessionAccept(_) => Ok(Self {
                socket,
                channel,
                verdict,
            }),
            PlainMessage::Error(e) => Err(refused(e)),
            _ => Err(SessionError::Closed("expected a session accept".into())),
        }
    }

    /// The verification verdict this session is bound to.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Sends one sealed request and collects the response, calling `on_chunk` for each
    /// chunk as it arrives; checks the receipt at the end.
    pub async fn request(
        &mut self,
        request: &InferenceRequest,
        mut on_chunk: impl FnMut(&StreamChunk),
    ) -> Result<Completion, SessionError> {
        let sealed = self
            .channel
            .seal_message(&SealedMessage::Request(request.clone()))?;
        self.socket
            .send(Message::Binary(sealed.into()))
            .await
            .map_err(transport)?;
        let (mut text, mut token_ids) = (String::new(), Vec::new());
        loop {
            let frame = next_frame(&mut self.socket).await?;
            if frame.kind() == chrysalis_protocol::FrameKind::Plain {
                // Only errors travel plain inside a session (the channel is then closed).
                return match PlainMessage::from_frame(&frame)? {
                    PlainMessage::Error(e) => Err(refused(e)),
                    _ => Err(SessionError::Closed(
                        "unexpected plain message in a session".into(),
                    )),
                };
            }
            match self.channel.open_message(&frame)? {
                SealedMessage::Chunk(chunk) => {
                    on_chunk(&chunk);
                    text.push_str(&chunk.text);
                    token_ids.extend_from_slice(&chunk.token_ids);
                }
                SealedMessage::End(end) => {
                    let receipt = self.check_receipt(request, &end.receipt, token_ids.len())?;
                    return Ok(Completion {
                        text,
                        token_ids,
                        usage: receipt.usage,
                        finish_reason: end.finish_reason,
                        receipt,
                    });
                }
                SealedMessage::Error(e) => return Err(refused(e)),
                SealedMessage::Bill(_) => {
                    return Err(SessionError::Closed(
                        "the enclave sent a bill, but no payment channel is bound".into(),
                    ))
                }
                SealedMessage::Request(_) => {
                    return Err(SessionError::Closed("the enclave sent a request".into()))
                }
            }
        }
    }

    fn check_receipt(
        &self,
        request: &InferenceRequest,
        signed: &chrysalis_protocol::Signed<Receipt>,
        received: usize,
    ) -> Result<Receipt, SessionError> {
        let ev = &self.verdict.evidence;
        let receipt = signed
            .verify(&ev.ed25519_pub)
            .map_err(|e| SessionError::Receipt(e.to_string()))?;
        let problems = [
            (
                receipt.request_hash != request.hash(),
                "it names another request",
            ),
            (
                receipt.request_id != request.request_id,
                "it names another request id",
            ),
            (
                receipt.evidence_hash != ev.hash(),
                "it names other evidence",
            ),
            (
                receipt.model_root != ev.model_root,
                "it names another model",
            ),
            (
                receipt.usage.completion_tokens as usize != received,
                "its completion tokens differ from the tokens received",
            ),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(SessionError::Receipt((*why).to_owned())),
            None => Ok(receipt.clone()),
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

fn refused(e: ErrorMessage) -> SessionError {
    SessionError::Refused {
        code: e.code,
        message: e.message,
    }
}

/// The next binary message as a frame; a close says why.
async fn next_frame(socket: &mut SessionSocket) -> Result<Frame, SessionError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(Frame::decode(&bytes)?),
            Some(Ok(Message::Close(Some(close)))) => {
                return Err(SessionError::Closed(format!(
                    "the shim closed the session: {}",
                    close.reason
                )))
            }
            Some(Ok(Message::Close(None))) | None => {
                return Err(SessionError::Closed(
                    "the shim closed the connection".into(),
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(transport(e)),
        }
    }
}
