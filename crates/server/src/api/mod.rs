//! HTTP handlers and the OpenAPI description. Handlers parse and map; the chat service decides.

mod error;

pub use error::{ApiError, ErrorBody, ErrorCode, ErrorObject};

use crate::app::AppState;
use crate::providers::Usage;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
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
}

/// The tutor's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatResponse {
    /// The answer text.
    pub response: String,
    /// The agent that answered.
    pub agent_id: String,
    /// True when served from the cache (no model call).
    pub cached: bool,
    /// The model that produced the answer; `offline-simulated/...` when no API key is set.
    pub model: String,
    /// Tokens the answer cost when produced.
    pub usage: Usage,
    /// `STOP` for complete answers, `MAX_TOKENS` when cut at the length limit.
    pub finish_reason: String,
    /// Time spent in the service, in milliseconds.
    pub latency_ms: u64,
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
}

/// Ask a tutor a question.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}",
    params(("agent_id" = String, Path, description = "Agent id, e.g. `math`")),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer", body = ChatResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (auth.mode = required)", body = ErrorBody),
        (status = 403, description = "API key revoked or not allowed for this agent", body = ErrorBody),
        (status = 404, description = "Unknown agent", body = ErrorBody),
        (status = 413, description = "Body or message too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Missing or empty message, or blocked by safety filters", body = ErrorBody),
        (status = 429, description = "A per-key or per-learner limit; the code names it; see Retry-After", body = ErrorBody),
        (status = 502, description = "The model failed", body = ErrorBody),
        (status = 503, description = "Overloaded or quota used up; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline exceeded", body = ErrorBody),
    )
)]
pub async fn chat(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = StdInstant::now();
    let Path(agent_id) = path?;
    // An unknown agent is reported before body problems: it is the more useful error.
    if state.chat.agents().get(&agent_id).is_none() {
        return Err(crate::chat::ChatError::UnknownAgent {
            agent_id,
            known: state.chat.agents().ids(),
        }
        .into());
    }
    let ApiJson(request) = body?;
    let message = request.message.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_message",
            "the body must have a `message` field with the learner's question",
        )
    })?;
    let deadline = Instant::now() + state.settings.request_timeout();
    let answer = state.chat.ask(&agent_id, &message, deadline).await?;
    let body = ChatResponse {
        response: answer.text,
        agent_id,
        cached: answer.cached,
        model: answer.model,
        usage: answer.usage,
        finish_reason: answer.finish_reason.to_owned(),
        latency_ms: started.elapsed().as_millis() as u64,
    };
    // Sized up front: axum's `Json` starts at 128 bytes and regrows through every answer.
    let mut bytes = Vec::with_capacity(body.response.len() + 256);
    serde_json::to_writer(&mut bytes, &body).map_err(|e| {
        tracing::error!(error = %e, "cannot serialise an answer");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    })?;
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response();
    // What to charge the caller's key (read by the auth middleware, never sent).
    response.extensions_mut().insert(crate::auth::AnswerCost {
        cached: body.cached,
        prompt_tokens: body.usage.prompt_tokens,
        output_tokens: body.usage.output_tokens,
    });
    Ok(response)
}

/// List the tutors.
#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = AgentList)))]
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
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthStatus)))]
pub async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".to_owned(),
        provider: None,
        redis: None,
    })
}

/// Readiness: the service can answer (provider configured, not draining); Redis state as detail.
#[utoipa::path(
    get,
    path = "/ready",
    responses((status = 200, body = HealthStatus), (status = 503, body = HealthStatus))
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let draining = state.is_draining();
    let body = HealthStatus {
        status: if draining { "draining" } else { "ready" }.to_owned(),
        provider: Some(state.chat.provider().name().to_owned()),
        redis: Some(state.redis_status().to_owned()),
    };
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
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
    paths(chat, list_agents, health, ready, metrics),
    components(schemas(
        ChatRequest,
        ChatResponse,
        AgentList,
        AgentSummary,
        HealthStatus,
        ErrorBody,
        ErrorObject,
        Usage
    ))
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
