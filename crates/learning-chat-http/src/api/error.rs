//! The one error type at the HTTP edge and its JSON shape: `{"error": {"code", "message", ...}}`.

use crate::auth::Refusal;
use crate::telemetry::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use learning_chat_engine::admission::ShedReason;
use learning_chat_engine::chat::ChatError;
use learning_chat_engine::conversations::ConversationError;
use learning_chat_engine::providers::ProviderError;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// An error answer: status, stable code, safe message, optional details and retry hint.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `unknown_agent`.
    pub code: &'static str,
    /// A message safe to show to the learner (no internal detail, never a secret).
    pub message: String,
    /// Extra structured information (e.g. the valid agent ids).
    pub details: Option<Value>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
    /// Deliberate load shedding, not a failure: telemetry neither logs nor reports it per request.
    pub shed: bool,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// The inside of an error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Extra structured information, when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            shed: false,
        }
    }

    fn with_retry_after(mut self, retry_after: Duration) -> ApiError {
        self.retry_after = Some(retry_after);
        self
    }

    /// 404 for a path that matches no route.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 408 for a request body not received within `server.body_read_timeout_ms`.
    pub fn request_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body was not received in time",
        )
    }

    /// 405 for a route that exists with other methods.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that HTTP method",
        )
    }
}

impl ApiError {
    /// The JSON body of this error (also the data of a stream's `event: error`).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.to_owned(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // What the error was, for the request log and Sentry (which never read bodies).
        let kind = ErrorKind {
            code: self.code,
            message: self.message.clone(),
            shed: self.shed,
        };
        let body = self.body();
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(kind);
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> ApiError {
        match error {
            ChatError::UnknownAgent { agent_id, known } => {
                let mut e = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_agent",
                    format!(
                        "there is no agent {agent_id:?}; available agents: {}",
                        known.join(", ")
                    ),
                );
                e.details = Some(serde_json::json!({ "available_agents": known }));
                e
            }
            ChatError::EmptyMessage => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty_message",
                "`message` must contain some text",
            ),
            ChatError::MessageTooLong { chars, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_long",
                format!("`message` has {chars} characters; the limit is {limit}"),
            ),
            ChatError::Shed(shed) => {
                let message = match shed.reason {
                    ShedReason::Quota => "the tutor quota for this minute is used up; retry later",
                    ShedReason::QueueFull | ShedReason::QueueTimeout | ShedReason::QueueWait => {
                        "the tutors are busy right now; retry shortly"
                    }
                };
                ApiError {
                    shed: true,
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
                }
                .with_retry_after(shed.retry_after)
            }
            ChatError::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the tutor did not answer in time; please retry",
            ),
            ChatError::Conversation(error) => error.into(),
            ChatError::Provider(error) => from_provider(error),
            ChatError::ModerationUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "moderation_unavailable",
                "the safety check of this message could not be made; please retry",
            )
            .with_retry_after(std::time::Duration::from_secs(1)),
            ChatError::StreamInconsistent => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "stream_inconsistent",
                "the answer changed while it was streaming; please ask again",
            ),
            ChatError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred",
                )
            }
        }
    }
}

impl From<ConversationError> for ApiError {
    fn from(error: ConversationError) -> ApiError {
        match error {
            ConversationError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_conversation",
                "there is no such conversation (it may have been erased or have expired); \
                 send the message without `conversation_id` to start a new one",
            ),
            ConversationError::WrongAgent { owner } => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "conversation_agent_mismatch",
                    format!(
                        "this conversation belongs to agent {owner:?}; continue it there, or \
                         start a new conversation with this agent"
                    ),
                );
                e.details = Some(serde_json::json!({ "agent_id": owner }));
                e
            }
            ConversationError::Busy { retry_after } => ApiError::new(
                StatusCode::CONFLICT,
                "conversation_busy",
                "another message of this conversation is still being answered; retry shortly",
            )
            .with_retry_after(retry_after),
            ConversationError::StoreUnavailable { retry_after } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "conversation_store_unavailable",
                "the conversation history cannot be reached right now; retry later (new \
                 conversations still work)",
            )
            .with_retry_after(retry_after),
            ConversationError::TurnLimit { limit } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "conversation_turn_limit",
                format!(
                    "this conversation has reached its limit of {limit} turns; start a new \
                     conversation"
                ),
            ),
            ConversationError::TooLarge { bytes, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "conversation_too_large",
                format!(
                    "this conversation would hold {bytes} bytes of text; the limit is {limit}; \
                     start a new conversation"
                ),
            ),
        }
    }
}

