//! `[redis]`: shared state across servers; off unless a URL, sentinels or cluster nodes are set.

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::num::{NonZero, NonZeroU32};
use std::time::Duration;

/// Redis shared state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`; empty disables Redis. `REDIS_URL`, or `REDIS_HOST` + `REDIS_PORT`.
    pub url: Secret,
    /// Prefix of every key this service writes, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Timeout of each Redis call (`command_timeout_ms`); a slow Redis must never stall requests.
    #[serde(rename = "command_timeout_ms", with = "super::duration")]
    pub command_timeout: Duration,
    /// How many replicas share the quota, used only while Redis is down (each takes rpm / replicas).
    pub replicas: NonZeroU32,
    /// Lease on a question while one server asks the model, renewed while it works
    /// (`lease_ms`); a server that dies delays the others by at most this.
    #[serde(rename = "lease_ms", with = "super::duration")]
    pub lease: Duration,
    /// How long a lease holder's failure (429 after retries, 5xx, truncated answer) is shown to
    /// the servers waiting on it (`failure_share_ms`), so they answer with it instead of each
    /// asking in turn.
    #[serde(rename = "failure_share_ms", with = "super::duration")]
    pub failure_share: Duration,
    /// Largest value read back from Redis (a cached answer or a shared outcome), in bytes;
    /// larger ones are treated as corrupt: deleted and counted, never parsed.
    pub max_value_bytes: u64,
    /// Consecutive failed calls (errors or timeouts) before Redis is marked down; a single
    /// failure only sends that one call to its local fallback.
    pub down_after_failures: NonZeroU32,
    /// Consecutive successful probes before a down Redis is used again.
    pub up_after_probes: NonZeroU32,
    /// How often a down Redis is probed (`probe_interval_ms`).
    #[serde(rename = "probe_interval_ms", with = "super::duration")]
    pub probe_interval: Duration,
    /// Redis Sentinel addresses (`host:port` or `redis://` URLs); set, the master is found
    /// through them and followed after a failover (`redis.url` then only lends db/credentials).
    /// Masked when printed, like `url`: they may hold passwords.
    pub sentinels: Vec<Secret>,
    /// Name of the master group the sentinels watch (`sentinel monitor <name> ...`).
    pub sentinel_master: String,
    /// Redis Cluster seed nodes (`host:port` or `redis://` URLs); set, Redis Cluster is used.
    pub cluster_nodes: Vec<Secret>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Secret::default(),
            key_prefix: "learning-chat".to_owned(),
            command_timeout: Duration::from_millis(250),
            replicas: NonZeroU32::MIN,
            lease: Duration::from_secs(5),
            failure_share: Duration::from_secs(3),
            max_value_bytes: 1_048_576,
            down_after_failures: const { NonZero::new(3).unwrap() },
            up_after_probes: const { NonZero::new(3).unwrap() },
            probe_interval: Duration::from_secs(1),
            sentinels: Vec::new(),
            sentinel_master: "mymaster".to_owned(),
            cluster_nodes: Vec::new(),
        }
    }
}

impl RedisSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::positive("redis.command_timeout_ms", self.command_timeout)?;
        super::positive("redis.probe_interval_ms", self.probe_interval)?;
        if !self.sentinels.is_empty() && !self.cluster_nodes.is_empty() {
            return invalid("set either redis.sentinels or redis.cluster_nodes, not both");
        }
        if !self.cluster_nodes.is_empty() && !self.url.is_empty() {
            return invalid("redis.url and redis.cluster_nodes exclude each other");
        }
        if !self.sentinels.is_empty() && self.sentinel_master.trim().is_empty() {
            return invalid("redis.sentinel_master must name the master group");
        }
        if self.key_prefix.contains(['{', '}']) {
            return invalid(
                "redis.key_prefix must not contain braces (they mark cluster hash tags)",
            );
        }
        if !self.url.is_empty() && !self.url.expose().starts_with("redis") {
            return invalid("redis.url must start with redis:// or rediss://");
        }
        Ok(())
    }

    /// True when Redis shared state is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.sentinels.is_empty() || !self.cluster_nodes.is_empty()
    }
}
