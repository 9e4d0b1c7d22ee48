//! The connection to Redis (the cluster's shared state), its health and its time limits.
//!
//! Redis makes N servers behave like one, but it must never cost a request: every call has a
//! short timeout and a failed call takes its local fallback. A few consecutive failures
//! (`redis.down_after_failures`) mark Redis down (logged once); from then on callers get an
//! immediate error, until a background ping has found Redis again several times in a row
//! (`redis.up_after_probes`). One slow answer therefore does not switch the whole server (and
//! with it the quota and coalescing) to local mode, and a flapping Redis is not trusted at once.
//! Failures count per slow spell, not per call: calls that were already in flight when a failure
//! was counted fail for the same reason and do not count again, so a busy server (hundreds of
//! calls waiting on one stalled reply) is not switched to local mode by a single stall.
//!
//! Three deployments are supported: one Redis (`redis.url`), a master found through Redis
//! Sentinel (`redis.sentinels` + `redis.sentinel_master`; after a failed call the sentinels are
//! asked again, so a promoted replica is followed within one probe interval), and Redis Cluster
//! (`redis.cluster_nodes`; redis-rs follows MOVED/ASK and refreshes the slot map). Keys that one
//! script touches together carry the same hash tag (see [`RedisLink::key`]), so they share a slot.

pub mod metrics;

use crate::config::RedisSettings;
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use ::redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use parking_lot::{Mutex, RwLock};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long connecting (or asking the sentinels for the master) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Redis could not serve a call (down, slow, not connected); the caller falls back.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

/// One connection to Redis, whichever the deployment. It implements redis-rs' async
/// `ConnectionLike`, so commands and scripts run on it unchanged.
// Boxing the manager would cost an allocation per call to save copying 240 bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis, or the current master of a Sentinel-managed group.
    Single(ConnectionManager),
    /// A Redis Cluster: each command goes to the node owning its keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where the connection goes.
enum Target {
    Single(::redis::Client),
    Sentinel {
        /// redis-rs keeps one connection per sentinel and tries them in order.
        sentinel: tokio::sync::Mutex<Sentinel>,
        master: String,
        node: SentinelNodeConnectionInfo,
    },
    Cluster(ClusterClient),
}

/// The live connection and, for Sentinel, the master it goes to.
struct Current {
    conn: RedisConn,
    address: String,
}

/// A shared handle to Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    current: RwLock<Option<Current>>,
    /// Set after a failed call in Sentinel mode: the master may have changed.
    stale: AtomicBool,
    /// Wakes the background task early to ask the sentinels.
    follow: tokio::sync::Notify,
    up: AtomicBool,
    /// Set at the first connection; later returns need `up_after_probes` successes.
    was_ever_up: AtomicBool,
    /// Consecutive failed calls while up (calls in flight together count once).
    failures: AtomicU32,
    /// When the last counted failure was seen: calls started before it failed in the same spell.
    last_counted_failure: Mutex<Option<Instant>>,
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

/// `host:port` becomes `redis://host:port`; full URLs are kept.
fn node_url(entry: &str) -> String {
    let entry = entry.trim();
    if entry.contains("://") {
        entry.to_owned()
    } else {
        format!("redis://{entry}")
    }
}

fn build_target(settings: &RedisSettings) -> anyhow::Result<Target> {
    if !settings.cluster_nodes.is_empty() {
        let nodes: Vec<String> = settings
            .cluster_nodes
            .iter()
            .map(|n| node_url(n.expose()))
            .collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(settings.command_timeout.max(Duration::from_millis(100)))
            // A redirect after a resharding or failover costs a retry; the call's own timeout
            // still bounds the whole.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid redis.cluster_nodes: {e}"))?;
        return Ok(Target::Cluster(client));
    }
    if !settings.sentinels.is_empty() {
        let sentinels: Vec<String> = settings
            .sentinels
            .iter()
            .map(|n| node_url(n.expose()))
            .collect();
        let sentinel = Sentinel::build(sentinels)
            .map_err(|e| anyhow::anyhow!("invalid redis.sentinels: {e}"))?;
        // redis.url, when also given, only lends the master its db and credentials.
        let mut node = SentinelNodeConnectionInfo::default();
        if !settings.url.is_empty() {
            let info = settings
                .url
                .expose()
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("invalid redis.url: {e}"))?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
        }
        return Ok(Target::Sentinel {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: settings.sentinel_master.clone(),
            node,
        });
    }
    let client = ::redis::Client::open(settings.url.expose())
        .map_err(|e| anyhow::anyhow!("invalid redis.url: {e}"))?;
    Ok(Target::Single(client))
}

