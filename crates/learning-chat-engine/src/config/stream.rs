//! `[stream]`: streamed answers, and the Redis Streams that carry them across servers.

use serde::{Deserialize, Serialize};
use std::num::{NonZero, NonZeroU64, NonZeroUsize};
use std::time::Duration;

/// Streamed answers: keep-alive, bounds, and the Redis Streams that carry them across servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Interval of `: ping` comments on an open stream (`keepalive_ms`), so proxies do not close
    /// a stream that is quiet while the model thinks; zero disables them.
    #[serde(rename = "keepalive_ms", with = "super::duration")]
    pub keepalive: Duration,
    /// Most streams open at once on one server; beyond it 503 + Retry-After before the stream.
    pub max_open: NonZeroUsize,
    /// `Retry-After` sent with the 503 at `max_open` (`retry_after_ms`; rounded up to seconds,
    /// at least one).
    #[serde(rename = "retry_after_ms", with = "super::duration")]
    pub retry_after: Duration,
    /// Most entries kept in one question's Redis Stream (`XADD MAXLEN ~`); readers of a longer
    /// answer get the rest with the final answer.
    pub redis_max_entries: NonZeroU64,
    /// Lifetime of a question's Redis Stream after its last write (`redis_ttl_ms`).
    #[serde(rename = "redis_ttl_ms", with = "super::duration")]
    pub redis_ttl: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            keepalive: Duration::from_secs(15),
            max_open: const { NonZero::new(2_000).unwrap() },
            retry_after: Duration::from_secs(1),
            redis_max_entries: const { NonZero::new(10_000).unwrap() },
            redis_ttl: Duration::from_secs(60),
        }
    }
}

impl StreamSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        super::positive("stream.redis_ttl_ms", self.redis_ttl)
    }
}
