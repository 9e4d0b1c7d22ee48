//! HTTP handlers and the OpenAPI description. Handlers parse and map; the chat service decides.

pub mod admin;
pub mod console;
mod encoding;
mod error;
pub mod feedback;
pub mod openai;
mod quotas;
mod security;
mod state;
pub mod stream;

use console::ConsolePaths;
use security::KeyAuth;

pub use encoding::{accepts_a_coding_we_send, RefuseUnacceptableEncodingLayer};
pub use error::{ApiError, ErrorBody, ErrorObject};
pub use state::{AppState, AppStateParts, StateParts};

use crate::routes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use learning_chat_engine::chat::{Answer, Ask, Caller};
use learning_chat_engine::providers::Usage;
use serde::{Deserialize, Serialize};
use std::time::Instant as StdInstant;
use tokio::time::Instant;
use utoipa::{OpenApi, ToSchema};

/// JSON body extractor whose rejections use the service's error shape.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ApiJson(value))
    }
}

/// A learner's message to a tutor.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The learner's question (1 to `server.max_message_chars` characters).
    #[schema(example = "What is 2+2?")]
    pub message: Option<String>,
    /// The conversation this message continues (from an earlier answer's `conversation_id`);
    /// absent to start a new conversation.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// What the learner tried themselves (their working, their answer so far): sent to the
    /// tutor with the question, so a `hints` or `socratic` tutor can aim at their first
    /// mistake. Counts towards `server.max_message_chars` with the message.
    #[serde(default)]
    #[schema(example = "I added 2 and 2 and got 5")]
    pub attempt: Option<String>,
}

/// The tutor's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatResponse<'a> {
    /// The answer text.
    #[schema(value_type = String)]
    pub response: learning_chat_engine::chat::AnswerText,
    /// The agent that answered.
    #[schema(value_type = String)]
    pub agent_id: std::borrow::Cow<'a, str>,
    /// True when served from the cache (no model call).
    pub cached: bool,
    /// The model that produced the answer; `offline-simulated/...` when no API key is set.
    pub model: String,
    /// Tokens the answer cost when produced.
    pub usage: Usage,
    /// `STOP` for complete answers, `MAX_TOKENS` when cut at the length limit.
    #[schema(value_type = String)]
    pub finish_reason: std::borrow::Cow<'static, str>,
    /// Time spent in the service, in milliseconds.
    pub latency_ms: u64,
    /// The conversation to send follow-ups in; `null` when a new conversation could not be
    /// stored (Redis down): the answer stands alone.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Which exchange of the conversation this was (1 for its first question).
    #[serde(default)]
    pub turn: u32,
    /// True when older turns were left out of the history sent to the model to keep it
    /// within `conversation.max_history_tokens` (the first exchange is always kept).
    #[serde(default)]
    pub history_truncated: bool,
    /// True when the answer carries the crisis text (`safety.crisis_text`): the learner's
    /// message was flagged for self-harm or rated dangerous content `HIGH`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crisis: bool,
    /// The answer policy and its version the conversation is tutored with (`socratic@1`,
    /// `hints@1`, `full@1`): chosen when it starts (experiment variant, else the key's class
    /// policy, else the agent's) and kept for its whole life.
    #[serde(default)]
    #[schema(value_type = String)]
    pub policy: std::borrow::Cow<'static, str>,
    /// The experiment variant of the conversation (`experiment/variant`), when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl<'a> ChatResponse<'a> {
    /// The body of `answer` by `agent_id`, for a request that began at `started`.
    pub(crate) fn new(
        answer: Answer,
        agent_id: impl Into<std::borrow::Cow<'a, str>>,
        started: StdInstant,
    ) -> ChatResponse<'a> {
        ChatResponse {
            response: answer.text,
            agent_id: agent_id.into(),
            cached: answer.cached,
            model: answer.model,
            usage: answer.usage,
            finish_reason: answer.finish_reason.into(),
            latency_ms: started.elapsed().as_millis() as u64,
            conversation_id: answer.conversation_id,
            turn: answer.turn,
            history_truncated: answer.history_truncated,
            crisis: answer.crisis,
            // A static name: no allocation on the cheapest request.
            policy: std::borrow::Cow::Borrowed(answer.policy.name()),
            variant: answer.variant.as_ref().map(|v| v.label.to_string()),
        }
    }
}

