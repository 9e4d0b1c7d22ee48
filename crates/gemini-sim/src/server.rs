//! The HTTP side: the shared [`SimState`], the routes, and what every route shares (the API key,
//! query parameters, failing a request). The routes live in submodules by concern: [`gemini`]
//! (the Gemini API pipeline: auth, model, body, quota, fault, latency, answer), [`stream`] (the
//! streamed answers), [`control`] (stats, quota and config), [`handle`] (the [`SimServer`]).

mod control;
mod gemini;
mod handle;
mod stream;

pub use handle::SimServer;

use crate::config::SimConfig;
use crate::errors::ApiError;
use crate::quota::QuotaBook;
use crate::stats::{Outcome, RequestGuard, StatsCollector};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::RwLock;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Largest request body accepted (Gemini's inline request limit).
const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;

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
        .route("/v1beta/models", get(gemini::list_models))
        .route(
            "/v1beta/models/{model_and_method}",
            post(gemini::model_post).get(gemini::get_model),
        )
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route("/v1/moderations", post(crate::moderation::moderations))
        .route("/stats", get(control::get_stats))
        .route("/stats/timeline", get(control::get_timeline))
        .route("/stats/reset", post(control::reset_stats))
        .route("/quota/reset", post(control::reset_quota))
        .route(
            "/config",
            get(control::get_config).post(control::post_config),
        )
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

/// Gemini's wording for a body that is not valid JSON for the request type.
fn invalid_json(error: &serde_json::Error) -> ApiError {
    ApiError::invalid_argument(&format!("Invalid JSON payload received. {error}"))
}