impl RedisLink {
    /// A link to the configured Redis. Nothing is connected yet: call [`RedisLink::start`].
    pub fn new(settings: &RedisSettings) -> anyhow::Result<RedisLink> {
        let target = build_target(settings)?;
        crate::redis_link::metrics::redis_up(false);
        Ok(RedisLink {
            inner: Arc::new(Inner {
                target,
                current: RwLock::new(None),
                stale: AtomicBool::new(false),
                follow: tokio::sync::Notify::new(),
                up: AtomicBool::new(false),
                was_ever_up: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                last_counted_failure: Mutex::new(None),
                successes: AtomicU32::new(0),
                down_after_failures: settings.down_after_failures.get(),
                up_after_probes: settings.up_after_probes.get(),
                probe_interval: settings.probe_interval,
                timeout: settings.command_timeout,
                prefix: settings.key_prefix.clone(),
                server_id: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// Starts the background task that connects, re-probes Redis while it is down and, with
    /// Sentinel, moves to a new master after a failover.
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(link.inner.probe_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = link.inner.follow.notified() => {}
                }
                if matches!(link.inner.target, Target::Sentinel { .. })
                    && (!link.is_up() || link.inner.stale.swap(false, Ordering::AcqRel))
                {
                    link.follow_master().await;
                }
                if !link.is_up() {
                    link.probe().await;
                }
            }
        })
    }

    /// Connects if needed and PINGs; returns whether Redis answered. A down Redis is marked up
    /// after `redis.up_after_probes` successful probes in a row (the first connection at once).
    /// On a cluster the PING goes to every master, so a cluster missing a master stays down.
    pub async fn probe(&self) -> bool {
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(_) => {
                self.inner.successes.store(0, Ordering::Release);
                return false;
            }
        };
        let ping = tokio::time::timeout(
            self.inner.timeout.max(Duration::from_millis(500)),
            ::redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let ok = matches!(ping, Ok(Ok(_)));
        if !ok {
            self.inner.successes.store(0, Ordering::Release);
            if matches!(self.inner.target, Target::Cluster(_)) {
                // Start over from the seed nodes: a fresh connection learns the slot map anew
                // (after a failover the old one may still point at the dead master).
                *self.inner.current.write() = None;
            }
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

    async fn connection(&self) -> Result<RedisConn, RedisUnavailable> {
        if let Some(current) = self.inner.current.read().as_ref() {
            return Ok(current.conn.clone());
        }
        let current = match &self.inner.target {
            Target::Single(client) => Current {
                conn: RedisConn::Single(self.manager(client.clone()).await?),
                address: String::new(),
            },
            Target::Sentinel { .. } => {
                let (client, address) = self.resolve_master().await?;
                Current {
                    conn: RedisConn::Single(self.manager(client).await?),
                    address,
                }
            }
            Target::Cluster(client) => {
                let conn = tokio::time::timeout(
                    CONNECT_TIMEOUT.saturating_mul(4),
                    client.get_async_connection(),
                )
                .await
                .map_err(|_| RedisUnavailable("cluster connection timed out".to_owned()))?
                .map_err(|e| RedisUnavailable(e.to_string()))?;
                Current {
                    conn: RedisConn::Cluster(conn),
                    address: String::new(),
                }
            }
        };
        let conn = current.conn.clone();
        *self.inner.current.write() = Some(current);
        Ok(conn)
    }

    async fn manager(
        &self,
        client: ::redis::Client,
    ) -> Result<ConnectionManager, RedisUnavailable> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.inner.timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| RedisUnavailable(e.to_string()))
    }

    /// Asks the sentinels for the current master (checked with ROLE by redis-rs).
    async fn resolve_master(&self) -> Result<(::redis::Client, String), RedisUnavailable> {
        let Target::Sentinel {
            sentinel,
            master,
            node,
        } = &self.inner.target
        else {
            return Err(RedisUnavailable("not a sentinel deployment".to_owned()));
        };
        let found = tokio::time::timeout(CONNECT_TIMEOUT.saturating_mul(4), async {
            let mut sentinel = sentinel.lock().await;
            sentinel.async_master_for(master, Some(node)).await
        })
        .await
        .map_err(|_| RedisUnavailable("sentinels did not answer in time".to_owned()))?
        .map_err(|e| RedisUnavailable(format!("sentinels: {e}")))?;
        let address = found.get_connection_info().addr().to_string();
        Ok((found, address))
    }

    /// Moves the connection to the master the sentinels name, if it is not the current one.
    async fn follow_master(&self) {
        let (client, address) = match self.resolve_master().await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("redis sentinel: no master yet: {e}");
                return;
            }
        };
        let previous = self
            .inner
            .current
            .read()
            .as_ref()
            .map(|c| c.address.clone());
        if previous.as_deref() == Some(address.as_str()) {
            return;
        }
        let manager = match self.manager(client).await {
            Ok(manager) => manager,
            Err(e) => {
                tracing::warn!("redis sentinel: cannot connect to the master at {address}: {e}");
                return;
            }
        };
        if let Some(previous) = previous {
            tracing::warn!("redis sentinel: master moved from {previous} to {address}");
        }
        *self.inner.current.write() = Some(Current {
            conn: RedisConn::Single(manager),
            address,
        });
    }

    fn mark(&self, up: bool, why: &str) {
        let was = self.inner.up.swap(up, Ordering::AcqRel);
        if up {
            self.inner.was_ever_up.store(true, Ordering::Release);
        }
        if was != up {
            crate::redis_link::metrics::redis_up(up);
            crate::redis_link::metrics::redis_state_change(up);
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

    /// Counts a failed call that started at `started`, unless it was in flight when the last
    /// failure was counted (the same slow spell); returns the failures in a row.
    fn count_failure(&self, started: Instant) -> u32 {
        let mut last = self.inner.last_counted_failure.lock();
        if last.is_some_and(|at| started < at) {
            return self.inner.failures.load(Ordering::Acquire);
        }
        *last = Some(Instant::now());
        self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The namespaced key `{prefix}:{kind}:{<id>}`. The braces make `id` the Redis Cluster hash
    /// tag, so the keys of one question (answer, outcome, lease) share a slot and one script may
    /// touch them together.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{{{id}}}", self.inner.prefix)
    }

    /// The namespaced key `{prefix}:{kind}:{<group>}:{name}`: every key of one group shares a
    /// slot (the quota's sorted sets, updated by one script).
    pub fn grouped_key(&self, kind: &str, group: &str, name: &str) -> String {
        format!("{}:{kind}:{{{group}}}:{name}", self.inner.prefix)
    }

    /// A connection of its own for a command that blocks the connection it runs on
    /// (`XREAD BLOCK`): on the shared multiplexed connection it would hold up every other
    /// command. `None` for Redis Cluster (callers poll instead) or when Redis is unreachable.
    pub async fn dedicated(&self) -> Option<::redis::aio::MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        let client = match &self.inner.target {
            Target::Single(client) => client.clone(),
            Target::Sentinel { .. } => self.resolve_master().await.ok()?.0,
            Target::Cluster(_) => return None,
        };
        tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok()
    }

    /// This process's id, written into leases so only the holder releases them.
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// Runs one Redis operation within the command timeout. While Redis is down this fails at
    /// once without touching the network, so a dead Redis costs requests nothing.
    pub async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        if !self.is_up() {
            crate::redis_link::metrics::redis_fallback(operation);
            return Err(RedisUnavailable("marked down".to_owned()));
        }
        let Some(conn) = self.inner.current.read().as_ref().map(|c| c.conn.clone()) else {
            crate::redis_link::metrics::redis_fallback(operation);
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
        let result = tokio::time::timeout(self.inner.timeout, f(conn))
            .instrument(span.clone())
            .await;
        if !matches!(result, Ok(Ok(_))) {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        crate::redis_link::metrics::redis_command(operation, started.elapsed());
        let failure = match result {
            Ok(Ok(value)) => {
                self.inner.failures.store(0, Ordering::Release);
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("{operation} timed out after {:?}", self.inner.timeout),
        };
        crate::redis_link::metrics::redis_failure(operation);
        if matches!(self.inner.target, Target::Sentinel { .. })
            && !self.inner.stale.swap(true, Ordering::AcqRel)
        {
            // A dead or demoted master: ask the sentinels now rather than at the next tick.
            self.inner.follow.notify_one();
        }
        let failures = self.count_failure(started);
        if failures >= self.inner.down_after_failures {
            self.inner.successes.store(0, Ordering::Release);
            self.mark(false, &failure);
        }
        crate::redis_link::metrics::redis_fallback(operation);
        Err(RedisUnavailable(failure))
    }
}
