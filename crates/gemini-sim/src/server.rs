//! The HTTP side: routes, the request pipeline (auth, model, body, quota, fault, latency,
//! answer) and the [`SimServer`] handle.

use crate::config::SimConfig;
use crate::errors::{json_response, ApiError, JSON_CONTENT_TYPE};
use crate::faults::{self, Fault};
use crate::latency;
use crate::quota::{Admission, QuotaBook, QuotaKind, Violation};
use crate::respond::{self, Plan};
use crate::stats::{Outcome, RequestGuard, Stats, StatsCollector, Timeline};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use gemini_wire::sse::frame_event;
use gemini_wire::{
    CountTokensRequest, CountTokensResponse, GenerateContentRequest, ModalityTokenCount,
};
use parking_lot::RwLock;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// Largest request body accepted (Gemini's inline request limit).
const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;
/// Listen backlog: large enough that 10,000 clients connecting at once are not dropped.
const LISTEN_BACKLOG: u32 = 16_384;
/// How long `shutdown` waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Shared state of one simulator: config, counters, quota windows.
pub struct SimState {
    config: RwLock<Arc<SimConfig>>,
    stats: Arc<StatsCollector>,
    quota: QuotaBook,
    /// The OpenAI-compatible mode's own request windows.
    pub(crate) openai_quota: QuotaBook,
    closing: AtomicBool,
    closed: Notify,
}

impl SimState {
    /// State for a fresh simulator.
    pub fn new(config: SimConfig) -> Self {
        SimState {
            config: RwLock::new(Arc::new(config)),
            stats: Arc::new(StatsCollector::default()),
            quota: QuotaBook::default(),
            openai_quota: QuotaBook::default(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }

    /// The current config (cheap: an `Arc` clone under a read lock).
    pub fn config(&self) -> Arc<SimConfig> {
        Arc::clone(&self.config.read())
    }

    /// Replaces the config.
    pub fn set_config(&self, config: SimConfig) {
        *self.config.write() = Arc::new(config);
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<StatsCollector> {
        &self.stats
    }

    /// Clears every key's quota windows.
    pub fn reset_quota(&self) {
        self.quota.reset();
        self.openai_quota.reset();
    }

    /// Wakes every sleeping request so shutdown does not wait for long latencies or hangs.
    fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    /// Sleeps `duration`; false if the simulator started shutting down meanwhile.
    pub(crate) async fn sleep(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return true;
        }
        // Created before the flag check so a shutdown between the two is not missed.
        let closed = self.closed.notified();
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = closed => false,
        }
    }
}

/// The simulator's routes over `state`.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1beta/models", get(list_models))
        .route(
            "/v1beta/models/{model_and_method}",
            post(model_post).get(get_model),
        )
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route("/stats", get(get_stats))
        .route("/stats/timeline", get(get_timeline))
        .route("/stats/reset", post(reset_stats))
        .route("/quota/reset", post(reset_quota))
        .route("/config", get(get_config).post(post_config))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::not_found("Method not found.") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The value of `name` in a query string, percent-decoded as Google decodes it.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The API key of a request: `x-goog-api-key`, else `?key=`.
fn api_key<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<Cow<'a, str>> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(Cow::Borrowed)
        .or_else(|| query_param(uri.query(), "key").filter(|k| !k.is_empty()))
}

fn authorized(config: &SimConfig, key: Option<&str>) -> bool {
    match key {
        None => false,
        Some(key) => config.api_keys.is_empty() || config.api_keys.iter().any(|k| k == key),
    }
}

fn fail(guard: &mut RequestGuard, error: ApiError) -> Response {
    guard.set_outcome(if error.code == StatusCode::TOO_MANY_REQUESTS {
        Outcome::RateLimited
    } else {
        Outcome::Error(error.code.as_u16())
    });
    error.into_response()
}

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

