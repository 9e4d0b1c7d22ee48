//! Router and middleware assembly, the application's lifecycle and graceful shutdown.

use crate::admission::{Admission, ConcurrencyBound, LatencyEstimate, ModelQuotas};
use crate::agents::AgentRegistry;
/// The state every handler shares (defined with the handlers, built here).
pub use crate::api::AppState;
use crate::api::{self, StateParts};
use crate::cache::{MemoryCache, RedisCache, ResponseCache};
use crate::chat::{ChatDeps, ChatService, Prices};
use crate::coalesce::ClusterCoalescer;
use crate::config::Settings;
use crate::conversations::{
    ConversationStore, Conversations, MemoryBounds, MemoryStore, RedisStore, TokenSigner,
};
use crate::dispatch::Dispatch;
use crate::providers::resilience::RetryPolicy;
use crate::providers::{GeminiClient, OfflineModel, Provider};
use crate::redis_link::RedisLink;
use crate::routes;
use crate::telemetry::RouteLabel;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use learning_chat_records::{ConnectOptions, Records};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Builds every part of the service from settings (no listener yet).
pub fn state_from_settings(settings: Settings) -> anyhow::Result<AppState> {
    let metrics = crate::metrics::install();
    let transport = crate::client::make_transport();
    let agents = AgentRegistry::load(settings.agents.path.as_deref())?;
    let experiments =
        learning_chat_engine::experiments::Experiments::new(&settings.experiments, &agents)
            .map_err(anyhow::Error::msg)?;
    let provider = if settings.uses_gemini() {
        Provider::Gemini(GeminiClient::new(&settings.gemini, &transport)?)
    } else {
        Provider::Offline(Box::new(OfflineModel::new(&settings.offline)))
    };
    let redis = if settings.uses_redis() {
        Some(RedisLink::new(&settings.redis)?)
    } else {
        None
    };
    if settings.uses_redis() && !settings.uses_gemini() && !settings.cache.share_offline_answers {
        tracing::warn!(
            "no GEMINI_API_KEY: answering from the offline model, and not writing \
             those answers to the shared Redis cache (cache.share_offline_answers = false)"
        );
    }
    let ttl = settings.cache.ttl;
    let (capacity, max_bytes) = (settings.cache.capacity, settings.cache.max_bytes);
    let cache = match (&redis, settings.cache.enabled) {
        (_, false) => ResponseCache::Disabled,
        (None, true) => ResponseCache::Memory(MemoryCache::new(capacity, max_bytes, ttl)),
        (Some(link), true) => ResponseCache::Tiered {
            // L1 only absorbs repeats on this server; freshness is Redis's job.
            memory: MemoryCache::new(capacity, max_bytes, ttl.min(settings.cache.l1_ttl)),
            redis: RedisCache::new(
                link.clone(),
                ttl,
                // An offline server's answers must not reach the shared cache
                // unless the operator wants a fleet of offline servers to share them.
                settings.uses_gemini() || settings.cache.share_offline_answers,
                settings.redis.max_value_bytes,
            ),
        },
    };
    let cluster = match (&redis, cache.redis()) {
        (Some(link), Some(redis_cache)) => Some(
            ClusterCoalescer::new(link.clone(), redis_cache.clone(), settings.redis.lease)
                .with_relay(crate::coalesce::relay::RelayBounds {
                    max_entries: settings.stream.redis_max_entries.get(),
                    ttl_ms: u64::try_from(settings.stream.redis_ttl.as_millis())
                        .unwrap_or(u64::MAX),
                }),
        ),
        _ => None,
    };
    let up = &settings.upstream;
    let margin = up.quota_window_margin;
    // Every model any chain may call, each with its own budget as the provider counts it.
    let models: std::collections::BTreeSet<&str> = agents
        .all()
        .flat_map(|agent| agent.chain.iter().map(|spec| spec.model.as_str()))
        .collect();
    let quotas = ModelQuotas::new(
        models
            .into_iter()
            .map(|model| (model.to_owned(), settings.model_quota(model))),
        settings.model_quota(""),
        margin,
        redis
            .as_ref()
            .map(|link| (link.clone(), settings.redis.replicas)),
    );
    let router = crate::providers::ModelRouter::build(
        &agents,
        &settings,
        &provider,
        redis.clone(),
        &transport,
    )?;
    // Connects on first use: a PostgreSQL that is down at start is retried by
    // `Application::build` while the server already answers what does not need it.
    let records = match settings.database.url() {
        Some(url) => Some(Records::lazy(&ConnectOptions {
            url: url.to_owned(),
            max_connections: settings.database.max_connections.get(),
            acquire_timeout: settings.database.acquire_timeout,
        })?),
        None => None,
    };
    let conversation_ttl = settings.conversation.ttl;
    let conversations = Conversations::new(
        match (&records, &redis) {
            (Some(records), _) => ConversationStore::Records(records.clone()),
            (None, Some(link)) => {
                ConversationStore::Redis(RedisStore::new(link.clone(), conversation_ttl))
            }
            (None, None) => ConversationStore::Memory(Arc::new(MemoryStore::new(
                MemoryBounds::from_settings(&settings.conversation),
            ))),
        },
        settings.conversation.clone(),
        // Longer than any request may run, so the lock only outlives a server that died.
        settings.request_timeout() + Duration::from_secs(5),
        // A token starts its conversation only while its answer is cached, and never after a
        // stored conversation of it would have expired (it could start it again).
        TokenSigner::new(settings.cache.ttl.min(conversation_ttl)),
    );
    let webhook = learning_chat_engine::safety::webhook::WebhookSender::from_settings(
        &settings.safety,
        &transport,
    )?;
    let moderator = learning_chat_engine::safety::moderation::Moderator::from_settings(
        &settings.safety,
        &transport,
    )?;
    let safety = learning_chat_engine::safety::Safety::new(
        &settings.safety,
        &agents,
        records.clone(),
        webhook,
    );
    let chat = ChatService::new(ChatDeps {
        agents,
        cache,
        provider,
        router,
        admission: Admission::new(
            ConcurrencyBound {
                ceiling: up.max_concurrency,
                floor: up.min_concurrency,
                // Every model's quota together: spill-over keeps all of them busy.
                rpm: quotas.total_rpm(),
                headroom: up.concurrency_headroom,
            },
            // No call can usefully take longer than half the deadline: a request also has
            // to wait for its slot, and the quota gate needs room to grant future slots.
            LatencyEstimate::new(up.latency_half_life, settings.request_timeout() / 2),
            up.max_queue,
            up.max_queue_wait,
        ),
        quotas,
        cluster,
        conversations,
        retry: RetryPolicy {
            max_retries: up.max_retries,
            base_delay: up.retry_base_delay,
            max_delay: up.retry_max_delay,
            max_retry_after: up.max_retry_after,
        },
        max_message_chars: settings.server.max_message_chars.get(),
        prices: Prices {
            input_per_million: settings.telemetry.price_per_million_input_tokens,
            output_per_million: settings.telemetry.price_per_million_output_tokens,
        },
        refusal_ttl: settings.cache.refusal_ttl,
        refusal_max_bytes: settings.cache.refusal_max_bytes,
        failure_share: settings.redis.failure_share,
        cache_scope: settings.cache.scope,
        safety,
        redactor: learning_chat_engine::safety::redact::Redactor::new(&settings.privacy.redact),
        moderator,
        experiments,
    });
    let auth = crate::auth::Auth::from_settings(&settings, records.clone(), redis.clone())?;
    learning_chat_engine::admission::metrics::queue_limit(settings.upstream.max_queue);
    Ok(AppState::new(StateParts {
        chat,
        settings,
        metrics,
        redis,
        auth,
        records,
    }))
}

