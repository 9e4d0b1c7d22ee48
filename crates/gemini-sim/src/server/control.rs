//! The simulator's own control routes: stats (`/stats`, `/stats/timeline`, `/stats/reset`),
//! `/quota/reset` and `/config`.

use super::{invalid_json, query_param, SimState};
use crate::errors::{json_response, ApiError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) async fn get_stats(State(state): State<Arc<SimState>>) -> Response {
    json_response(StatusCode::OK, &state.stats.snapshot())
}

pub(super) async fn get_timeline(State(state): State<Arc<SimState>>, uri: Uri) -> Response {
    let mut timeline = state.stats.timeline();
    // `?since_ms=` keeps only arrivals at or after that unix millisecond.
    if let Some(since) = query_param(uri.query(), "since_ms").and_then(|v| v.parse::<u64>().ok()) {
        let first = timeline.arrival_ms.partition_point(|t| *t < since);
        timeline.arrival_ms.drain(..first);
        timeline.status.drain(..first);
    }
    json_response(StatusCode::OK, &timeline)
}

pub(super) async fn reset_stats(State(state): State<Arc<SimState>>) -> Response {
    state.stats.reset();
    json_response(StatusCode::OK, &json!({"reset": "stats"}))
}

pub(super) async fn reset_quota(State(state): State<Arc<SimState>>) -> Response {
    state.reset_quota();
    json_response(StatusCode::OK, &json!({"reset": "quota"}))
}

pub(super) async fn get_config(State(state): State<Arc<SimState>>) -> Response {
    json_response(StatusCode::OK, &*state.config())
}

pub(super) async fn post_config(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch @ Value::Object(_)) => patch,
        Ok(_) => {
            return ApiError::invalid_argument("config patch must be a JSON object").into_response()
        }
        Err(e) => return invalid_json(&e).into_response(),
    };
    // Read-merge-write under the write lock so concurrent patches do not lose each other.
    let mut current = state.config.write();
    match current.merged(&patch) {
        Ok(merged) => {
            *current = Arc::new(merged);
            json_response(StatusCode::OK, &**current)
        }
        Err(message) => ApiError::invalid_argument(&message).into_response(),
    }
}
