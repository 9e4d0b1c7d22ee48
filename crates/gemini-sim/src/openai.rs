//! The OpenAI-compatible mode: `POST /v1/chat/completions` in the Chat Completions wire format
//! (non-streaming, and `stream: true` as SSE `data:` chunks ending in `data: [DONE]`), answered
//! by the same generator, latency and per-model faults as the Gemini routes, with its own
//! request quota whose 429 carries `retry-after` and `x-ratelimit-*` headers. The shapes follow
//! the recorded ones in `crates/learning-chat-engine/tests/fixtures/openai`.

use crate::config::{QuotaConfig, SimConfig};
use crate::faults::{self, Fault};
use crate::latency;
use crate::quota::Admission;
use crate::respond;
use crate::server::SimState;
use crate::stats::{Outcome, RequestGuard};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gemini_wire::{Content, FinishReason, GenerateContentRequest, GenerationConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One message of a Chat Completions request.
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The fields of a Chat Completions request the simulator acts on.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// An OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn fail(guard: &mut RequestGuard, response: Response) -> Response {
    let status = response.status();
    guard.set_outcome(if status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::RateLimited
    } else {
        Outcome::Error(status.as_u16())
    });
    response
}

/// `content` as text: a string, or the text parts of an array of parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The same conversation as a Gemini request, so both modes answer a question alike.
fn as_gemini(request: &ChatRequest) -> GenerateContentRequest {
    let mut system = Vec::new();
    let mut contents = Vec::new();
    for message in &request.messages {
        let text = content_text(message.content.as_ref());
        match message.role.as_str() {
            "system" | "developer" => system.push(text),
            "assistant" => contents.push(Content::text(Some("model"), text)),
            _ => contents.push(Content::text(Some("user"), text)),
        }
    }
    GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then(|| Content::text(None, system.join("\n"))),
        generation_config: Some(GenerationConfig {
            temperature: request.temperature,
            top_p: request.top_p,
            max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
            ..GenerationConfig::default()
        }),
        safety_settings: None,
    }
}

/// `x-ratelimit-reset-*` spelling: `1s`, `6m0s`, `0.5s`.
fn reset_text(wait: Duration) -> String {
    let ms = wait.as_millis();
    if ms >= 60_000 {
        return format!("{}m{}s", ms / 60_000, (ms % 60_000).div_ceil(1000));
    }
    let secs = format!("{:.3}", ms as f64 / 1000.0);
    format!("{}s", secs.trim_end_matches('0').trim_end_matches('.'))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("0"))
}