impl ChatResponse<'_> {
    /// The body as JSON: the bytes serde_json makes of it (`chat_answer_json_is_serde_jsons`),
    /// written straight with strings escaped by SIMD code. serde_json escapes a string a byte
    /// at a time, which was a seventh of a cached answer's instructions (bench 16, run 20).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let conversation = self.conversation_id.as_deref();
        // Room for the escapes of a typical answer and the conversation token, so the buffer
        // is allocated once.
        let capacity = self.response.len() * 9 / 8 + conversation.map_or(0, str::len) + 320;
        let mut out = Vec::with_capacity(capacity);
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"response\":");
        json_escape_simd::escape_into(self.response.as_str(), &mut out);
        out.extend_from_slice(b",\"agent_id\":");
        json_escape_simd::escape_into(&*self.agent_id, &mut out);
        out.extend_from_slice(b",\"cached\":");
        out.extend_from_slice(json_bool(self.cached));
        out.extend_from_slice(b",\"model\":");
        json_escape_simd::escape_into(&self.model, &mut out);
        out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
        out.extend_from_slice(number.format(self.usage.prompt_tokens).as_bytes());
        out.extend_from_slice(b",\"output_tokens\":");
        out.extend_from_slice(number.format(self.usage.output_tokens).as_bytes());
        out.extend_from_slice(b"},\"finish_reason\":");
        json_escape_simd::escape_into(&*self.finish_reason, &mut out);
        out.extend_from_slice(b",\"latency_ms\":");
        out.extend_from_slice(number.format(self.latency_ms).as_bytes());
        out.extend_from_slice(b",\"conversation_id\":");
        match conversation {
            Some(id) => json_escape_simd::escape_into(id, &mut out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"turn\":");
        out.extend_from_slice(number.format(self.turn).as_bytes());
        out.extend_from_slice(b",\"history_truncated\":");
        out.extend_from_slice(json_bool(self.history_truncated));
        if self.crisis {
            out.extend_from_slice(b",\"crisis\":true");
        }
        out.extend_from_slice(b",\"policy\":");
        json_escape_simd::escape_into(&*self.policy, &mut out);
        if let Some(variant) = &self.variant {
            out.extend_from_slice(b",\"variant\":");
            json_escape_simd::escape_into(variant, &mut out);
        }
        out.push(b'}');
        out
    }
}

fn json_bool(value: bool) -> &'static [u8] {
    if value {
        b"true"
    } else {
        b"false"
    }
}

/// One turn of a conversation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TurnView {
    /// `user` for the learner's question, `model` for the tutor's answer.
    pub role: learning_chat_engine::providers::Role,
    /// What was said.
    pub text: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// For an answer: served from the cache.
    pub cached: bool,
    /// For an answer: the model that produced it (empty for a question).
    pub model: String,
}

/// A conversation and its turns, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    /// The conversation id.
    pub id: String,
    /// The agent it belongs to.
    pub agent_id: String,
    /// When it began (RFC 3339, UTC).
    pub created_at: String,
    /// When it last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// Every turn, oldest first; a question and its answer are two turns.
    pub turns: Vec<TurnView>,
    /// The safety flags its messages and answers raised, oldest first.
    #[serde(default)]
    pub flags: Vec<admin::FlagView>,
    /// The answer policy it is tutored with (`socratic@1`; empty for a conversation from
    /// before policies).
    #[serde(default)]
    pub policy: String,
    /// Its experiment variant (`experiment/variant`), when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The ratings of its answers, by turn (with a records database).
    #[serde(default)]
    pub feedback: Vec<feedback::FeedbackView>,
}

pub(crate) fn rfc3339(unix_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<learning_chat_engine::conversations::Conversation> for ConversationView {
    fn from(c: learning_chat_engine::conversations::Conversation) -> Self {
        ConversationView {
            created_at: rfc3339(c.created_at_ms),
            updated_at: rfc3339(c.updated_at_ms()),
            id: c.id,
            agent_id: c.agent_id,
            policy: c.policy,
            variant: (!c.variant.is_empty()).then_some(c.variant),
            feedback: Vec::new(),
            turns: c
                .turns
                .into_iter()
                .map(|t| TurnView {
                    role: t.role,
                    text: t.text,
                    at: rfc3339(t.at_ms),
                    cached: t.cached,
                    model: t.model,
                })
                .collect(),
            flags: Vec::new(),
        }
    }
}

/// One agent in the list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentSummary {
    /// URL id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What the tutor covers.
    pub description: String,
    /// The model it uses.
    pub model: String,
}