fn from_provider(error: ProviderError) -> ApiError {
    // Upstream details go to the log once; the learner gets a clear, safe message.
    match &error {
        ProviderError::Blocked { reason } => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "blocked",
                format!("the tutor cannot answer this message: it was blocked by the model's safety filters ({reason})"),
            )
        }
        ProviderError::RateLimited { retry_after, daily } => {
            tracing::warn!(daily, "model quota exhausted: {error}");
            let retry_after = retry_after.unwrap_or(Duration::from_secs(if *daily { 3600 } else { 30 }));
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_quota",
                "the tutor service has used up its model quota; retry later",
            )
            .with_retry_after(retry_after);
        }
        _ => tracing::error!(kind = error.kind(), "model call failed: {error}"),
    }
    match error {
        ProviderError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the model did not answer in time; please retry",
        ),
        ProviderError::Unavailable { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "the model is unavailable right now; retry shortly",
        )
        .with_retry_after(Duration::from_secs(5)),
        ProviderError::Empty(reason) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "empty_answer",
            format!("the model stopped without an answer ({reason}); try rephrasing"),
        ),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the model could not process the request",
        ),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {}", source_text(&e)),
            ),
            JsonRejection::JsonDataError(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the body does not match the schema: {}", source_text(&e)),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than the limit",
                )
            }
            JsonRejection::BytesRejection(e) if crate::serve::is_body_read_timeout(&e) => {
                ApiError::request_timeout()
            }
            other => ApiError::new(other.status(), "bad_request", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }
}

impl From<&Refusal> for ApiError {
    fn from(refusal: &Refusal) -> ApiError {
        match refusal {
            Refusal::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send an API key as `Authorization: Bearer <key>` or `x-api-key: <key>`",
            ),
            Refusal::Unknown => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "the API key is not valid",
            ),
            Refusal::Revoked => ApiError::new(
                StatusCode::FORBIDDEN,
                "api_key_revoked",
                "the API key has been revoked",
            ),
            Refusal::AgentNotAllowed => ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_not_allowed",
                "the API key may not ask this agent",
            ),
            Refusal::LearnerRequired => ApiError::new(
                StatusCode::BAD_REQUEST,
                "learner_id_required",
                "this API key requires an `X-Learner-Id` header naming the learner (any stable, opaque id)",
            ),
            Refusal::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the API key cannot be checked right now; retry shortly",
            )
            .with_retry_after(Duration::from_secs(1)),
            Refusal::Limited { limit, retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, limit.code(), limit.message())
                    .with_retry_after(*retry_after)
            }
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // RFC 6750: a refused bearer token says why in `WWW-Authenticate`.
        let challenge = match self {
            Refusal::Missing => Some(r#"Bearer realm="learning-chat""#),
            Refusal::Unknown => Some(r#"Bearer realm="learning-chat", error="invalid_token""#),
            Refusal::Revoked => Some(
                r#"Bearer realm="learning-chat", error="invalid_token", error_description="revoked""#,
            ),
            Refusal::AgentNotAllowed => {
                Some(r#"Bearer realm="learning-chat", error="insufficient_scope""#)
            }
            Refusal::LearnerRequired | Refusal::Unavailable | Refusal::Limited { .. } => None,
        };
        let mut response = ApiError::from(&self).into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// serde's message for the innermost cause (e.g. "missing field `message` at line 1 column 2").
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current: &dyn std::error::Error = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning_chat_engine::admission::Shed;

    #[test]
    fn the_error_kind_rides_in_the_response_extensions() {
        let shed = ApiError::from(ChatError::Shed(Shed {
            reason: ShedReason::Quota,
            retry_after: Duration::from_secs(3),
        }))
        .into_response();
        assert_eq!(
            shed.extensions().get::<ErrorKind>(),
            Some(&ErrorKind {
                code: "overloaded",
                message: "the tutor quota for this minute is used up; retry later".to_owned(),
                shed: true,
            })
        );
        let failed = ApiError::from(ChatError::Provider(ProviderError::Timeout)).into_response();
        let kind = failed.extensions().get::<ErrorKind>();
        assert_eq!(
            kind.map(|k| (k.code, k.shed)),
            Some(("upstream_timeout", false))
        );
    }
}
