//! The connection to Redis (the cluster's shared state), its health and its time limits.
//!
//! Redis makes N servers behave like one, but it must never cost a request: every call has a
//! short timeout and a failed call takes its local fallback. A few consecutive failures
//! (`redis.down_after_failures`) mark Redis down (logged once); from then on callers get an
//! immediate error, until a background ping has found Redis again several times in a row
//! (`redis.up_after_probes`). One slow answer therefore does not switch the whole server (and
//! with it the quota and coalescing) to local mode, and a flapping Redis is not trusted at once.

use crate::config::RedisSettings;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use parking_lot::RwLock;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Redis could not serve a call (down, slow, not connected); the caller falls back.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

/// A shared handle to Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    manager: RwLock<Option<ConnectionManager>>,
    up: AtomicBool,
    /// Set at the first connection; later returns need `up_after_probes` successes.
    was_ever_up: AtomicBool,
    /// Consecutive failed calls while up.
    failures: AtomicU32,
    /// Consecutive successful probes while down.
    successes: AtomicU32,
    down_after_failures: u32,
    up_after_probes: u32,
    probe_interval: Duration,
    timeout: Duration,
    prefix: String,
    server_id: String,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("up", &self.is_up())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to the configured Redis. Nothing is connected yet: call [`RedisLink::start`].
    pub fn new(settings: &RedisSettings) -> anyhow::Result<RedisLink> {
        let client = ::redis::Client::open(settings.url.expose())
            .map_err(|e| anyhow::anyhow!("invalid redis.url: {e}"))?;
        crate::metrics::redis_up(false);
        Ok(RedisLink {
            inner: Arc::new(Inner {
                client,
                manager: RwLock::new(None),
                up: AtomicBool::new(false),
                was_ever_up: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                successes: AtomicU32::new(0),
                down_after_failures: settings.down_after_failures.max(1),
                up_after_probes: settings.up_after_probes.max(1),
                probe_interval: Duration::from_millis(settings.probe_interval_ms.max(1)),
                timeout: Duration::from_millis(settings.command_timeout_ms.max(1)),
                prefix: settings.key_prefix.clone(),
                server_id: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// Starts the background task that connects, and re-probes Redis while it is down.
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(link.inner.probe_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if !link.is_up() {
                    link.probe().await;
                }
            }
        })
    }

    /// Connects if needed and PINGs; returns whether Redis answered. A down Redis is marked up
    /// after `redis.up_after_probes` successful probes in a row (the first connection at once).
    pub async fn probe(&self) -> bool {
        let manager = match self.connection().await {
            Ok(manager) => manager,
            Err(_) => {
                self.inner.successes.store(0, Ordering::Release);
                return false;
            }
        };
        let mut conn = manager;
        let ping = tokio::time::timeout(
            self.inner.timeout.max(Duration::from_millis(500)),
            ::redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let ok = matches!(ping, Ok(Ok(_)));
        if !ok {
            self.inner.successes.store(0, Ordering::Release);
        } else if !self.is_up() {
            let successes = self.inner.successes.fetch_add(1, Ordering::AcqRel) + 1;
            let first_connection = !self.inner.was_ever_up.load(Ordering::Acquire);
            if first_connection || successes >= self.inner.up_after_probes {
                self.inner.successes.store(0, Ordering::Release);
                self.inner.failures.store(0, Ordering::Release);
                self.mark(true, "");
            }
        }
        ok
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisUnavailable> {
        if let Some(manager) = self.inner.manager.read().clone() {
            return Ok(manager);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(self.inner.timeout.max(Duration::from_millis(100)))
            .set_number_of_retries(1)
            .set_max_delay(200);
        match ConnectionManager::new_with_config(self.inner.client.clone(), config).await {
            Ok(manager) => {
                *self.inner.manager.write() = Some(manager.clone());
                Ok(manager)
            }
            Err(e) => Err(RedisUnavailable(e.to_string())),
        }
    }

    fn mark(&self, up: bool, why: &str) {
        let was = self.inner.up.swap(up, Ordering::AcqRel);
        if up {
            self.inner.was_ever_up.store(true, Ordering::Release);
        }
        if was != up {
            crate::metrics::redis_up(up);
            crate::metrics::redis_state_change(up);
            if up {
                tracing::info!("redis reachable: using the shared cache, coalescing and quota");
            } else {
                tracing::warn!(
                    "redis unavailable ({why}): serving from local cache, local coalescing and \
                     the local quota share until it is back"
                );
            }
        }
    }

    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The namespaced key `{prefix}:{kind}:{id}`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.inner.prefix)
    }

    /// This process's id, written into leases so only the holder releases them.
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// Runs one Redis operation within the command timeout. While Redis is down this fails at
    /// once without touching the network, so a dead Redis costs requests nothing.
    pub async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        if !self.is_up() {
            crate::metrics::redis_fallback(operation);
            return Err(RedisUnavailable("marked down".to_owned()));
        }
        let Some(manager) = self.inner.manager.read().clone() else {
            crate::metrics::redis_fallback(operation);
            return Err(RedisUnavailable("not connected".to_owned()));
        };
        let started = Instant::now();
        // The operation's name only: keys carry cache keys, which stay off spans.
        let span = crate::trace_span!(
            "redis",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = operation,
            otel.status_code = tracing::field::Empty,
        );
        let result = tokio::time::timeout(self.inner.timeout, f(manager))
            .instrument(span.clone())
            .await;
        if !matches!(result, Ok(Ok(_))) {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        crate::metrics::redis_command(operation, started.elapsed());
        let failure = match result {
            Ok(Ok(value)) => {
                self.inner.failures.store(0, Ordering::Release);
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("{operation} timed out after {:?}", self.inner.timeout),
        };
        crate::metrics::redis_failure(operation);
        let failures = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.inner.down_after_failures {
            self.inner.successes.store(0, Ordering::Release);
            self.mark(false, &failure);
        }
        crate::metrics::redis_fallback(operation);
        Err(RedisUnavailable(failure))
    }
}
