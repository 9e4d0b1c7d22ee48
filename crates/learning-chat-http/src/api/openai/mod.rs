//! The tutors behind OpenAI's Chat Completions API, so OpenAI SDKs, chat front-ends and LMS
//! plugins whose base URL can be set talk to them unchanged: `GET /v1/models` and
//! `POST /v1/chat/completions` (whole or streamed).
//!
//! A thin translation: a request becomes the same [`Ask`] the native endpoints make, so cache,
//! coalescing (one model call for identical questions and streams, across servers too), quota,
//! keys, fair share and conversations are the native endpoints' own. A first question (one
//! `user` message) has the native key and shares the cache with every learner; earlier
//! messages are the history ([`learning_chat_engine::chat::Thread::Turns`]), bounded and keyed like a stored
//! conversation's. `system` messages are ignored: the tutor's instructions always apply.
//! Errors take OpenAI's shape ([`error`]).

pub mod cut;
pub mod error;
pub mod request;
pub mod wire;

pub use error::{refused, OpenAiError, OpenAiErrorBody, OpenAiErrorObject};

use super::stream::{open_stream, respond, StreamFormat, Streamed};
use super::{ApiError, ApiJson, AppState};
use crate::auth::{Identified, RateLimitState};
use crate::routes;
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cut::{Cut, Ended};
use learning_chat_engine::chat::{Answer, AnswerText, Ask, ChatError};
use request::Completion;
use std::time::Instant as StdInstant;
use tokio::time::Instant;
use wire::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    ChunkChoice, CompletionUsage, Delta, Model, ModelList,
};

/// `owned_by` of every model.
const OWNER: &str = "learning-chat";

