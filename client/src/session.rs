//! A sealed session through the shim: verify, open, request, stream, check receipt.

use chrysalis_protocol::billing::{Bill, BillChain, BillingError, ChannelBind, CheckedBill};
use chrysalis_protocol::ton::ChannelConfig;
use chrysalis_protocol::{
    ClientHandshake, ErrorMessage, FinishReason, ForeignFrame, Frame, InferenceRequest,
    PlainMessage, Receipt, SealedChannel, SealedMessage, StreamChunk, Usage,
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
    /// The enclave's session accept was refused (its signature over the transcript does
    /// not verify under the evidence's key, or its key share is weak): no key was
    /// derived and the session is closed.
    #[error("the enclave's session accept was refused, session closed: {0}")]
    Handshake(chrysalis_protocol::ProtocolError),
    /// The enclave speaks another protocol version (both are named).
    #[error("{0}")]
    Version(String),
    /// A frame from the enclave did not open or decode: the session is unusable.
    #[error("protocol: {0}")]
    Protocol(#[from] chrysalis_protocol::ProtocolError),
    /// The receipt does not match what was asked and received.
    #[error("receipt check failed: {0}")]
    Receipt(String),
    /// A bill is missing, forged, or disagrees with the receipt or the chain.
    #[error(transparent)]
    Bill(#[from] BillingError),
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
    /// The verified bill, when the session is bound to a payment channel and the
    /// enclave charges for its work.
    pub bill: Option<CheckedBill>,
}

/// An open sealed session.
pub struct Session {
    socket: SessionSocket,
    channel: SealedChannel,
    verdict: Verdict,
    /// This session's ephemeral key, which a channel binding signs.
    client_ephemeral_pub: [u8; 32],
    /// The bound payment channel's bill chain.
    bills: Option<BillChain>,
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
        let (handshake, open) = ClientHandshake::start(&mut OsRng, &verdict.evidence);
        let client_ephemeral_pub = open.client_ephemeral_pub;
        let frame = PlainMessage::SessionOpen(open).to_frame_bytes()?;
        socket
            .send(Message::Binary(frame.into()))
            .await
            .map_err(transport)?;
        let reply = next_frame(&mut socket).await?;
        match PlainMessage::from_frame(&reply)? {
            PlainMessage::SessionAccept(accept) => {
                // The signature is checked before any key is derived; the ephemeral
                // secrets are wiped whatever the outcome.
                let channel = handshake.finish(&accept).map_err(SessionError::Handshake)?;
                Ok(Self {
                    socket,
                    channel,
                    verdict,
                    client_ephemeral_pub,
                    bills: None,
                })
            }
            PlainMessage::Error(e) => Err(refused(e)),
            _ => Err(SessionError::Closed("expected a session accept".into())),
        }
    }

    /// The verification verdict this session is bound to.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Bills this session's requests to the payment channel `config`, whose client is
    /// the wallet v5r1 of `wallet_key`. The binding is signed for this session only;
    /// the enclave checks it with the next request, and every later response then
    /// carries a bill that [`Session::request`] verifies.
    pub async fn bind_channel(
        &mut self,
        config: &ChannelConfig,
        wallet_key: &ed25519_dalek::SigningKey,
    ) -> Result<(), SessionError> {
        let ev = &self.verdict.evidence;
        let bind = ChannelBind::new(config, wallet_key, &ev.hash(), &self.client_ephemeral_pub)
            .map_err(BillingError::from)?;
        let frame = PlainMessage::ChannelBind(bind).to_frame_bytes()?;
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .map_err(transport)?;
        self.bills = Some(BillChain::new(config.clone()).map_err(BillingError::from)?);
        Ok(())
    }

    /// The bound channel's bill chain, if any.
    pub fn bills(&self) -> Option<&BillChain> {
        self.bills.as_ref()
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
        let mut bill: Option<chrysalis_protocol::Signed<Bill>> = None;
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
                    let delivered = Delivered {
                        token_ids: &token_ids,
                        finish_reason: end.finish_reason,
                    };
                    let receipt = self.check_receipt(request, &end.receipt, &delivered)?;
                    let bill = self.check_bill(bill.as_ref(), &receipt)?;
                    return Ok(Completion {
                        text,
                        token_ids,
                        usage: receipt.usage,
                        finish_reason: end.finish_reason,
                        receipt,
                        bill,
                    });
                }
                SealedMessage::Error(e) => return Err(refused(e)),
                SealedMessage::Bill(signed) => bill = Some(signed),
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
        delivered: &Delivered<'_>,
    ) -> Result<Receipt, SessionError> {
        let received = delivered.token_ids.len();
        let output = chrysalis_protocol::output_hash(delivered.token_ids, delivered.finish_reason);
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
            (
                receipt.output_hash != output,
                "its output hash differs from the tokens and finish reason received",
            ),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(SessionError::Receipt((*why).to_owned())),
            None => Ok(receipt.clone()),
        }
    }

    /// Checks the response's bill against its receipt and the bound channel's chain
    /// (signature, prices times the receipt's tokens, the cumulative charge and its
    /// token totals, the link to the previous bill). A bill without a bound channel is
    /// refused; no bill on a bound channel means the enclave serves for free.
    fn check_bill(
        &mut self,
        bill: Option<&chrysalis_protocol::Signed<Bill>>,
        receipt: &Receipt,
    ) -> Result<Option<CheckedBill>, SessionError> {
        let key = self.verdict.evidence.ed25519_pub;
        match (bill, self.bills.as_mut()) {
            (None, _) => Ok(None),
            (Some(bill), Some(chain)) => Ok(Some(chain.check(bill, receipt, &key)?.clone())),
            (Some(_), None) => Err(SessionError::Closed(
                "the enclave sent a bill, but no payment channel is bound".into(),
            )),
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
            Some(Ok(Message::Binary(bytes))) => {
                if let Some(foreign) = ForeignFrame::parse(&bytes) {
                    return Err(SessionError::Version(crate::transport::version_mismatch(
                        &foreign,
                    )));
                }
                return Ok(Frame::decode(&bytes)?);
            }
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

/// What a response delivered, as the client received it.
struct Delivered<'a> {
    token_ids: &'a [u32],
    finish_reason: chrysalis_protocol::FinishReason,
}
