//! The Gemini API routes: `generateContent`, `streamGenerateContent` and `countTokens` through
//! the request pipeline (method, API key, model, body, fault roll, quota, latency, answer), and
//! the model listing.

use super::stream::stream_response;
use super::{api_key, authorized, fail, invalid_json, query_param, SimState};
use crate::config::SimConfig;
use crate::errors::{json_response, ApiError};
use crate::faults::{self, Fault};
use crate::latency;
use crate::quota::{Admission, QuotaKind, Violation};
use crate::respond;
use crate::stats::{Outcome, RequestGuard};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gemini_wire::{
    CountTokensRequest, CountTokensResponse, GenerateContentRequest, ModalityTokenCount,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Generate,
    Stream,
    CountTokens,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Generate => "generateContent",
            Method::Stream => "streamGenerateContent",
            Method::CountTokens => "countTokens",
        }
    }
}

/// A generate request that passed auth, model, body and quota checks, reduced to what the
/// rest of its life needs: the body, headers and URI are dropped before any sleep, so 10,000
/// sleeping requests cost little memory.
struct Admitted {
    request: GenerateContentRequest,
    streaming: bool,
    sse: bool,
    fault: Option<Fault>,
    delay: Duration,
}

pub(super) async fn model_post(
    State(state): State<Arc<SimState>>,
    Path(target): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut guard = state.stats.begin();
    let config = state.config();
    let (model, method) = target.rsplit_once(':').unwrap_or((target.as_str(), ""));
    let admitted = match admit(
        &state, &config, &mut guard, model, method, &uri, &headers, body,
    ) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    drop(headers);
    drop(uri);
    let error = match admitted.fault {
        Some(Fault::Hang) => {
            // Dropped (and counted as cancelled) when the client goes away first.
            state.sleep(Duration::from_millis(config.hang_max_ms)).await;
            Some(ApiError::deadline_exceeded())
        }
        Some(Fault::Internal) => Some(ApiError::internal()),
        Some(Fault::Unavailable) => Some(ApiError::unavailable()),
        Some(Fault::DeadlineExceeded) => Some(ApiError::deadline_exceeded()),
        Some(Fault::StreamCut | Fault::QuotaExhausted) | None => None,
    };
    // Injected errors arrive after the usual latency, so faults do not change a load's timing.
    if !state.sleep(admitted.delay).await {
        return fail(&mut guard, ApiError::unavailable());
    }
    if let Some(error) = error {
        return fail(&mut guard, error);
    }
    // The answer is built after the sleep so sleeping requests do not hold it.
    let plan = respond::plan(&admitted.request, model, &config);
    drop(admitted.request);
    let id = respond::response_id();
    if admitted.streaming {
        let cut = admitted.fault == Some(Fault::StreamCut);
        return stream_response(state, guard, &plan, model, &id, &config, admitted.sse, cut);
    }
    let response = respond::full_response(&plan, model, id, &config);
    let output = response
        .usage_metadata
        .as_ref()
        .and_then(|u| u.candidates_token_count)
        .unwrap_or(0);
    state.stats.tokens(plan.prompt_tokens, output);
    guard.set_outcome(if plan.refused() {
        Outcome::Blocked
    } else {
        Outcome::Ok
    });
    json_response(StatusCode::OK, &response)
}