/// The tutors as OpenAI models: one per agent the caller's key may use.
#[utoipa::path(
    get,
    path = routes::OPENAI_MODELS,
    tag = "OpenAI-compatible",
    responses(
        (status = 200, description = "One model per tutor the key may use", body = ModelList),
        (status = 401, description = "Missing or unknown API key (auth.mode = required)", body = OpenAiErrorBody),
    )
)]
pub async fn models(
    State(state): State<AppState>,
    key: Option<Extension<Identified>>,
) -> Json<ModelList> {
    let created = started_at();
    let data = state
        .chat
        .agents()
        .all()
        .filter(|a| key.as_ref().is_none_or(|k| k.allows_agent(a.id())))
        .map(|a| Model {
            id: a.definition.id.clone(),
            object: "model",
            created,
            owned_by: OWNER,
            name: a.definition.name.clone(),
            description: a.definition.description.clone(),
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Ask a tutor (`model`) in OpenAI's Chat Completions format, whole or streamed.
///
/// Earlier `user`/`assistant` messages are the history (bounded like a conversation's; the
/// same history shares cached answers); or send the `conversation_id` of an earlier answer
/// with only the new message. `system` messages are ignored: the tutor's instructions always
/// apply. `max_tokens` and `stop` cut the answer sent; `temperature` and `top_p` are applied
/// (an answer with values other than the tutor's is cached apart); `tools`, `n` > 1 and images are
/// refused (400 `unsupported`). With `stream: true`: `chat.completion.chunk` events, a last
/// chunk with `finish_reason`, a usage chunk with `stream_options.include_usage`, then
/// `data: [DONE]`.
#[utoipa::path(
    post,
    path = routes::OPENAI_CHAT_COMPLETIONS,
    tag = "OpenAI-compatible",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer (`application/json`), or with `stream: true` `text/event-stream` of `data: ChatCompletionChunk` events then `data: [DONE]`", body = ChatCompletion),
        (status = 400, description = "`invalid_request_error`: a bad body or field (`param` names it), `unsupported` (tools, n > 1, images), `content_filter` (blocked by safety filters)", body = OpenAiErrorBody),
        (status = 401, description = "`invalid_api_key`: missing or unknown API key (auth.mode = required)", body = OpenAiErrorBody),
        (status = 403, description = "API key revoked", body = OpenAiErrorBody),
        (status = 404, description = "`model_not_found`: no such tutor, or the key may not use it; or an unknown `conversation_id`", body = OpenAiErrorBody),
        (status = 409, description = "The conversation belongs to another tutor, or is busy", body = OpenAiErrorBody),
        (status = 429, description = "`rate_limit_exceeded`: a per-key or per-learner limit; see `retry-after` and `x-ratelimit-*`", body = OpenAiErrorBody),
        (status = 502, description = "The model failed", body = OpenAiErrorBody),
        (status = 503, description = "Overloaded or quota used up (`overloaded`), or too many streams; see `retry-after`", body = OpenAiErrorBody),
        (status = 504, description = "Deadline exceeded", body = OpenAiErrorBody),
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    key: Option<Extension<Identified>>,
    body: Result<ApiJson<ChatCompletionRequest>, ApiError>,
) -> Response {
    let started = StdInstant::now();
    let mut rate = None;
    match complete(&state, key, body, started, &mut rate).await {
        Ok(mut response) => {
            if let Some(rate) = rate {
                rate.write_openai(response.headers_mut());
            }
            response
        }
        Err(error) => error.with_rate(rate).into_response(),
    }
}

/// The answer to a completion request; `rate` gets what the key's limits said.
async fn complete(
    state: &AppState,
    key: Option<Extension<Identified>>,
    body: Result<ApiJson<ChatCompletionRequest>, ApiError>,
    started: StdInstant,
    rate: &mut Option<RateLimitState>,
) -> Result<Response, OpenAiError> {
    let ApiJson(request) = body?;
    let completion = Completion::try_from(request)?;
    // The tutors a refusal lists: those the key may use (as `/v1/models` lists them).
    let usable = |model: &str| {
        let known = state.chat.agents().ids().into_iter();
        let usable: Vec<String> = match &key {
            Some(Extension(key)) => known.filter(|id| key.allows_agent(id)).collect(),
            None => known.collect(),
        };
        OpenAiError::model_not_found(model, &usable)
    };
    let agent = state.chat.agent(&completion.model).map_err(|e| match e {
        ChatError::UnknownAgent { agent_id, .. } => usable(&agent_id),
        other => other.into(),
    })?;
    // The caller's sampling, when it differs from the tutor's: answered and cached apart.
    let (temperature, top_p) = completion.sampling;
    let agent = match agent.with_sampling(temperature, top_p) {
        Some(sampled) => std::sync::Arc::new(sampled),
        None => agent,
    };
    // The key's limits, as the middleware applies them to native questions: the agent and
    // the learner were in the body.
    let caller = match key {
        Some(Extension(ref key)) => match key.admit(agent.id(), completion.user.as_deref()).await {
            Ok(admitted) => {
                *rate = Some(admitted.rate);
                Some(admitted.caller)
            }
            Err(refused) => {
                *rate = refused.rate;
                return Err(match refused.refusal {
                    crate::auth::Refusal::AgentNotAllowed => usable(&completion.model),
                    other => OpenAiError::from(ApiError::from(&other)),
                });
            }
        },
        None => None,
    };
    let Completion {
        model,
        message,
        thread,
        stream,
        include_usage,
        cut,
        user: _,
        sampling: _,
    } = completion;
    let slot = if stream {
        Some(open_stream(state)?)
    } else {
        None
    };
    let ask = Ask {
        agent,
        message,
        attempt: None,
        conversation: thread,
        deadline: Instant::now() + state.settings.request_timeout(),
        caller: caller
            .as_ref()
            .map_or_else(learning_chat_engine::chat::Caller::anonymous, |c| c.asker()),
        wants_stream: stream,
    };
    let reply = state.chat.ask(ask).await?;
    let bill = caller.and_then(|c| c.bill);
    let shape = Shape::new(model);
    if let Some(slot) = slot {
        let chunks = Chunks {
            shape,
            cut,
            include_usage,
            role_sent: false,
        };
        let streamed = Streamed {
            started,
            bill,
            slot,
        };
        // Boxed: a whole answer's future (the cheapest request's) does not carry the stream's.
        return Ok(Box::pin(respond(state, reply, streamed, chunks)).await?);
    }
    let answer = reply.finish().await;
    if let (Ok(answer), Some(bill)) = (&answer, &bill) {
        bill.charge(answer);
    }
    whole(shape, answer?, cut)
}

/// What every response of one request shares: its id, time and model.
struct Shape {
    id: String,
    created: u64,
    model: String,
}

impl Shape {
    fn new(model: String) -> Shape {
        Shape {
            id: {
                let mut buffer = uuid::Uuid::encode_buffer();
                let uuid = uuid::Uuid::new_v4().simple().encode_lower(&mut buffer);
                let mut id = String::with_capacity(9 + uuid.len());
                id.push_str("chatcmpl-");
                id.push_str(uuid);
                id
            },
            created: unix_now(),
            model,
        }
    }
}

/// A whole answer as a `chat.completion`.
fn whole(shape: Shape, answer: Answer, mut cut: Cut) -> Result<Response, OpenAiError> {
    let content = if cut.is_none() {
        answer.text.clone()
    } else {
        AnswerText::Owned(cut.whole(&answer.text))
    };
    let body = ChatCompletion {
        id: shape.id,
        object: "chat.completion",
        created: shape.created,
        model: shape.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            finish_reason: finish_reason(&answer, cut.ended()),
        }],
        usage: answer.usage.into(),
        cached: answer.cached,
        conversation_id: answer.conversation_id,
        turn: answer.turn,
        history_truncated: answer.history_truncated,
        policy: answer.policy.name(),
        variant: answer.variant.as_ref().map(|v| v.label.to_string()),
    };
    // Sized up front, as the native endpoint does.
    let capacity = body.choices[0].message.content.len() + 384;
    super::json_answer(&body, capacity).map_err(OpenAiError::from)
}

