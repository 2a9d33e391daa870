//! One connection from the shim: evidence requests, then at most one sealed session.
//!
//! The connection moves through typed states: [`serve_connection`] answers plain
//! messages until a session-open arrives; [`Session::run`] then accepts only sealed
//! frames. Any frame the channel refuses (bad tag, replayed or out-of-order counter,
//! wrong kind) ends the session with a plain error that names the check and never
//! quotes content. Each request streams sealed chunks and ends with a signed receipt.

use std::sync::Arc;
use std::time::Instant;

use chrysalis_protocol::{
    Envelope, ErrorCode, ErrorMessage, ForeignFrame, Frame, FrameHeader, InferenceRequest,
    PlainMessage, ProtocolError, Receipt, ResponseEnd, SealedChannel, SealedMessage, Signed,
    StreamChunk, Usage, HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::scheduler::{Event, FinishReason as JobFinish, Job, JobError};
use super::Server;

/// Why a connection ended early; logged with sizes only.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading or writing the socket failed (the shim or client went away).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame or message the protocol refuses.
    #[error("protocol violation: {0}")]
    Protocol(#[from] chrysalis_protocol::ProtocolError),
    /// No frame arrived within the idle timeout.
    #[error("idle for {0} s")]
    Idle(u64),
}

/// Reads one frame, validating its header before allocating the body; `None` at a
/// clean end of stream. A frame of another protocol version fails with
/// [`ProtocolError::UnknownVersion`]; its body is read and dropped, never buffered.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame>, ConnError> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let header = match FrameHeader::parse(&head) {
        Ok(header) => header,
        Err(e @ ProtocolError::UnknownVersion { .. }) => {
            // Drain the foreign frame's body (bounded by the maximum frame size) so the
            // refusal is not lost to the reset that closing over unread bytes sends.
            if let Ok(envelope) = Envelope::parse(&head) {
                let mut body = (&mut *r).take(u64::from(envelope.body_len));
                tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut bytes = vec![0u8; header.frame_len()];
    bytes[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut bytes[HEADER_LEN..]).await?;
    Ok(Some(Frame::decode(&bytes)?))
}

/// Reads the next frame within the idle timeout. A frame the protocol refuses (bad
/// version or kind, a length over the maximum, a malformed body) is answered with a
/// plain error that names the problem, so the peer learns why the connection ends.
async fn read_or_refuse<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    stream: &mut S,
) -> Result<Option<Frame>, ConnError> {
    match server.read_idle(read_frame(stream)).await {
        Err(ConnError::Protocol(ProtocolError::UnknownVersion { found, expected })) => {
            // Answered in the peer's own version: every version reads a plain error the
            // same way, so an old client shows why instead of a dropped connection.
            let refusal = error_message(ErrorCode::UnsupportedVersion, version_advice(found));
            write_bytes(stream, &ForeignFrame::refusal(found, refusal)?).await?;
            Err(ConnError::Protocol(ProtocolError::UnknownVersion {
                found,
                expected,
            }))
        }
        Err(ConnError::Protocol(e)) => {
            let why = format!("frame refused, connection closed: {e}");
            let refusal = error_message(ErrorCode::BadRequest, why);
            send_plain(stream, &PlainMessage::Error(refusal)).await?;
            Err(ConnError::Protocol(e))
        }
        other => other,
    }
}

/// What a client speaking protocol `found` is told.
fn version_advice(found: u16) -> String {
    let ours = chrysalis_protocol::PROTOCOL_VERSION;
    let advice = if found < ours {
        "upgrade the client".to_owned()
    } else {
        format!("this enclave is older than the client; use a client that speaks v{ours}")
    };
    format!("client speaks protocol v{found}, this enclave speaks v{ours}: {advice}")
}

async fn write_bytes(w: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), ConnError> {
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

async fn send_plain(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &PlainMessage,
) -> Result<(), ConnError> {
    write_bytes(w, &msg.to_frame_bytes()?).await
}

fn error_message(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
    let mut message = message.into();
    message.truncate(chrysalis_protocol::MAX_ERROR_MESSAGE_LEN);
    ErrorMessage { code, message }
}

/// Serves one connection until it closes, idles out, or misbehaves.
pub async fn serve_connection<S>(server: Arc<Server>, mut stream: S) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = match read_or_refuse(&server, &mut stream).await? {
            Some(frame) => frame,
            None => return Ok(()),
        };
        let message = match PlainMessage::from_frame(&frame) {
            Ok(m) => m,
            Err(e) => {
                let refusal = error_message(
                    ErrorCode::BadRequest,
                    format!("expected a plain message: {e}"),
                );
                send_plain(&mut stream, &PlainMessage::Error(refusal)).await?;
                return Err(e.into());
            }
        };
        match message {
            PlainMessage::EvidenceRequest(req) => {
                let answer = match server.evidence_for(&req.nonce) {
                    Ok(evidence) => PlainMessage::EvidenceResponse(evidence),
                    Err((code, why)) => PlainMessage::Error(error_message(code, why)),
                };
                send_plain(&mut stream, &answer).await?;
            }
            PlainMessage::CertBundle(bundle) => server.offer_certificates(bundle.certs),
            PlainMessage::SessionOpen(open) => {
                let Some(permit) = server.try_session_permit() else {
                    let why = format!(
                        "the enclave serves at most {} sessions at once; retry later",
                        server.config.max_sessions
                    );
                    send_plain(
                        &mut stream,
                        &PlainMessage::Error(error_message(ErrorCode::Overloaded, why)),
                    )
                    .await?;
                    return Ok(());
                };
                let session_id = Server::next_session_id();
                let (channel, accept) = match server.accept_session(&open, session_id) {
                    Ok(accepted) => accepted,
                    Err(why) => {
                        send_plain(
                            &mut stream,
                            &PlainMessage::Error(error_message(ErrorCode::HandshakeFailed, why)),
                        )
                        .await?;
                        return Ok(());
                    }
                };
                send_plain(&mut stream, &PlainMessage::SessionAccept(accept)).await?;
                let session = Session {
                    server,
                    channel,
                    evidence_hash: open.evidence_hash,
                    client_ephemeral_pub: open.client_ephemeral_pub,
                    bound: None,
                    id: hex_id(&session_id),
                    _permit: permit,
                };
                return session.run(&mut stream).await;
            }
            other => {
                let why = format!(
                    "expected an evidence request or a session open, found {}",
                    plain_name(&other)
                );
                send_plain(
                    &mut stream,
                    &PlainMessage::Error(error_message(ErrorCode::BadRequest, why)),
                )
                .await?;
                return Ok(());
            }
        }
    }
}