/// The checks in Gemini's order: method, API key, model, body, quota; then the fault roll and
/// latency draw. `Err` is the finished response (countTokens is answered here too); it is
/// built once per request and moved once, so its size does not matter.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
fn admit(
    state: &SimState,
    config: &SimConfig,
    guard: &mut RequestGuard,
    model: &str,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Admitted, Response> {
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => Method::Stream,
        "countTokens" => Method::CountTokens,
        _ => return Err(fail(guard, ApiError::not_found("Method not found."))),
    };
    match method {
        Method::Stream => state.stats.stream_started(),
        Method::CountTokens => state.stats.count_tokens_call(),
        Method::Generate => {}
    }
    let key = match api_key(headers, uri) {
        Some(key) if config.revoked_keys.iter().any(|k| *k == key) => {
            return Err(fail(guard, ApiError::permission_denied()))
        }
        Some(key) if authorized(config, Some(&key)) => key,
        _ => return Err(fail(guard, ApiError::api_key_invalid())),
    };
    guard.set_key(&key);
    if !config.models.iter().any(|m| m == model) {
        return Err(fail(guard, ApiError::model_not_found(model, method.name())));
    }
    guard.set_model(model);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let error = ApiError::new(
                rejection.status(),
                "INVALID_ARGUMENT",
                &rejection.body_text(),
                Vec::new(),
            );
            return Err(fail(guard, error));
        }
    };
    if method == Method::CountTokens {
        return Err(count_tokens(guard, &body));
    }
    let request: GenerateContentRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return Err(fail(guard, invalid_json(&e))),
    };
    state.stats.request_seen(&request);
    if request.contents.is_empty() {
        return Err(fail(
            guard,
            ApiError::invalid_argument(
                "* GenerateContentRequest.contents: contents is not specified\n",
            ),
        ));
    }
    let streaming = method == Method::Stream;
    // Rolled before the quota check: an injected 429 stands for a quota used up elsewhere, so
    // it must not also eat into this simulator's own windows.
    let fault = faults::roll(config.faults_for(model), streaming);
    if fault == Some(Fault::QuotaExhausted) {
        state.stats.fault(Fault::QuotaExhausted);
        return Err(fail(guard, injected_quota_error(config, model)));
    }
    let limits = config.quota_for(&key);
    if limits.any() {
        let tokens = respond::prompt_tokens(request.system_instruction.as_ref(), &request.contents);
        // Gemini counts per project and model: each model of a key has its own windows.
        let scope = format!("{key}\n{model}");
        if let Admission::Limited {
            violations,
            retry_after,
        } = state.quota.admit(&scope, tokens, limits, Instant::now())
        {
            let error = ApiError::quota_exceeded(&violations, model, limits.free_tier, retry_after);
            return Err(fail(guard, error));
        }
    }
    if let Some(fault) = fault {
        state.stats.fault(fault);
    }
    let delay = match (streaming, config.stream.first_chunk_ms) {
        (true, Some(ms)) => Duration::from_millis(ms),
        _ => latency::sample(&config.latency),
    };
    Ok(Admitted {
        request,
        streaming,
        sse: query_param(uri.query(), "alt").as_deref() == Some("sse"),
        fault,
        delay,
    })
}

/// `quotaValue` of an injected 429 when no RPM quota is configured: Gemini 2.5 Flash's tier-1
/// requests per minute.
const INJECTED_QUOTA_RPM: u64 = 1000;

/// The injected 429: the per-minute request quota, with `faults.error_429_retry_delay_ms` as
/// its `RetryInfo.retryDelay`.
fn injected_quota_error(config: &SimConfig, model: &str) -> ApiError {
    let limit = if config.quota.rpm > 0 {
        config.quota.rpm
    } else {
        INJECTED_QUOTA_RPM
    };
    let violation = Violation {
        kind: QuotaKind::RequestsPerMinute,
        limit,
    };
    ApiError::quota_exceeded(
        &[violation],
        model,
        config.quota.free_tier,
        Duration::from_millis(config.faults.error_429_retry_delay_ms),
    )
}

fn count_tokens(guard: &mut RequestGuard, body: &[u8]) -> Response {
    let request: CountTokensRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return fail(guard, invalid_json(&e)),
    };
    let tokens = match &request.generate_content_request {
        Some(generate) if !generate.contents.is_empty() => {
            respond::prompt_tokens(generate.system_instruction.as_ref(), &generate.contents)
        }
        _ if !request.contents.is_empty() => respond::prompt_tokens(None, &request.contents),
        _ => {
            return fail(
                guard,
                ApiError::invalid_argument(
                    "* CountTokensRequest.contents: contents is not specified\n",
                ),
            )
        }
    };
    guard.set_outcome(Outcome::Ok);
    json_response(
        StatusCode::OK,
        &CountTokensResponse {
            total_tokens: tokens,
            prompt_tokens_details: Some(vec![ModalityTokenCount {
                modality: "TEXT".to_owned(),
                token_count: tokens,
            }]),
        },
    )
}

fn model_info(model: &str) -> Value {
    let thinking = model.starts_with("gemini-2.5") || model.starts_with("gemini-3");
    json!({
        "name": format!("models/{model}"),
        "version": "001",
        "displayName": model,
        "description": format!("Simulated {model}"),
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": if thinking { 65_536 } else { 8_192 },
        "supportedGenerationMethods": ["generateContent", "countTokens", "streamGenerateContent"],
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
        "thinking": thinking,
    })
}

pub(super) async fn list_models(
    State(state): State<Arc<SimState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let config = state.config();
    if !authorized(&config, api_key(&headers, &uri).as_deref()) {
        return ApiError::api_key_invalid().into_response();
    }
    let models: Vec<Value> = config.models.iter().map(|m| model_info(m)).collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

pub(super) async fn get_model(
    State(state): State<Arc<SimState>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let config = state.config();
    if !authorized(&config, api_key(&headers, &uri).as_deref()) {
        return ApiError::api_key_invalid().into_response();
    }
    if config.models.contains(&model) {
        json_response(StatusCode::OK, &model_info(&model))
    } else {
        ApiError::model_not_found(&model, "generateContent").into_response()
    }
}
