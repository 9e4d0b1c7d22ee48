//! Streamed answers (`streamGenerateContent`): the events framed up front, then written at once
//! or paced by `stream.chunk_delay_ms`, with an injected cut breaking the connection mid-way.

use super::{fail, SimState};
use crate::config::SimConfig;
use crate::errors::{ApiError, JSON_CONTENT_TYPE};
use crate::respond::{self, Plan};
use crate::stats::{Outcome, RequestGuard};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use gemini_wire::sse::frame_event;
use std::sync::Arc;
use std::time::Duration;

/// `streamGenerateContent`: SSE events (`alt=sse`) or a JSON array of the same responses, paced
/// by `stream.chunk_delay_ms`; a cut stream ends with a broken connection, not a clean end.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_response(
    state: Arc<SimState>,
    mut guard: RequestGuard,
    plan: &Plan,
    model: &str,
    id: &str,
    config: &SimConfig,
    sse: bool,
    cut: bool,
) -> Response {
    let events = respond::stream_responses(plan, model, id, config);
    let count = events.len();
    let mut frames: Vec<(Bytes, u32)> = Vec::with_capacity(count + 2);
    let mut previous_output = 0;
    for (i, event) in events.iter().enumerate() {
        let json = match serde_json::to_string(event) {
            Ok(json) => json,
            Err(e) => {
                return fail(
                    &mut guard,
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "INTERNAL",
                        &e.to_string(),
                        Vec::new(),
                    ),
                )
            }
        };
        let output = event
            .usage_metadata
            .as_ref()
            .and_then(|u| u.candidates_token_count)
            .unwrap_or(0);
        let text = if sse {
            frame_event(&json)
        } else {
            // Google's JSON-array stream: `[{...}\n,\r\n{...}\n]`.
            let open = if i == 0 { "[" } else { "\n,\r\n" };
            let close = if i + 1 == count { "\n]" } else { "" };
            format!("{open}{json}{close}")
        };
        frames.push((Bytes::from(text), output.saturating_sub(previous_output)));
        previous_output = output;
    }
    let outcome = if plan.refused() {
        Outcome::Blocked
    } else {
        Outcome::Ok
    };
    let content_type = if sse {
        "text/event-stream"
    } else {
        JSON_CONTENT_TYPE
    };
    state.stats.tokens(plan.prompt_tokens, 0);
    let chunk_delay = Duration::from_millis(config.stream.chunk_delay_ms);
    let body = if chunk_delay.is_zero() && !cut {
        // Nothing to pace: one write, and the outcome is known now.
        let total: u32 = frames.iter().map(|(_, n)| n).sum();
        state.stats.tokens(0, total);
        guard.set_outcome(outcome);
        let mut all = Vec::with_capacity(frames.iter().map(|(b, _)| b.len()).sum());
        for (bytes, _) in &frames {
            all.extend_from_slice(bytes);
        }
        Body::from(all)
    } else {
        // Cut after about half the events; a one-event answer is cut before it.
        let cut_at = if cut { count / 2 } else { usize::MAX };
        let stream = async_stream::stream! {
            let mut guard = guard;
            for (i, (bytes, output)) in frames.into_iter().enumerate() {
                if i > 0 && !state.sleep(chunk_delay).await {
                    break;
                }
                if i == cut_at {
                    guard.set_outcome(Outcome::StreamCut);
                    yield Err(std::io::Error::other("simulated stream cut"));
                    return;
                }
                state.stats.tokens(0, output);
                yield Ok::<Bytes, std::io::Error>(bytes);
            }
            guard.set_outcome(outcome);
        };
        Body::from_stream(stream)
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
