//! The state every handler shares: the chat service, settings and probes.

use crate::auth::Auth;
use learning_chat_engine::chat::ChatService;
use learning_chat_engine::config::Settings;
use learning_chat_engine::redis_link::RedisLink;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared state of every handler: one reference count to bump per request, however many
/// parts it has (axum clones the state for every route call and extractor).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppStateParts>,
}

impl std::ops::Deref for AppState {
    type Target = AppStateParts;

    fn deref(&self) -> &AppStateParts {
        &self.inner
    }
}

/// The parts of [`AppState`].
pub struct AppStateParts {
    /// The chat service (and through it, conversations).
    pub chat: ChatService,
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The shared state, when Redis is configured.
    pub redis: Option<RedisLink>,
    /// The key check and per-key limits; `None` with `auth.mode = "off"`.
    pub auth: Option<Arc<Auth>>,
    /// The records database; `None` with `database.url = "none"`.
    pub records: Option<learning_chat_records::Records>,
    /// Streams open now, bounded by `stream.max_open`.
    pub streams: Arc<super::stream::OpenStreams>,
    draining: AtomicBool,
    process_metrics: metrics_process::Collector,
}

/// What [`AppState::new`] is made of: every part the application assembled.
pub struct StateParts {
    /// The chat service (and through it, conversations).
    pub chat: ChatService,
    /// The effective settings.
    pub settings: Settings,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The shared state, when Redis is configured.
    pub redis: Option<RedisLink>,
    /// The key check; `None` with `auth.mode = "off"`.
    pub auth: Option<Arc<Auth>>,
    /// The records database; `None` with `database.url = "none"`.
    pub records: Option<learning_chat_records::Records>,
}

impl AppState {
    /// The state of a server not yet draining.
    pub fn new(parts: StateParts) -> AppState {
        let process_metrics = metrics_process::Collector::default();
        process_metrics.describe();
        AppState {
            inner: Arc::new(AppStateParts {
                chat: parts.chat,
                metrics: parts.metrics,
                redis: parts.redis,
                auth: parts.auth,
                records: parts.records,
                streams: Arc::new(super::stream::OpenStreams::new(
                    parts.settings.stream.max_open.get(),
                )),
                settings: Arc::new(parts.settings),
                draining: AtomicBool::new(false),
                process_metrics,
            }),
        }
    }

    /// Marks the start of shutdown: `/ready` answers 503 from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `disabled`, `up` or `down`.
    pub fn redis_status(&self) -> &'static str {
        match &self.redis {
            None => "disabled",
            Some(link) if link.is_up() => "up",
            Some(_) => "down",
        }
    }

    /// Updates the gauges that are sampled rather than tracked (called before each scrape).
    pub async fn refresh_gauges(&self) {
        self.process_metrics.collect();
        self.chat.refresh_memory_gauges().await;
        learning_chat_engine::cache::metrics::cache_entries(self.chat.cache().memory_entries());
        // Sets every model's quota gauges and the service's total.
        self.chat.quotas().status().await;
        learning_chat_engine::admission::metrics::upstream_in_flight(
            self.chat.admission().in_flight(),
        );
        learning_chat_engine::admission::metrics::queue_depth(self.chat.admission().queued());
        if let Ok(active) = self.chat.conversations().store().active().await {
            learning_chat_engine::conversations::metrics::conversations_active(active);
        }
    }
}
