//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with OpenAI's status
//! codes, made from the service's own [`ApiError`] so each error is decided in one place.

use crate::api::ApiError;
use crate::auth::{RateLimitState, Refusal, Refused};
use crate::telemetry::ErrorKind;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error of the OpenAI-compatible API (boxed: results stay small on the answer's path).
#[derive(Debug)]
pub struct OpenAiError(Box<Detail>);

/// What an [`OpenAiError`] holds.
#[derive(Debug)]
struct Detail {
    /// The service's error it was made from (status, code, message, retry hint).
    native: ApiError,
    /// The status sent (OpenAI's for the case).
    status: StatusCode,
    /// OpenAI's `type`.
    kind: &'static str,
    /// OpenAI's `code`.
    code: &'static str,
    /// The request field at fault, when one is.
    param: Option<&'static str>,
    /// The rate-limit headers of the key, when its limits were checked.
    rate: Option<RateLimitState>,
}

/// The JSON body of an OpenAI error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiErrorObject,
}

/// The inside of an OpenAI error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorObject {
    /// Human-readable explanation.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `requests` or `tokens` (a rate limit), `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault (`model`, `messages`, ...), or null.
    pub param: Option<String>,
    /// A stable code: `invalid_api_key`, `model_not_found`, `rate_limit_exceeded`,
    /// `unsupported`, `overloaded`, or the service's own code (e.g. `malformed_json`).
    pub code: Option<String>,
}

impl OpenAiError {
    /// 400 `invalid_request_error` about the field `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
        let native = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
        OpenAiError::from(native).about(param)
    }

    /// 400 `unsupported`: a feature of the API the tutors do not offer (`param` names it).
    pub fn unsupported(param: &'static str, message: impl Into<String>) -> OpenAiError {
        let native = ApiError::new(StatusCode::BAD_REQUEST, "unsupported", message);
        OpenAiError::from(native).about(param)
    }

    /// 404 `model_not_found` for `model`, which is no tutor this key may use.
    pub fn model_not_found(model: &str, available: &[String]) -> OpenAiError {
        let native = ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "the model {model:?} does not exist or this API key may not use it; \
                 models (tutors): {}",
                available.join(", ")
            ),
        );
        OpenAiError::from(native).about("model")
    }

    /// About the request field `param`.
    fn about(mut self, param: &'static str) -> OpenAiError {
        self.0.param = Some(param);
        self
    }

    /// With the key's rate-limit headers.
    pub fn with_rate(mut self, rate: Option<RateLimitState>) -> OpenAiError {
        self.0.rate = rate;
        self
    }

    /// The JSON body (also the data of a stream's error event).
    pub fn body(&self) -> OpenAiErrorBody {
        let detail = &self.0;
        OpenAiErrorBody {
            error: OpenAiErrorObject {
                message: detail.native.message.clone(),
                kind: detail.kind.to_owned(),
                param: detail.param.map(str::to_owned),
                code: Some(detail.code.to_owned()),
            },
        }
    }
}

impl From<ApiError> for OpenAiError {
    /// OpenAI's status, type and code for a service error. Every client error OpenAI has no
    /// status of its own for (413, 415, 422, ...) is its 400 `invalid_request_error`, the
    /// service's code kept in `code`.
    fn from(native: ApiError) -> OpenAiError {
        let (status, kind, code, param) = match (native.status, native.code) {
            (StatusCode::UNAUTHORIZED, _) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
            ),
            (StatusCode::FORBIDDEN, code) => {
                (StatusCode::FORBIDDEN, "permission_error", code, None)
            }
            (StatusCode::NOT_FOUND, "unknown_agent") => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                Some("model"),
            ),
            (StatusCode::NOT_FOUND, "unknown_conversation") => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_conversation",
                Some("conversation_id"),
            ),
            (StatusCode::NOT_FOUND, code) => (StatusCode::NOT_FOUND, "not_found_error", code, None),
            (StatusCode::CONFLICT, code) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                code,
                Some("conversation_id"),
            ),
            (StatusCode::TOO_MANY_REQUESTS, code) => (
                StatusCode::TOO_MANY_REQUESTS,
                if code.contains("token") {
                    "tokens"
                } else {
                    "requests"
                },
                "rate_limit_exceeded",
                None,
            ),
            (StatusCode::UNPROCESSABLE_ENTITY, "blocked") => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "content_filter",
                Some("messages"),
            ),
            (StatusCode::METHOD_NOT_ALLOWED, code) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                code,
                None,
            ),
            (status, code) if status.is_client_error() => {
                let param = match code {
                    "empty_message"
                    | "message_too_long"
                    | "conversation_too_large"
                    | "conversation_turn_limit" => Some("messages"),
                    _ => None,
                };
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    code,
                    param,
                )
            }
            (status, code) => (status, "server_error", code, None),
        };
        OpenAiError(Box::new(Detail {
            native,
            status,
            kind,
            code,
            param,
            rate: None,
        }))
    }
}

impl From<learning_chat_engine::chat::ChatError> for OpenAiError {
    fn from(error: learning_chat_engine::chat::ChatError) -> OpenAiError {
        ApiError::from(error).into()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let detail = *self.0;
        // The request log and Sentry read what the error was from here, as for native errors.
        let kind = ErrorKind {
            code: detail.native.code,
            message: detail.native.message,
            shed: detail.native.shed,
        };
        let mut response = (detail.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(kind);
        let headers = response.headers_mut();
        if let Some(retry_after) = detail.native.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if detail.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="learning-chat", error="invalid_token""#),
            );
        }
        if let Some(rate) = detail.rate {
            rate.write_openai(headers);
        }
        response
    }
}

/// The answer to a request the key check refused, in OpenAI's shape.
pub fn refused(refused: Refused) -> Response {
    let Refused { refusal, rate } = refused;
    let native = ApiError::from(&refusal);
    let error = match refusal {
        // OpenAI answers a model the key may not use as one that does not exist.
        Refusal::AgentNotAllowed => OpenAiError::from(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_agent",
            ..native
        }),
        _ => OpenAiError::from(native),
    };
    error.with_rate(rate).into_response()
}