/// The name of the conversation-token key in the records database.
const TOKEN_SECRET: &str = "conversation-token";

/// Applies the records database's migrations and sets the conversation-token key every server
/// shares, before the listener serves. A database that cannot be reached now (PostgreSQL down)
/// does not stop the start: migrations are retried in the background, and tokens are signed
/// with this process's own key (valid on this server only) until the next restart.
async fn prepare_records(state: &AppState) {
    let tokens = state.chat.conversations().tokens().clone();
    let settings = &state.settings;
    if !settings.conversation.token_secret.is_empty() {
        tokens.set_secret(settings.conversation.token_secret.expose());
    }
    let Some(records) = state.records.clone() else {
        // Without a database every server of a cluster shares the key through the pepper (or
        // `conversation.token_secret`); with neither, the key is this process's.
        if !settings.auth.pepper.is_empty() {
            tokens.set_secret(&format!(
                "conversation-token\0{}",
                settings.auth.pepper.expose()
            ));
        }
        return;
    };
    let ready = async {
        records.migrate().await?;
        records
            .shared_secret(TOKEN_SECRET, TokenSigner::random_secret)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), ready).await {
        // A configured `conversation.token_secret` was set first and stays.
        Ok(Ok(secret)) => {
            tokens.set_secret(&secret);
        }
        Ok(Err(error)) => retry_records_later(records, error.to_string()),
        Err(_) => retry_records_later(records, "no answer within 10 s".into()),
    }
}