/// The list of agents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    /// Every agent, sorted by id.
    pub agents: Vec<AgentSummary>,
}

/// Liveness and readiness answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    /// `ok`, `ready`, `draining` or `not_ready`.
    pub status: String,
    /// `gemini` or `offline-simulated` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `disabled`, `up` or `down` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Each model's circuit: `closed`, `open` (skipped) or `half_open` (readiness only). An
    /// open circuit does not make the server unready: the agent's fallbacks answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuits: Option<std::collections::BTreeMap<String, String>>,
    /// Gemini API keys configured and in rotation (readiness only, with Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<KeyRotation>,
    /// Each model's quota window and remaining budget (readiness only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<std::collections::BTreeMap<String, quotas::ModelQuotaView>>,
}

/// How many Gemini API keys can be used now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyRotation {
    /// Keys configured.
    pub total: usize,
    /// Keys neither refused nor out of their per-day quota.
    pub in_rotation: usize,
}

/// Ask a tutor a question, as the first message of a new conversation or, with
/// `conversation_id`, as a follow-up answered with the conversation's history.
/// What a chat or stream request asks: the agent, resolved once, and the learner's message.
pub(crate) struct Question {
    /// The agent it names.
    pub agent: std::sync::Arc<learning_chat_engine::agents::Agent>,
    /// The rest of the body (the conversation id).
    pub request: ChatRequest,
    /// The learner's message.
    pub message: String,
}

/// Reads a chat or stream request. An unknown agent is reported before body problems: it is the
/// more useful error. The agent is resolved here once and passed down, so no later step checks
/// the id again.
pub(crate) fn question(
    state: &AppState,
    agent_id: &str,
    body: Result<ChatRequest, ApiError>,
) -> Result<Question, ApiError> {
    let agent = state.chat.agent(agent_id)?;
    let mut request = body?;
    let message = request.message.take().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_message",
            "the body must have a `message` field with the learner's question",
        )
    })?;
    Ok(Question {
        agent,
        request,
        message,
    })
}

#[utoipa::path(
    post,
    path = routes::AGENT_CHAT,
    params(("agent_id" = String, Path, description = "Agent id, e.g. `math`")),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer", body = ChatResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (auth.mode = required)", body = ErrorBody),
        (status = 403, description = "API key revoked or not allowed for this agent", body = ErrorBody),
        (status = 404, description = "Unknown agent, or unknown (erased, expired) conversation", body = ErrorBody),
        (status = 409, description = "The conversation belongs to another agent (`conversation_agent_mismatch`), or another of its messages is still being answered (`conversation_busy`, see Retry-After)", body = ErrorBody),
        (status = 413, description = "Body or message too large, or the conversation would exceed `conversation.max_stored_bytes` (`conversation_too_large`)", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Missing or empty message, blocked by safety filters, or the conversation is at `conversation.max_turns` (`conversation_turn_limit`)", body = ErrorBody),
        (status = 429, description = "A per-key or per-learner limit; the code names it; see Retry-After", body = ErrorBody),
        (status = 502, description = "The model failed", body = ErrorBody),
        (status = 503, description = "Overloaded or quota used up, or a follow-up while the conversation store (Redis) is down (`conversation_store_unavailable`); see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline exceeded", body = ErrorBody),
    )
)]
pub async fn chat(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = StdInstant::now();
    let Path(agent_id) = path?;
    let caller = caller.as_ref().map(|axum::Extension(caller)| caller);
    answer_question(&state, caller, &agent_id, body.map(|ApiJson(r)| r), started).await
}