fn plain_name(m: &PlainMessage) -> &'static str {
    match m {
        PlainMessage::EvidenceRequest(_) => "an evidence request",
        PlainMessage::EvidenceResponse(_) => "an evidence response",
        PlainMessage::SessionOpen(_) => "a session open",
        PlainMessage::SessionAccept(_) => "a session accept",
        PlainMessage::Charge(_) => "a charge",
        PlainMessage::Error(_) => "an error",
        PlainMessage::CertBundle(_) => "a certificate bundle",
        PlainMessage::ChannelBind(_) => "a channel bind",
        PlainMessage::ChannelStatus(_) => "a channel status",
    }
}

fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// An open sealed session.
struct Session {
    server: Arc<Server>,
    channel: SealedChannel,
    evidence_hash: [u8; 32],
    /// The client's ephemeral key: a channel binding signs it.
    client_ephemeral_pub: [u8; 32],
    /// The payment channel this session bills, once bound.
    bound: Option<super::billing::BoundChannel>,
    id: String,
    /// Held for the session's lifetime: it is what counts toward `max_sessions`.
    _permit: OwnedSemaphorePermit,
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        stream: &mut S,
    ) -> Result<(), ConnError> {
        tracing::info!(session = %self.id, "session opened");
        loop {
            let frame = match read_or_refuse(&self.server, stream).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(ConnError::Idle(secs)) => {
                    let why = format!("session idle for {secs} s; closed");
                    self.send_sealed(
                        stream,
                        &SealedMessage::Error(error_message(ErrorCode::BadRequest, why)),
                    )
                    .await?;
                    return Err(ConnError::Idle(secs));
                }
                Err(e) => return Err(e),
            };
            if frame.kind() == chrysalis_protocol::FrameKind::Plain {
                if let Err(why) = self.billing_frame(&frame) {
                    let refusal = error_message(ErrorCode::PaymentRequired, why);
                    send_plain(stream, &PlainMessage::Error(refusal)).await?;
                    return Ok(());
                }
                continue;
            }
            let message = match self.channel.open_message(&frame) {
                Ok(m) => m,
                Err(e) if self.channel.is_poisoned() => {
                    // Authentication failed: no key can seal an answer the client would
                    // trust, so say so in the clear. The reason names counters and the
                    // tag, never request content (nothing was decrypted).
                    tracing::info!(session = %self.id, "sealed frame failed authentication; session closed");
                    let why = format!("sealed frame refused, session closed: {e}");
                    send_plain(
                        stream,
                        &PlainMessage::Error(error_message(ErrorCode::BadRequest, why)),
                    )
                    .await?;
                    return Err(e.into());
                }
                Err(e) => {
                    // Decrypted but not a valid message: the reason can quote request
                    // fields (`top_p is 0`), so it travels sealed and the log keeps only
                    // that a request was malformed.
                    tracing::info!(session = %self.id, "sealed message malformed; refused");
                    let why = format!("request refused: {e}");
                    self.send_sealed(
                        stream,
                        &SealedMessage::Error(error_message(ErrorCode::BadRequest, why)),
                    )
                    .await?;
                    return Ok(());
                }
            };
            match message {
                SealedMessage::Request(request) => self.serve_request(stream, request).await?,
                _ => {
                    let why = "expected a request inside the session";
                    self.send_sealed(
                        stream,
                        &SealedMessage::Error(error_message(ErrorCode::BadRequest, why)),
                    )
                    .await?;
                    return Ok(());
                }
            }
        }
    }

    async fn send_sealed<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        msg: &SealedMessage,
    ) -> Result<(), ConnError> {
        let bytes = self.channel.seal_message(msg)?;
        write_bytes(stream, &bytes).await
    }

    /// A plain frame inside a session: only a channel bind (from the client) or a
    /// channel status (from the shim) may come this way.
    fn billing_frame(&mut self, frame: &Frame) -> Result<(), String> {
        let billing = &self.server.billing;
        match PlainMessage::from_frame(frame).map_err(|e| e.to_string())? {
            PlainMessage::ChannelBind(bind) => {
                let key = self.server.identity.keys.ed25519_public();
                let bound =
                    billing.bind(&bind, &self.evidence_hash, &self.client_ephemeral_pub, &key)?;
                tracing::info!(session = %self.id, "payment channel bound");
                self.bound = Some(bound);
                Ok(())
            }
            PlainMessage::ChannelStatus(status) => match &self.bound {
                Some(bound) => billing.status(bound, &status),
                None => Err("channel status before a channel bind".into()),
            },
            other => Err(format!(
                "expected a sealed frame, a channel bind or a channel status, found {}",
                plain_name(&other)
            )),
        }
    }

    /// Runs one request through the scheduler, streaming sealed chunks.
    async fn serve_request<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        request: InferenceRequest,
    ) -> Result<(), ConnError> {
        let started = Instant::now();
        let request_hash = request.hash();
        let request_id = request.request_id;
        let stream_chunks = request.stream;
        let server = Arc::clone(&self.server);
        let reservation = match server
            .billing
            .reserve(self.bound.as_ref(), request.max_tokens)
        {
            Ok(reservation) => reservation,
            Err(why) => {
                let refusal = error_message(ErrorCode::PaymentRequired, why.to_string());
                return self
                    .send_sealed(stream, &SealedMessage::Error(refusal))
                    .await;
            }
        };
        let job = Job {
            prompt: request.prompt,
            max_new_tokens: request.max_tokens,
            sampling: to_sampling(&request.sampling),
        };
        let mut events = self.server.scheduler.submit(job);
        let mut index = 0u32;
        // Every token id sent, for the receipt's output hash.
        let mut delivered: Vec<u32> = Vec::new();
        let mut pending = StreamChunk {
            index: 0,
            text: String::new(),
            token_ids: Vec::new(),
        };
        while let Some(event) = events.recv().await {
            match event {
                Event::Token { id, text } => {
                    pending.token_ids.push(id);
                    delivered.push(id);
                    pending.text.push_str(&text);
                    if stream_chunks
                        || pending.token_ids.len() >= chrysalis_protocol::MAX_CHUNK_TOKENS
                    {
                        pending.index = index;
                        index += 1;
                        let chunk = std::mem::replace(
                            &mut pending,
                            StreamChunk {
                                index: 0,
                                text: String::new(),
                                token_ids: Vec::new(),
                            },
                        );
                        // A failed write means the client is gone: returning drops
                        // `events`, which cancels the sequence at the next step.
                        self.send_sealed(stream, &SealedMessage::Chunk(chunk))
                            .await?;
                    }
                }
                Event::Finished {
                    prompt_tokens,
                    completion_tokens,
                    reason,
                } => {
                    if !pending.token_ids.is_empty() {
                        pending.index = index;
                        let chunk = std::mem::replace(
                            &mut pending,
                            StreamChunk {
                                index: 0,
                                text: String::new(),
                                token_ids: Vec::new(),
                            },
                        );
                        self.send_sealed(stream, &SealedMessage::Chunk(chunk))
                            .await?;
                    }
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens,
                    };
                    self.server.record_usage(usage);
                    let finish_reason = match reason {
                        JobFinish::Stop => chrysalis_protocol::FinishReason::Stop,
                        JobFinish::Length => chrysalis_protocol::FinishReason::Length,
                    };
                    let receipt = Receipt {
                        request_id,
                        evidence_hash: self.evidence_hash,
                        model_root: self.server.identity.model_root,
                        request_hash,
                        usage,
                        output_hash: chrysalis_protocol::output_hash(&delivered, finish_reason),
                    };
                    if let Some(reservation) = reservation {
                        let signing_key = self.server.identity.keys.signing_key();
                        match reservation.finish(&receipt, signing_key) {
                            // The charge goes to the shim first: it commits it before
                            // it relays the bill and the receipt.
                            Ok(billed) => {
                                send_plain(stream, &PlainMessage::Charge(billed.charge)).await?;
                                self.send_sealed(stream, &SealedMessage::Bill(billed.bill))
                                    .await?;
                            }
                            Err(e) => {
                                let refusal = error_message(ErrorCode::Internal, e.to_string());
                                return self
                                    .send_sealed(stream, &SealedMessage::Error(refusal))
                                    .await;
                            }
                        }
                    }
                    let end = ResponseEnd {
                        finish_reason,
                        receipt: Signed::sign(receipt, self.server.identity.keys.signing_key()),
                    };
                    tracing::info!(session = %self.id, prompt_tokens, completion_tokens, ms = started.elapsed().as_millis() as u64, "request served");
                    return self.send_sealed(stream, &SealedMessage::End(end)).await;
                }
                Event::Failed(e) => {
                    // Only the kind of refusal: its text can carry request fields.
                    tracing::info!(session = %self.id, reason = e.kind(), "request refused");
                    let code = match e {
                        JobError::Engine(_) | JobError::EngineGone => ErrorCode::Internal,
                        _ => ErrorCode::BadRequest,
                    };
                    return self
                        .send_sealed(
                            stream,
                            &SealedMessage::Error(error_message(code, e.to_string())),
                        )
                        .await;
                }
            }
        }
        let why = "the engine stopped before the request finished";
        self.send_sealed(
            stream,
            &SealedMessage::Error(error_message(ErrorCode::Internal, why)),
        )
        .await
    }
}

/// The wire's sampling parameters as the sampler's (no repetition penalty or min-p
/// on the wire yet: they stay neutral).
fn to_sampling(
    p: &chrysalis_protocol::SamplingParams,
) -> chrysalis_models::sampling::SamplingParams {
    chrysalis_models::sampling::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: p.seed,
    }
}