fn retry_records_later(records: Records, error: String) {
    tracing::error!(
        %error,
        "records database unreachable at start: conversations and keys wait for it; \
         conversation tokens are valid on this server only until it restarts"
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match records.migrate().await {
                Ok(()) => {
                    tracing::info!("records database reachable: migrations applied");
                    return;
                }
                Err(error) => tracing::warn!(%error, "records database still unreachable"),
            }
        }
    });
}

/// The router with every route and middleware.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    let mut api_routes = Router::new()
        .route(routes::AGENTS, get(api::list_agents))
        .route(routes::AGENT_CHAT, post(api::chat))
        .route(routes::AGENT_STREAM, post(api::stream::chat_stream))
        .route(
            routes::CONVERSATION,
            get(api::get_conversation).delete(api::delete_conversation),
        )
        .route(
            routes::OPENAI_MODELS,
            get(api::openai::models).fallback(api::openai::method_not_allowed),
        )
        .route(
            routes::OPENAI_CHAT_COMPLETIONS,
            post(api::openai::chat_completions).fallback(api::openai::method_not_allowed),
        )
        .route(routes::ADMIN_FLAGS, get(api::admin::list_flags))
        .route(
            routes::CONVERSATION_FEEDBACK,
            post(api::feedback::post_feedback),
        )
        .route(
            routes::ADMIN_CLASS_POLICY,
            get(api::admin::get_class_policy).put(api::admin::put_class_policy),
        )
        .route(routes::ADMIN_EXPERIMENTS, get(api::admin::list_experiments))
        .merge(api::console::routes());
    // Only with keys required: with auth off the request path is exactly as before.
    if let Some(auth) = state.auth.clone() {
        api_routes = api_routes.route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::require_key,
        ));
    }
    let mut routes = api_routes
        .route(routes::HEALTH, get(api::health))
        .route(routes::READY, get(api::ready))
        .route(routes::OPENAPI, get(api::openapi))
        .route(routes::OPENAI_OTHER, any(api::openai::not_found));
    // Off the public port unless asked for: the series name API keys and their usage.
    if settings.telemetry.metrics_enabled && settings.metrics.on_service_port {
        routes = routes.route(routes::METRICS, get(api::metrics));
    }
    if settings.server.web_ui {
        routes = routes.merge(crate::web::routes());
    }
    let routes = routes
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.server.max_body_bytes,
        ));
    with_service_layers(routes, &settings).with_state(state)
}

/// The service's middleware, outermost first: request id, span and HTTP metrics
/// ([`crate::telemetry::ObserveLayer`]); catch-panic; gzip; the Accept-Encoding check;
/// Sentry error reports (only when a DSN is configured). `$label` says where the route label
/// comes from ([`RouteLabel`]). One list for the Router and the chat route's direct dispatch,
/// so the two cannot drift apart.
///
/// Few layers on purpose: every axum `from_fn` layer clones the service stack beneath it on
/// each request, which a cache hit, at tens of thousands a second, pays for in full.
macro_rules! service_layers {
    ($settings:expr, $label:expr) => {{
        let settings: &Settings = $settings;
        let label: RouteLabel = $label;
        let sentry_enabled = !settings.telemetry.sentry_dsn.is_empty();
        ServiceBuilder::new()
            .layer(crate::telemetry::ObserveLayer::new(label))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(crate::gzip::GzipLayer::new(settings.server.gzip_min_bytes))
            // Before any work: a client that accepts neither gzip nor the plain body gets 406
            // with the error body (inside gzip, which passes that 406 through as it is).
            .layer(api::RefuseUnacceptableEncodingLayer)
            // Inside catch-panic, so a panic is reported while the request's scope is bound.
            .option_layer(sentry_enabled.then(|| {
                axum::middleware::from_fn_with_state(label, crate::telemetry::report_errors)
            }))
    }};
}

