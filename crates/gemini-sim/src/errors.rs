//! Gemini error bodies (`{"error": {"code", "message", "status", "details"}}`), worded like the
//! recorded ones in `gemini-wire/tests/fixtures`.

use crate::quota::Violation;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gemini_wire::{
    format_proto_duration, ErrorBody, ErrorStatus, ERROR_INFO_TYPE, HELP_TYPE,
    LOCALIZED_MESSAGE_TYPE, QUOTA_FAILURE_TYPE, RETRY_INFO_TYPE,
};
use serde_json::{json, Value};
use std::time::Duration;

/// Google's content type for JSON bodies.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// Message of the 400 for a missing or refused API key.
pub const API_KEY_MESSAGE: &str = "API key not valid. Please pass a valid API key.";
/// Message of the 403 for a revoked key.
pub const PERMISSION_DENIED_MESSAGE: &str =
    "Your API key was reported as leaked. Please use another API key.";
/// Message of every 429.
pub const QUOTA_MESSAGE: &str = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.";
/// Message of the injected 500.
pub const INTERNAL_MESSAGE: &str = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting";
/// Message of the injected 503.
pub const OVERLOADED_MESSAGE: &str = "The model is overloaded. Please try again later.";
/// Message of the injected 504.
pub const DEADLINE_MESSAGE: &str = "Deadline expired before operation could complete.";

/// An error response ready to send.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// The JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    /// A `google.rpc.Status` error.
    pub fn new(code: StatusCode, status: &str, message: &str, details: Vec<Value>) -> Self {
        // Typed (not `json!`) so the keys keep Google's order: code, message, status, details.
        ApiError {
            code,
            body: ErrorBody {
                error: ErrorStatus {
                    code: code.as_u16(),
                    message: message.to_owned(),
                    status: status.to_owned(),
                    details,
                },
            },
        }
    }

    /// 400 INVALID_ARGUMENT with a message.
    pub fn invalid_argument(message: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            message,
            Vec::new(),
        )
    }

    /// 400 API_KEY_INVALID, exactly like `error_400_api_key.json`.
    pub fn api_key_invalid() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            API_KEY_MESSAGE,
            vec![
                json!({
                    "@type": ERROR_INFO_TYPE,
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}
                }),
                json!({
                    "@type": LOCALIZED_MESSAGE_TYPE,
                    "locale": "en-US",
                    "message": API_KEY_MESSAGE
                }),
            ],
        )
    }

    /// 403 PERMISSION_DENIED for a key that exists but may no longer be used, worded as Gemini
    /// words a key reported as leaked.
    pub fn permission_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            PERMISSION_DENIED_MESSAGE,
            Vec::new(),
        )
    }

    /// 404 for an unknown model.
    pub fn model_not_found(model: &str, method: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
            ),
            Vec::new(),
        )
    }

    /// 404 for a path the API does not serve.
    pub fn not_found(message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message, Vec::new())
    }

    /// 429 RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo details, in the order of
    /// `error_429_quota.json`.
    pub fn quota_exceeded(
        violations: &[Violation],
        model: &str,
        free_tier: bool,
        retry_after: Duration,
    ) -> Self {
        let suffix = if free_tier { "-FreeTier" } else { "" };
        let violations: Vec<Value> = violations
            .iter()
            .map(|v| {
                json!({
                    "quotaMetric": v.kind.quota_metric(free_tier),
                    "quotaId": format!("{}{suffix}", v.kind.quota_id()),
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": v.limit.to_string(),
                })
            })
            .collect();
        // Rounded up to the millisecond so a client that waits exactly this long finds a slot.
        let millis = retry_after.as_nanos().div_ceil(1_000_000);
        let retry = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            QUOTA_MESSAGE,
            vec![
                json!({"@type": QUOTA_FAILURE_TYPE, "violations": violations}),
                json!({
                    "@type": HELP_TYPE,
                    "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"
                    }]
                }),
                json!({"@type": RETRY_INFO_TYPE, "retryDelay": format_proto_duration(retry)}),
            ],
        )
    }

    /// 500 INTERNAL.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            INTERNAL_MESSAGE,
            Vec::new(),
        )
    }

    /// 503 UNAVAILABLE (model overloaded), like `error_503_overloaded.json`.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            OVERLOADED_MESSAGE,
            Vec::new(),
        )
    }

    /// 504 DEADLINE_EXCEEDED.
    pub fn deadline_exceeded() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            DEADLINE_MESSAGE,
            Vec::new(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.body)
    }
}

/// A JSON response with Google's content type.
pub fn json_response<T: serde::Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (code, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(JSON_CONTENT_TYPE),
            );
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