/// The chat route's work once its request is read, shared by the Router's handler ([`chat`])
/// and the route's direct dispatch ([`crate::dispatch`]): the question asked, billed and
/// answered as JSON.
pub(crate) async fn answer_question(
    state: &AppState,
    caller: Option<&crate::auth::Caller>,
    agent_id: &str,
    body: Result<ChatRequest, ApiError>,
    started: StdInstant,
) -> Result<Response, ApiError> {
    let Question {
        agent,
        request,
        message,
    } = question(state, agent_id, body)?;
    let ask = Ask {
        agent,
        message,
        attempt: request.attempt,
        conversation: request.conversation_id.into(),
        deadline: Instant::now() + state.settings.request_timeout(),
        caller: asker(caller),
        wants_stream: false,
    };
    // The same reply a stream gets, read to its last item.
    let answer = state.chat.ask(ask).await?.finish().await;
    if let (Ok(answer), Some(bill)) = (&answer, bill(caller)) {
        bill.charge(answer);
    }
    let body = ChatResponse::new(answer?, agent_id, started).to_json();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// An answer as a JSON response, serialised into a buffer of `capacity` bytes sized up front:
/// axum's `Json` starts at 128 bytes and regrows through every answer.
pub(crate) fn json_answer(
    body: &impl serde::Serialize,
    capacity: usize,
) -> Result<Response, ApiError> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, body).map_err(|e| {
        tracing::error!(error = %e, "cannot serialise an answer");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// A conversation with every turn, in order.
#[utoipa::path(
    get,
    path = routes::CONVERSATION,
    params(("conversation_id" = String, Path, description = "From an answer's `conversation_id`")),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 404, description = "Unknown, erased or expired", body = ErrorBody),
        (status = 503, description = "The conversation store (Redis) is down; see Retry-After", body = ErrorBody),
    )
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<ConversationView>, ApiError> {
    let Path(id) = path?;
    let owner = owner(caller.as_ref().map(|axum::Extension(c)| c));
    let conversation = state.chat.conversation(&id, owner).await?;
    let flags = state.chat.conversation_flags(&id, owner).await?;
    let ratings = feedback::of_conversation(&state, &id, owner).await?;
    let mut view = ConversationView::from(conversation);
    view.flags = flags.into_iter().map(admin::FlagView::from).collect();
    view.feedback = ratings;
    Ok(Json(view))
}

/// Erases a conversation everywhere (Redis, so every server); later use of its id is 404.
#[utoipa::path(
    delete,
    path = routes::CONVERSATION,
    params(("conversation_id" = String, Path, description = "From an answer's `conversation_id`")),
    responses(
        (status = 204, description = "Erased"),
        (status = 404, description = "Unknown, already erased or expired", body = ErrorBody),
        (status = 503, description = "The conversation store (Redis) is down; see Retry-After", body = ErrorBody),
    )
)]
pub async fn delete_conversation(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = path?;
    state
        .chat
        .erase_conversation(&id, owner(caller.as_ref().map(|axum::Extension(c)| c)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The key a conversation belongs to: the caller's key id when keys are required (another key
/// gets 404 for it), none with `auth.mode = "off"`.
fn owner(caller: Option<&crate::auth::Caller>) -> Option<&str> {
    caller.map(|caller| &*caller.key_id)
}

/// The caller as the engine knows it (anonymous with `auth.mode = "off"`).
pub(crate) fn asker(caller: Option<&crate::auth::Caller>) -> Caller {
    caller.map_or_else(Caller::anonymous, crate::auth::Caller::asker)
}

/// Where the question's cost goes (none with `auth.mode = "off"`).
pub(crate) fn bill(caller: Option<&crate::auth::Caller>) -> Option<&crate::auth::Bill> {
    caller.and_then(|caller| caller.bill.as_ref())
}

/// List the tutors.
#[utoipa::path(get, path = routes::AGENTS, responses((status = 200, description = "The tutors", body = AgentList)))]
pub async fn list_agents(State(state): State<AppState>) -> Json<AgentList> {
    let agents = state
        .chat
        .agents()
        .all()
        .map(|a| AgentSummary {
            id: a.definition.id.clone(),
            name: a.definition.name.clone(),
            description: a.definition.description.clone(),
            model: a.definition.model.clone(),
        })
        .collect();
    Json(AgentList { agents })
}

/// Liveness: the process is up.
#[utoipa::path(get, path = routes::HEALTH, responses((status = 200, description = "The process is up", body = HealthStatus)))]
pub async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".to_owned(),
        provider: None,
        redis: None,
        circuits: None,
        api_keys: None,
        quotas: None,
    })
}