/// Gemini's wording for a body that is not valid JSON for the request type.
fn invalid_json(error: &serde_json::Error) -> ApiError {
    ApiError::invalid_argument(&format!("Invalid JSON payload received. {error}"))
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

async fn model_post(
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

/// `streamGenerateContent`: SSE events (`alt=sse`) or a JSON array of the same responses, paced
/// by `stream.chunk_delay_ms`; a cut stream ends with a broken connection, not a clean end.
#[allow(clippy::too_many_arguments)]
fn stream_response(
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

async fn list_models(State(state): State<Arc<SimState>>, uri: Uri, headers: HeaderMap) -> Response {
    let config = state.config();
    if !authorized(&config, api_key(&headers, &uri).as_deref()) {
        return ApiError::api_key_invalid().into_response();
    }
    let models: Vec<Value> = config.models.iter().map(|m| model_info(m)).collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

async fn get_model(
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

async fn get_stats(State(state): State<Arc<SimState>>) -> Response {
    json_response(StatusCode::OK, &state.stats.snapshot())
}

async fn get_timeline(State(state): State<Arc<SimState>>, uri: Uri) -> Response {
    let mut timeline = state.stats.timeline();
    // `?since_ms=` keeps only arrivals at or after that unix millisecond.
    if let Some(since) = query_param(uri.query(), "since_ms").and_then(|v| v.parse::<u64>().ok()) {
        let first = timeline.arrival_ms.partition_point(|t| *t < since);
        timeline.arrival_ms.drain(..first);
        timeline.status.drain(..first);
    }
    json_response(StatusCode::OK, &timeline)
}

async fn reset_stats(State(state): State<Arc<SimState>>) -> Response {
    state.stats.reset();
    json_response(StatusCode::OK, &json!({"reset": "stats"}))
}

async fn reset_quota(State(state): State<Arc<SimState>>) -> Response {
    state.reset_quota();
    json_response(StatusCode::OK, &json!({"reset": "quota"}))
}

async fn get_config(State(state): State<Arc<SimState>>) -> Response {
    json_response(StatusCode::OK, &*state.config())
}

async fn post_config(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
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

/// A running simulator. Dropping it stops the server too (without waiting).
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves in the background on the current
    /// tokio runtime.
    pub async fn start(config: SimConfig, bind: SocketAddr) -> anyhow::Result<SimServer> {
        config.validate().map_err(anyhow::Error::msg)?;
        let socket = if bind.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(bind)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(config));
        let app = router(Arc::clone(&state));
        let (stop, stopped) = oneshot::channel::<()>();
        // No Nagle: SSE chunks and small JSON answers must leave at once.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(SimServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` without a trailing slash; API paths (`/v1beta/models/...`) go after it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same data as `GET /stats`.
    pub fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }

    /// The same data as `GET /stats/timeline`.
    pub fn timeline(&self) -> Timeline {
        self.state.stats.timeline()
    }

    /// Zeroes the stats (as `POST /stats/reset`); quota windows are kept.
    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }

    /// Clears the quota windows of every key (as `POST /quota/reset`).
    pub fn reset_quota(&self) {
        self.state.reset_quota();
    }

    /// The current config.
    pub fn config(&self) -> SimConfig {
        (*self.state.config()).clone()
    }

    /// Changes the config in place; requests that already started keep the config they read.
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut current = self.state.config.write();
        let mut next = (**current).clone();
        f(&mut next);
        *current = Arc::new(next);
    }

    /// The shared state, e.g. to mount [`router`] elsewhere.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Logs one line every `every` with the request rate and outcome counts of that interval.
    pub fn spawn_rate_logger(&self, every: Duration) -> JoinHandle<()> {
        let stats = Arc::clone(&self.state.stats);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            let mut last = stats.snapshot();
            loop {
                ticker.tick().await;
                let now = stats.snapshot();
                // A reset in between makes counters go backwards; count from zero then.
                let delta = |a: u64, b: u64| if a >= b { a - b } else { a };
                let requests = delta(now.requests, last.requests);
                tracing::info!(
                    requests,
                    rate_per_s = requests as f64 / every.as_secs_f64(),
                    ok = delta(now.ok, last.ok),
                    rate_limited = delta(now.rate_limited, last.rate_limited),
                    errors = delta(now.errors, last.errors),
                    in_flight = now.in_flight,
                    "gemini-sim request rate"
                );
                last = now;
            }
        })
    }

    /// Stops accepting, wakes sleeping requests (they get 503) and waits up to 5 s for open
    /// connections before dropping them.
    pub async fn shutdown(mut self) {
        self.state.begin_shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.state.begin_shutdown();
            let _ = stop.send(());
        }
    }
}
