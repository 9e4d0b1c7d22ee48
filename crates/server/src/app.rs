//! Router and middleware assembly, the application's lifecycle and graceful shutdown.

use crate::admission::{Admission, QuotaLimiter};
use crate::agents::AgentRegistry;
use crate::api;
use crate::cache::{MemoryCache, RedisCache, ResponseCache};
use crate::chat::{ChatDeps, ChatService, Prices, RetryPolicy};
use crate::coalesce::ClusterCoalescer;
use crate::config::Settings;
use crate::providers::{GeminiClient, Provider, SimulatedModel};
use crate::redis_link::RedisLink;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

/// The request id header: kept when the client (or nginx) sends one, generated otherwise.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

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
    /// The chat service.
    pub chat: ChatService,
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The shared state, when Redis is configured.
    pub redis: Option<RedisLink>,
    draining: AtomicBool,
    process_metrics: metrics_process::Collector,
}

impl AppState {
    /// Builds every part of the service from settings (no listener yet).
    pub fn from_settings(settings: Settings) -> anyhow::Result<AppState> {
        let metrics = crate::metrics::install();
        let agents = AgentRegistry::load(settings.agents.path.as_deref())?;
        let provider = if settings.uses_gemini() {
            Provider::Gemini(GeminiClient::new(&settings.gemini)?)
        } else {
            Provider::Simulated(Box::new(SimulatedModel::new(&settings.offline)))
        };
        let redis = if settings.uses_redis() {
            Some(RedisLink::new(&settings.redis)?)
        } else {
            None
        };
        let ttl = Duration::from_secs(settings.cache.ttl_secs);
        let cache = match (&redis, settings.cache.enabled) {
            (_, false) => ResponseCache::Disabled,
            (None, true) => ResponseCache::Memory(MemoryCache::new(settings.cache.capacity, ttl)),
            (Some(link), true) => ResponseCache::Tiered {
                // L1 only absorbs repeats on this server; freshness is Redis's job.
                memory: MemoryCache::new(
                    settings.cache.capacity,
                    ttl.min(Duration::from_secs(settings.cache.l1_ttl_secs.max(1))),
                ),
                redis: RedisCache::new(link.clone(), ttl),
            },
        };
        let cluster = match (&redis, cache.redis()) {
            (Some(link), Some(redis_cache)) => Some(ClusterCoalescer::new(
                link.clone(),
                redis_cache.clone(),
                Duration::from_millis(settings.redis.lease_ms),
            )),
            _ => None,
        };
        let up = &settings.upstream;
        let margin = Duration::from_millis(up.quota_window_margin_ms);
        let quota = match &redis {
            Some(link) => QuotaLimiter::clustered(
                up.rpm,
                up.input_tpm,
                margin,
                settings.redis.replicas,
                link.clone(),
            ),
            None => QuotaLimiter::new(up.rpm, up.input_tpm, margin),
        };
        let chat = ChatService::new(ChatDeps {
            agents,
            cache,
            provider,
            admission: Admission::new(
                up.max_concurrency,
                up.max_queue,
                Duration::from_millis(up.max_queue_wait_ms),
            ),
            quota,
            cluster,
            retry: RetryPolicy {
                max_retries: up.max_retries,
                base_delay: Duration::from_millis(up.retry_base_delay_ms),
                max_delay: Duration::from_millis(up.retry_max_delay_ms),
            },
            max_message_chars: settings.server.max_message_chars,
            prices: Prices {
                input_per_million: settings.telemetry.price_per_million_input_tokens,
                output_per_million: settings.telemetry.price_per_million_output_tokens,
            },
        });
        let process_metrics = metrics_process::Collector::default();
        process_metrics.describe();
        crate::metrics::queue_limit(settings.upstream.max_queue);
        Ok(AppState {
            inner: Arc::new(AppStateParts {
                chat,
                redis,
                settings: Arc::new(settings),
                metrics,
                draining: AtomicBool::new(false),
                process_metrics,
            }),
        })
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
        self.chat.cache().run_pending_tasks().await;
        crate::metrics::cache_entries(self.chat.cache().memory_entries());
        crate::metrics::quota_window_used(self.chat.quota().requests_in_window().await);
        crate::metrics::upstream_in_flight(self.chat.admission().in_flight());
        crate::metrics::queue_depth(self.chat.admission().queued());
    }
}

/// The router with every route and middleware.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let mut routes = Router::new()
        .route("/api/v1/agents", get(api::list_agents))
        .route("/api/v1/agents/{agent_id}", post(api::chat))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/openapi.json", get(api::openapi));
    if settings.telemetry.metrics_enabled {
        routes = routes.route("/metrics", get(api::metrics));
    }
    let compression = CompressionLayer::new()
        .gzip(true)
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(settings.server.gzip_min_bytes)));
    routes
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.server.max_body_bytes,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(
                    crate::telemetry::sanitize_request_id,
                ))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(axum::middleware::from_fn(request_span))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(compression)
                // Inside catch-panic, so a panic is reported while the request's scope is bound.
                .layer(axum::middleware::from_fn(crate::telemetry::report_errors))
                .layer(axum::middleware::from_fn(track_http_metrics)),
        )
        .with_state(state)
}

/// Opens the request's span (its id on every log line, in the upstream task too). A plain
/// middleware rather than tower-http's TraceLayer: this runs on every request and the span is all
/// that is needed of it.
async fn request_span(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    if status.is_server_error() {
        // One summary line per failed request (the cause was logged where it happened).
        span.in_scope(|| {
            tracing::error!(
                status = status.as_u16(),
                latency_ms = started.elapsed().as_millis() as u64,
                "request failed"
            )
        });
    }
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    api::ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred",
    )
    .into_response()
}

async fn track_http_metrics(request: Request, next: Next) -> Response {
    // The route template, never the raw path, keeps the label set small.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    // A guard, so a request dropped mid-way (client gone, panic) is still counted and leaves
    // the in-flight gauge.
    let timer = crate::metrics::HttpRequestTimer::start(route, request.method().as_str());
    let response = next.run(request).await;
    timer.finish(response.status().as_u16());
    response
}

/// The service bound to its listener, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Builds the service and binds its listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let bind = settings.server.bind;
        let state = AppState::from_settings(settings)?;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        Ok(Application { listener, state })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for at most the grace
    /// period and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application { listener, state } = self;
        let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
        let monitor = tokio::spawn(minute_monitor(state.clone()));
        let redis_probe = state.redis.as_ref().map(|link| link.start());
        let shutdown_state = state.clone();
        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            shutdown_state.draining.store(true, Ordering::Release);
            tracing::info!("shutdown requested: no new connections; draining in-flight requests");
            let _ = began_tx.send(());
        });
        let server = std::pin::pin!(server.into_future());
        let grace_over = async move {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            result = server => result.map_err(anyhow::Error::from),
            () = grace_over => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; exiting with requests still open");
                Ok(())
            }
        };
        monitor.abort();
        if let Some(probe) = redis_probe {
            probe.abort();
        }
        result
    }
}

/// Logs the upstream request count every minute (the seed's quota monitor) and samples gauges.
async fn minute_monitor(state: AppState) {
    let mut every_minute = tokio::time::interval(Duration::from_secs(60));
    every_minute.tick().await;
    loop {
        every_minute.tick().await;
        let count = state.chat.monitor().take_minute();
        tracing::info!(
            upstream_requests = count,
            quota_rpm = state.chat.quota().rpm(),
            "Gemini API requests in last minute: {count}"
        );
        state.metrics.run_upkeep();
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