/// Readiness: the service can answer (provider configured, not draining); Redis state as detail.
#[utoipa::path(
    get,
    path = routes::READY,
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "Draining", body = HealthStatus),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let draining = state.is_draining();
    let body = HealthStatus {
        status: if draining { "draining" } else { "ready" }.to_owned(),
        provider: Some(state.chat.provider().name().to_owned()),
        redis: Some(state.redis_status().to_owned()),
        circuits: Some(state.chat.router().circuits()),
        api_keys: state
            .chat
            .router()
            .key_counts()
            .map(|(total, in_rotation)| KeyRotation { total, in_rotation }),
        quotas: Some(quotas::model_quotas(&state.chat).await),
    };
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in text format.
#[utoipa::path(get, path = routes::METRICS, responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.refresh_gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI description of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "learning-chat",
        description = "AI tutoring chat: subject tutors answered by Google Gemini."
    ),
    paths(
        chat,
        stream::chat_stream,
        get_conversation,
        delete_conversation,
        admin::list_flags,
        admin::get_class_policy,
        admin::put_class_policy,
        admin::list_experiments,
        feedback::post_feedback,
        list_agents,
        health,
        ready,
        metrics,
        openai::models,
        openai::chat_completions
    ),
    components(schemas(
        ChatRequest,
        ChatResponse,
        stream::StreamDelta,
        ConversationView,
        TurnView,
        admin::FlagView,
        admin::FlagPage,
        admin::PolicyUpdate,
        admin::ClassPolicy,
        admin::ExperimentList,
        admin::ExperimentView,
        admin::VariantView,
        admin::DifferenceView,
        feedback::FeedbackRequest,
        feedback::FeedbackView,
        learning_chat_engine::providers::Role,
        AgentList,
        AgentSummary,
        HealthStatus,
        KeyRotation,
        quotas::ModelQuotaView,
        ErrorBody,
        ErrorObject,
        Usage,
        openai::wire::ChatCompletionRequest,
        openai::wire::Message,
        openai::wire::StreamOptions,
        openai::wire::ChatCompletion,
        openai::wire::Choice,
        openai::wire::AssistantMessage,
        openai::wire::CompletionUsage,
        openai::wire::ChatCompletionChunk,
        openai::wire::ChunkChoice,
        openai::wire::Delta,
        openai::wire::ModelList,
        openai::wire::Model,
        openai::OpenAiErrorBody,
        openai::OpenAiErrorObject
    )),
    modifiers(&ConsolePaths, &KeyAuth)
)]
pub struct ApiDoc;

/// Serves the OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// 404 for unknown paths, in the service's error shape.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// 405 for known paths with another method, in the service's error shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning_chat_engine::providers::Usage;
    use std::borrow::Cow;

    /// Every character a JSON string escapes, at every offset of a SIMD block, and around them
    /// text of every kind.
    fn awkward_texts() -> Vec<String> {
        let mut texts = vec![
            String::new(),
            "What is 2+2?".to_owned(),
            "é ü 漢字 🦀 \u{7f} \u{2028} \u{2029} \u{feff}".to_owned(),
            "line one\nline two\r\n\ttabbed \"quoted\" \\back\\slash /solidus".to_owned(),
        ];
        texts.push((0u8..0x20).map(char::from).collect());
        for offset in 0..70 {
            for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é', '🦀'] {
                let mut text = "a".repeat(offset);
                text.push(special);
                text.push_str(&"b".repeat(70 - offset));
                texts.push(text);
            }
        }
        texts.push("x\n".repeat(3000));
        texts
    }

    #[test]
    fn chat_answer_json_is_serde_jsons() {
        for (i, text) in awkward_texts().into_iter().enumerate() {
            let response = ChatResponse {
                response: text.clone().into(),
                agent_id: Cow::Owned(format!(
                    "agent-{}",
                    text.chars().take(3).collect::<String>()
                )),
                cached: i % 2 == 0,
                model: format!("gemini-2.5-flash{}", if i % 3 == 0 { "\"" } else { "" }),
                usage: Usage {
                    prompt_tokens: u32::MAX - i as u32,
                    output_tokens: i as u32,
                },
                finish_reason: Cow::Borrowed(if i % 2 == 0 { "STOP" } else { "MAX_TOKENS" }),
                latency_ms: u64::MAX / (i as u64 + 1),
                conversation_id: (i % 4 != 1).then(|| format!("t1A{text}")),
                turn: i as u32,
                history_truncated: i % 5 == 0,
                crisis: i % 7 == 0,
                policy: Cow::Borrowed("hints@1"),
                variant: (i % 3 == 1).then(|| format!("exp/{text}")),
            };
            let expected = serde_json::to_vec(&response).unwrap();
            assert_eq!(
                String::from_utf8(response.to_json()).unwrap(),
                String::from_utf8(expected).unwrap(),
                "case {i}"
            );
        }
    }
}