/// OpenAI's `finish_reason` of an answer whose copy ended `early` or not.
fn finish_reason(answer: &Answer, early: Option<Ended>) -> &'static str {
    match early {
        Some(Ended::Length) => return "length",
        Some(Ended::Stop) => return "stop",
        None => {}
    }
    match answer.finish_reason {
        "STOP" => "stop",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => "content_filter",
        _ => "stop",
    }
}

/// A stream's `chat.completion.chunk` events.
struct Chunks {
    shape: Shape,
    cut: Cut,
    include_usage: bool,
    role_sent: bool,
}

impl Chunks {
    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.shape.id.clone(),
            object: "chat.completion.chunk",
            created: self.shape.created,
            model: self.shape.model.clone(),
            choices,
            usage: None,
            cached: None,
            conversation_id: None,
        }
    }

    /// A chunk with the next piece of content (the first one also says the role).
    fn content(&mut self, content: String) -> Event {
        let role = (!self.role_sent).then_some("assistant");
        self.role_sent = true;
        data(&self.chunk(vec![ChunkChoice {
            index: 0,
            delta: Delta {
                role,
                content: Some(content),
            },
            finish_reason: None,
        }]))
    }
}

impl StreamFormat for Chunks {
    fn text(&mut self, text: String) -> Option<Event> {
        let text = if self.cut.is_none() {
            text
        } else {
            self.cut.piece(&text)
        };
        (!text.is_empty()).then(|| self.content(text))
    }

    fn done(&mut self, answer: Answer, _started: StdInstant) -> Vec<Event> {
        let mut events = Vec::with_capacity(4);
        let rest = self.cut.finish();
        if !rest.is_empty() {
            events.push(self.content(rest));
        }
        let mut last = self.chunk(vec![ChunkChoice {
            index: 0,
            delta: Delta {
                role: (!self.role_sent).then_some("assistant"),
                content: None,
            },
            finish_reason: Some(finish_reason(&answer, self.cut.ended())),
        }]);
        last.cached = Some(answer.cached);
        last.conversation_id = answer.conversation_id.clone();
        events.push(data(&last));
        if self.include_usage {
            let mut usage = self.chunk(Vec::new());
            usage.usage = Some(CompletionUsage::from(answer.usage));
            events.push(data(&usage));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn error(&mut self, error: ChatError) -> Vec<Event> {
        // OpenAI's SDKs raise an API error for a `data:` event holding an `error` object.
        vec![data(&OpenAiError::from(error).body())]
    }
}

/// A `data:` event of `value`'s JSON (one line: JSON escapes line breaks).
fn data<T: serde::Serialize>(value: &T) -> Event {
    // Serialising these plain structs cannot fail; an empty object keeps the event valid.
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()))
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When this server began listing its models (the `created` of each).
fn started_at() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(unix_now)
}

/// 404 for other `/v1/` paths, in OpenAI's shape (OpenAI clients read only that shape).
pub async fn not_found() -> Response {
    OpenAiError::from(ApiError::not_found()).into_response()
}

/// 405 for `/v1/` paths with another method, in OpenAI's shape.
pub async fn method_not_allowed() -> Response {
    OpenAiError::from(ApiError::method_not_allowed()).into_response()
}