/// Wraps routes in the service's middleware ([`service_layers!`]). Public so tests can put the
/// real stack around test routes.
pub fn with_service_layers<S>(routes: Router<S>, settings: &Settings) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes.layer(service_layers!(settings, RouteLabel::Matched))
}

/// What the server runs: the chat route's questions dispatched straight to their handler
/// inside the service's middleware, every other request through [`router`]
/// ([`crate::dispatch`] says why).
pub fn service(
    state: AppState,
) -> Dispatch<
    impl tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
        > + Clone
        + Send
        + Sync
        + 'static,
> {
    let chat_state = state.clone();
    let chat = service_layers!(&state.settings, RouteLabel::Fixed(routes::AGENT_CHAT)).service(
        tower::service_fn(move |request| {
            let state = chat_state.clone();
            // Boxed here, innermost: every layer above wraps its future by value, so an
            // unboxed question (several kB of state) was copied once per layer and again by
            // the connection on every request.
            let answer: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                Ok::<_, std::convert::Infallible>(crate::dispatch::chat_route(state, request).await)
            });
            answer
        }),
    );
    Dispatch::new(router(state), chat)
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

/// The router of the metrics listener (`metrics.bind`): `GET /metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(routes::METRICS, get(api::metrics))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}

/// The service bound to its listeners, ready to run.
pub struct Application {
    listener: TcpListener,
    /// The metrics listener, apart from the service port (`metrics.bind`), unless it is off.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    tls: Option<crate::tls::Tls>,
    /// Keeps the API keys current once running (loaded once by `build`).
    key_refresher: Option<crate::auth::key_set::KeyRefresher>,
}

impl Application {
    /// Builds the service and binds its listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let bind = settings.server.bind;
        let tls = crate::tls::Tls::from_settings(&settings.server)?;
        let metrics_bind = if settings.telemetry.metrics_enabled {
            settings.metrics.listener()?
        } else {
            None
        };
        let state = state_from_settings(settings)?;
        prepare_records(&state).await;
        let key_refresher = match &state.auth {
            Some(auth) => Some(load_keys(auth, &state.settings).await),
            None => None,
        };
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        let metrics_listener = match metrics_bind {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (metrics.bind) for metrics: {e}")
            })?),
            None => None,
        };
        Ok(Application {
            listener,
            metrics_listener,
            state,
            tls,
            key_refresher,
        })
    }

    /// The address the metrics listener actually bound, if it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        let Application {
            listener,
            metrics_listener,
            state,
            tls,
            key_refresher,
        } = self;
        // Scraped until the process exits, through the drain too; Prometheus on the pod network
        // or loopback is its only client, so axum's plain server is enough here.
        let metrics_server = metrics_listener.map(|listener| {
            let router = metrics_router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the metrics listener stopped: {e}");
                }
            })
        });
        let auth_tasks = match (&state.auth, key_refresher) {
            (Some(auth), Some(refresher)) => Some((
                auth.start(refresher),
                state.settings.database.acquire_timeout,
            )),
            _ => None,
        };
        let grace = state.settings.server.shutdown_grace;
        let monitor = tokio::spawn(minute_monitor(state.clone()));
        let experiment_writer = experiment_writer(&state);
        let sweeper = state.records.clone().map(|records| {
            tokio::spawn(retention_sweeper(records, state.settings.records.clone()))
        });
        let evictions = state.chat.cache().watch_evictions(Duration::from_secs(1));
        let flag_delivery = state.chat.safety().start_delivery();
        let redis_probe = state.redis.as_ref().map(|link| link.start());
        let shutdown_state = state.clone();
        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = crate::serve::ConnectionLimits::from_settings(&state.settings.server);
        let tls_check = state.settings.server.tls_reload_check;
        let app = service(state);
        let tls_reload = tls.clone().map(|tls| {
            let every = tls_check;
            tokio::spawn(tls.watch_for_changes(every))
        });
        let server = crate::serve::serve(listener, app, limits, tls, async move {
            shutdown.await;
            shutdown_state.begin_draining();
            tracing::info!("shutdown requested: no new connections; draining in-flight requests");
            let _ = began_tx.send(());
        });
        let server = std::pin::pin!(server);
        let grace_over = async move {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            () = server => Ok(()),
            () = grace_over => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; exiting with requests still open");
                Ok(())
            }
        };
        monitor.abort();
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        if let Some(evictions) = evictions {
            evictions.abort();
        }
        if let Some(delivery) = flag_delivery {
            delivery.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        if let Some(reload) = tls_reload {
            reload.abort();
        }
        if let Some(probe) = redis_probe {
            probe.abort();
        }
        // After the drain: the last answers' usage is in the ledger's final write.
        if let Some((tasks, acquire_timeout)) = auth_tasks {
            tasks.stop(acquire_timeout * 2).await;
        }
        if let Some((writer, state)) = experiment_writer {
            writer.abort();
            write_experiment_counts(&state).await;
        }
        result
    }
}

