//! The shared tier: answers in Redis as JSON, with the configured TTL, visible to every server.

use super::{CacheKey, CachedAnswer};
use crate::redis_link::{RedisLink, RedisUnavailable};
use ::redis::AsyncCommands;
use std::time::Duration;

/// Answers in Redis under `{prefix}:answer:{key}`.
#[derive(Debug, Clone)]
pub struct RedisCache {
    link: RedisLink,
    ttl: Duration,
}

impl RedisCache {
    /// A Redis tier with entries living `ttl`.
    pub fn new(link: RedisLink, ttl: Duration) -> RedisCache {
        RedisCache { link, ttl }
    }

    /// The Redis key of an answer.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.link.key("answer", &key.to_hex())
    }

    /// The answer, `Ok(None)` on a miss, `Err` when Redis cannot tell.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>, RedisUnavailable> {
        let redis_key = self.redis_key(key);
        let raw: Option<String> = self
            .link
            .run(
                "cache_get",
                |mut conn| async move { conn.get(redis_key).await },
            )
            .await?;
        Ok(raw.and_then(|text| decode(&text)))
    }

    /// Stores an answer for the TTL.
    pub async fn set(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<(), RedisUnavailable> {
        let redis_key = self.redis_key(key);
        let Ok(text) = serde_json::to_string(answer) else {
            return Ok(());
        };
        let ttl = self.ttl.as_secs().max(1);
        self.link
            .run("cache_set", |mut conn| async move {
                conn.set_ex::<_, _, ()>(redis_key, text, ttl).await
            })
            .await
    }
}

/// A corrupt or foreign entry is a miss, not an error: the answer is simply fetched again.
pub(crate) fn decode(text: &str) -> Option<CachedAnswer> {
    match serde_json::from_str(text) {
        Ok(answer) => Some(answer),
        Err(e) => {
            tracing::warn!("ignoring unreadable cache entry in redis: {e}");
            None
        }
    }
}