fn finish_reason(plan: &respond::Plan) -> &'static str {
    if plan.refused() {
        return "content_filter";
    }
    match plan.finish {
        FinishReason::MaxTokens => "length",
        _ => "stop",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut guard = state.stats().begin();
    let config = state.config();
    let oa = &config.openai;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !oa.api_keys.is_empty() && !oa.api_keys.contains(&bearer) {
        return fail(
            &mut guard,
            error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
        );
    }
    if !bearer.is_empty() {
        guard.set_key(&bearer);
    }
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return fail(
                &mut guard,
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("We could not parse the JSON body of your request. ({e})"),
                    "invalid_request_error",
                    None,
                ),
            )
        }
    };
    drop(body);
    if !oa.models.is_empty() && !oa.models.contains(&request.model) {
        return fail(
            &mut guard,
            error(
                StatusCode::NOT_FOUND,
                &format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    request.model
                ),
                "invalid_request_error",
                Some("model_not_found"),
            ),
        );
    }
    guard.set_model(&request.model);
    if request.messages.is_empty() {
        return fail(
            &mut guard,
            error(
                StatusCode::BAD_REQUEST,
                "[] is too short - 'messages'",
                "invalid_request_error",
                None,
            ),
        );
    }
    if request.stream {
        state.stats().stream_started();
    }
    if oa.rpm > 0 {
        let limits = QuotaConfig {
            rpm: oa.rpm,
            minute_ms: config.quota.minute_ms,
            ..QuotaConfig::default()
        };
        if let Admission::Limited { retry_after, .. } =
            state
                .openai_quota
                .admit("openai", 0, &limits, Instant::now())
        {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Rate limit reached for {} on requests per min (RPM): Limit {}, Used {}, Requested 1. Please try again in {}.",
                    request.model,
                    oa.rpm,
                    oa.rpm,
                    reset_text(retry_after)
                ),
                "requests",
                Some("rate_limit_exceeded"),
            );
            let h = response.headers_mut();
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            h.insert(header::RETRY_AFTER, header_value(&secs.to_string()));
            h.insert(
                "x-ratelimit-limit-requests",
                header_value(&oa.rpm.to_string()),
            );
            h.insert(
                "x-ratelimit-remaining-requests",
                HeaderValue::from_static("0"),
            );
            h.insert(
                "x-ratelimit-reset-requests",
                header_value(&reset_text(retry_after)),
            );
            return fail(&mut guard, response);
        }
    }
    let fault = faults::roll(config.faults_for(&request.model), request.stream);
    if let Some(fault) = fault {
        state.stats().fault(fault);
    }
    if fault == Some(Fault::QuotaExhausted) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header_value(
                &config
                    .faults
                    .error_429_retry_delay_ms
                    .div_ceil(1000)
                    .to_string(),
            ),
        );
        return fail(&mut guard, response);
    }
    let delay = latency::sample(&config.latency);
    if !state.sleep(delay).await {
        return fail(
            &mut guard,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is shutting down.",
                "server_error",
                None,
            ),
        );
    }
    match fault {
        Some(Fault::Internal) => {
            return fail(
                &mut guard,
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
            )
        }
        Some(Fault::Unavailable | Fault::Hang | Fault::DeadlineExceeded) => {
            return fail(
                &mut guard,
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The engine is currently overloaded, please try again later.",
                    "server_error",
                    None,
                ),
            )
        }
        _ => {}
    }
    let gemini = as_gemini(&request);
    let plan = respond::plan(&gemini, &request.model, &config);
    let id = format!("chatcmpl-{}", respond::response_id());
    let output = crate::answer::chars_to_tokens(plan.text.chars().count());
    state.stats().tokens(plan.prompt_tokens, output);
    let usage = json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": output,
        "total_tokens": plan.prompt_tokens + output,
    });
    let text = if plan.refused() {
        ""
    } else {
        plan.text.as_str()
    };
    if !request.stream {
        guard.set_outcome(if plan.refused() {
            Outcome::Blocked
        } else {
            Outcome::Ok
        });
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason(&plan),
            }],
            "usage": usage,
            "system_fingerprint": "fp_gemini_sim",
        });
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    stream(
        state,
        guard,
        &config,
        &request.model,
        &id,
        text,
        finish_reason(&plan),
        include_usage.then_some(usage),
        fault == Some(Fault::StreamCut),
        plan.refused(),
    )
}

/// The SSE body: a role chunk, content chunks, a chunk with the finish reason, the usage chunk
/// (empty `choices`) when asked for, then `data: [DONE]`.
#[allow(clippy::too_many_arguments)]
fn stream(
    state: Arc<SimState>,
    mut guard: RequestGuard,
    config: &SimConfig,
    model: &str,
    id: &str,
    text: &str,
    finish: &str,
    usage: Option<Value>,
    cut: bool,
    refused: bool,
) -> Response {
    let created = unix_now();
    let with_usage = usage.is_some();
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_gemini_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    let chunk_chars = (config.stream.chunk_tokens.max(1) as usize) * 4;
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(chunk_chars) {
        events.push(chunk(
            json!({"content": piece.iter().collect::<String>()}),
            None,
        ));
    }
    events.push(chunk(json!({}), Some(finish)));
    if let Some(usage) = usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_gemini_sim", "choices": [], "usage": usage,
        }));
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let count = frames.len();
    let cut_at = if cut { count / 2 } else { usize::MAX };
    let outcome = if refused {
        Outcome::Blocked
    } else {
        Outcome::Ok
    };
    let chunk_delay = Duration::from_millis(config.stream.chunk_delay_ms);
    let body = if chunk_delay.is_zero() && !cut {
        guard.set_outcome(outcome);
        Body::from(frames.concat())
    } else {
        let stream = async_stream::stream! {
            let mut guard = guard;
            for (i, bytes) in frames.into_iter().enumerate() {
                if i > 0 && !state.sleep(chunk_delay).await {
                    break;
                }
                if i == cut_at {
                    guard.set_outcome(Outcome::StreamCut);
                    yield Err(std::io::Error::other("simulated stream cut"));
                    return;
                }
                yield Ok::<Bytes, std::io::Error>(bytes);
            }
            guard.set_outcome(outcome);
        };
        Body::from_stream(stream)
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_spelling_matches_openai() {
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