/// Every `database.ledger_flush_ms`, adds this server's per-variant counts to the records
/// database (nothing to do without experiments or a database); returns the task and the state
/// for the last write at shutdown.
fn experiment_writer(state: &AppState) -> Option<(tokio::task::JoinHandle<()>, AppState)> {
    if state.records.is_none() || state.chat.experiments().all().is_empty() {
        return None;
    }
    let every = state.settings.database.ledger_flush;
    let writer_state = state.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            write_experiment_counts(&writer_state).await;
        }
    });
    Some((task, state.clone()))
}

async fn write_experiment_counts(state: &AppState) {
    let Some(records) = &state.records else {
        return;
    };
    if let Err(error) = state.chat.experiments().write_counts(records).await {
        tracing::warn!(%error, "cannot write the experiments' counts; kept for the next write");
    }
}

/// Loads every API key before the listener serves, waiting at most a few connection attempts:
/// with the database down the server still starts, answering 503 `auth_unavailable` to keyed
/// requests until the refresher's first successful read.
async fn load_keys(
    auth: &crate::auth::Auth,
    settings: &Settings,
) -> crate::auth::key_set::KeyRefresher {
    let (refresher, result) = auth.load().await;
    match result {
        Ok(()) => tracing::info!(keys = auth.keys_held(), "API keys loaded"),
        Err(error) => tracing::warn!(
            %error,
            database = %settings.database.url.masked(),
            "cannot read API keys from the records database yet; keyed requests get 503 auth_unavailable until it answers"
        ),
    }
    refresher
}

/// Logs the model-call count every minute (the quota can be watched from the logs alone), and
/// drains the metrics recorder every `metrics.upkeep_interval_ms`: it buffers every histogram
/// sample until then, which at full speed is megabytes a second.
async fn minute_monitor(state: AppState) {
    let mut every_minute = tokio::time::interval(Duration::from_secs(60));
    let mut upkeep = tokio::time::interval(state.settings.metrics.upkeep_interval);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every_minute.tick().await;
    loop {
        tokio::select! {
            _ = upkeep.tick() => state.metrics.run_upkeep(),
            _ = every_minute.tick() => {
                let count = state.chat.monitor().take_minute();
                tracing::info!(
                    upstream_requests = count,
                    quota_rpm = state.chat.quotas().total_rpm(),
                    "Gemini API requests in last minute: {count}"
                );
                crate::telemetry::flush_shed_log();
            }
        }
    }
}

/// Deletes what `[records]` keeps no longer, every `records.sweep_interval_ms` (the first after
/// one interval). Every server runs it: the sweep is idempotent, so two at once only repeat
/// each other's deletes.
async fn retention_sweeper(
    records: Records,
    settings: learning_chat_engine::config::RecordsSettings,
) {
    let retention = learning_chat_records::console::Retention {
        days: settings.retention_days,
        usage_days: settings.usage_retention_days,
    };
    let mut every = tokio::time::interval(settings.sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match records
            .sweep(retention, learning_chat_records::now_ms())
            .await
        {
            Ok(removed) if removed != Default::default() => tracing::info!(
                conversations = removed.conversations,
                flags = removed.flags,
                usage_rows = removed.usage_rows,
                "retention sweep: removed what is kept no longer"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "retention sweep failed; trying again at the next interval")
            }
        }
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
