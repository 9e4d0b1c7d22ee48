//! `POST /v1/moderations` in OpenAI's shape: an input containing `--self-harm-trigger` is
//! flagged `self-harm` (and `self-harm/intent`), anything else passes.

use crate::server::SimState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The body of a moderation request.
#[derive(Debug, Deserialize)]
pub struct ModerationRequest {
    /// One text, or several.
    pub input: Value,
    /// The model asked (echoed).
    #[serde(default)]
    pub model: Option<String>,
}

const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

fn result(text: &str, trigger: &str) -> Value {
    let flagged = !trigger.is_empty() && text.contains(trigger);
    let hit = |c: &str| flagged && (c == "self-harm" || c == "self-harm/intent");
    let categories: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .map(|c| ((*c).to_owned(), json!(hit(c))))
        .collect();
    let scores: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .map(|c| ((*c).to_owned(), json!(if hit(c) { 0.93 } else { 0.0004 })))
        .collect();
    json!({"flagged": flagged, "categories": categories, "category_scores": scores})
}

/// `POST /v1/moderations`.
pub async fn moderations(
    State(state): State<Arc<SimState>>,
    body: Result<Json<ModerationRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        let error =
            json!({"error": {"message": "invalid JSON body", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    state.stats().moderation_call();
    let config = state.config();
    let trigger = config.self_harm_trigger.as_str();
    let results: Vec<Value> = match &request.input {
        Value::String(text) => vec![result(text, trigger)],
        Value::Array(texts) => texts
            .iter()
            .map(|t| result(t.as_str().unwrap_or_default(), trigger))
            .collect(),
        _ => {
            let error = json!({"error": {"message": "input must be a string or an array of strings", "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
    };
    let model = request
        .model
        .unwrap_or_else(|| "omni-moderation-latest".to_owned());
    Json(json!({"id": "modr-sim", "model": model, "results": results})).into_response()
}
