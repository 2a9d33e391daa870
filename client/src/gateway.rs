//! An OpenAI-compatible gateway on localhost: `/v1/models` and `/v1/chat/completions`
//! (with and without `stream: true`, as server-sent events), so existing applications
//! and the official SDKs talk to a verified enclave unchanged.
//!
//! Every upstream request is sealed. Sessions are verified when they are opened (fresh
//! evidence, fresh nonce, once per session) and kept in a small pool for reuse; a
//! session that fails is dropped and the next request opens a new one. When the
//! session's verdict is INSECURE (simulated evidence, or the launch measurement not
//! compared) every response carries `system_fingerprint: "INSECURE-..."` naming why
//! (`INSECURE-simulated-evidence`, `INSECURE-any-measurement`) and the header
//! `x-chrysalis-insecure: true`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrysalis_protocol::{
    ChatMessage, FinishReason, InferenceRequest, Prompt, Role, SamplingParams,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::attest::{fingerprint_of, Insecurity, TrustOptions};
use crate::session::{Completion, Session, SessionError};
use crate::transport::Endpoint;

/// The model id the gateway reports and accepts (any id is accepted).
pub const MODEL_ID: &str = "chrysalis";
/// Default `max_tokens` when a request gives none.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// Idle sessions kept for reuse.
const POOL_SIZE: usize = 8;

/// Gateway state.
pub struct Gateway {
    endpoint: Endpoint,
    trust: TrustOptions,
    idle: Mutex<Vec<Session>>,
}

impl Gateway {
    /// A gateway to the shim at `endpoint`.
    pub fn new(endpoint: Endpoint, trust: TrustOptions) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            trust,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The axum router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::clone(self))
    }

    async fn session(&self) -> Result<Session, SessionError> {
        if let Some(s) = self.idle.lock().await.pop() {
            return Ok(s);
        }
        Session::open(&self.endpoint, &self.trust).await
    }

    async fn give_back(&self, session: Session) {
        let mut idle = self.idle.lock().await;
        if idle.len() < POOL_SIZE {
            idle.push(session);
        }
    }

    /// Runs one request on a pooled session; a reused session that turns out dead
    /// (closed by the shim, idled out) is replaced once by a fresh one.
    async fn complete(
        &self,
        request: &InferenceRequest,
        on_chunk: &mut (dyn FnMut(&chrysalis_protocol::StreamChunk) + Send),
    ) -> Result<(Completion, Vec<Insecurity>), SessionError> {
        for attempt in 0..2 {
            let mut session = self.session().await?;
            let insecure = session.verdict().insecurities.clone();
            match session.request(request, &mut *on_chunk).await {
                Ok(done) => {
                    self.give_back(session).await;
                    return Ok((done, insecure));
                }
                Err(SessionError::Closed(_) | SessionError::Transport(_)) if attempt == 0 => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(SessionError::Closed("no session could be opened".into()))
    }
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": MODEL_ID, "object": "model", "created": 0, "owned_by": "chrysalis" }],
    }))
}

/// The subset of OpenAI's request the gateway understands.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

fn api_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "code": Value::Null } });
    (status, Json(body)).into_response()
}

fn to_request(req: &ChatRequest) -> Result<InferenceRequest, String> {
    let mut turns = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(format!(
                    "message role {other:?}: expected system, user or assistant"
                ))
            }
        };
        turns.push(ChatMessage {
            role,
            content: content_text(&m.content)?,
        });
    }
    Ok(InferenceRequest {
        request_id: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        prompt: Prompt::Chat(turns),
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        sampling: SamplingParams {
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            top_k: 0,
            seed: req.seed.unwrap_or(0),
        },
        stream: req.stream,
    })
}

/// A message's text: a string, or an array of `{type: "text", text}` parts.
fn content_text(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t),
                    _ => Err(
                        "content parts: only {\"type\": \"text\"} parts are supported".to_owned(),
                    ),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        Value::Null => Ok(String::new()),
        _ => Err("message content: expected a string or an array of text parts".into()),
    }
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "stop",
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    let mut bytes = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    format!("chatcmpl-{}", hex::encode(bytes))
}

fn session_error(e: &SessionError) -> Response {
    match e {
        SessionError::Refused { message, .. } => api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.clone(),
        ),
        SessionError::Attest(a) => {
            api_error(StatusCode::BAD_GATEWAY, "attestation_error", a.to_string())
        }
        other => api_error(StatusCode::BAD_GATEWAY, "upstream_error", other.to_string()),
    }
}

fn usage_json(done: &Completion) -> Value {
    let u = done.usage;
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

async fn chat_completions(State(gw): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("request body: {e}"),
            )
        }
    };
    let request = match to_request(&req) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let model = req.model.clone().unwrap_or_else(|| MODEL_ID.to_owned());
    if req.stream {
        return stream_completion(gw, request, model);
    }
    match gw.complete(&request, &mut |_| {}).await {
        Ok((done, insecure)) => {
            let body = json!({
                "id": completion_id(),
                "object": "chat.completion",
                "created": now_secs(),
                "model": model,
                "system_fingerprint": fingerprint_of(&insecure),
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": done.text },
                    "finish_reason": finish_name(done.finish_reason),
                }],
                "usage": usage_json(&done),
            });
            with_insecure_header(Json(body).into_response(), !insecure.is_empty())
        }
        Err(e) => session_error(&e),
    }
}

fn with_insecure_header(mut resp: Response, insecure: bool) -> Response {
    if insecure {
        resp.headers_mut()
            .insert("x-chrysalis-insecure", HeaderValue::from_static("true"));
    }
    resp
}

/// Streams chunks as server-sent events, ending with usage and `[DONE]`.
fn stream_completion(gw: Arc<Gateway>, request: InferenceRequest, model: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let id = completion_id();
    let created = now_secs();
    let chunk = move |delta: Value, finish: Value, usage: Value, insecure: &[Insecurity]| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": fingerprint_of(insecure),
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            "usage": usage,
        })
    };
    tokio::spawn(async move {
        // Before a session is open, the options say what may be given up.
        let insecure = gw.trust.insecurities();
        let _ = tx.send(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
            &insecure,
        ));
        let sender = tx.clone();
        let chunk_for_text = chunk.clone();
        let mut on_chunk = move |c: &chrysalis_protocol::StreamChunk| {
            if !c.text.is_empty() {
                let _ = sender.send(chunk_for_text(
                    json!({"content": c.text}),
                    Value::Null,
                    Value::Null,
                    &insecure,
                ));
            }
        };
        match gw.complete(&request, &mut on_chunk).await {
            Ok((done, insecure)) => {
                let finish = json!(finish_name(done.finish_reason));
                let _ = tx.send(chunk(json!({}), finish, usage_json(&done), &insecure));
            }
            Err(e) => {
                let _ = tx.send(
                    json!({ "error": { "message": e.to_string(), "type": "upstream_error" } }),
                );
            }
        }
    });
    let events = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => Some((
                Ok::<_, Infallible>(Event::default().data(v.to_string())),
                (rx, false),
            )),
            None => Some((Ok(Event::default().data("[DONE]")), (rx, true))),
        }
    });
    Sse::new(events).into_response()
}
