//! The shared tier: answers in Redis as JSON, with the configured TTL, visible to every server.

use super::{CacheKey, CachedAnswer};
use crate::redis_link::{RedisLink, RedisUnavailable};
use crate::redis_scripts::SCRIPTS;
use ::redis::AsyncCommands;
use std::time::Duration;

/// Evictions kept in the stream (`MAXLEN ~`): far more than servers read between two looks.
const EVICTIONS_KEPT: u64 = 10_000;
/// An eviction stream nobody adds to expires after this; servers read it every second.
const EVICTIONS_TTL_MS: i64 = 600_000;
/// Most evictions one read takes.
const EVICTIONS_READ: u64 = 1_000;

/// `XREAD` reply: per stream, its entries as (id, flat field/value list).
type XreadReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

fn parse_key(hex_text: &str) -> Option<CacheKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut bytes).ok()?;
    Some(CacheKey::from_bytes(bytes))
}

/// Answers in Redis under `{prefix}:answer:{key}`.
#[derive(Debug, Clone)]
pub struct RedisCache {
    link: RedisLink,
    ttl: Duration,
    /// False on a server answering from the offline model: its answers must not
    /// reach servers that would serve them as the real model's.
    writable: bool,
    max_value_bytes: u64,
}

impl RedisCache {
    /// A Redis tier with entries living `ttl`; `writable: false` makes [`RedisCache::set`] a
    /// no-op; values over `max_value_bytes` are treated as corrupt.
    pub fn new(link: RedisLink, ttl: Duration, writable: bool, max_value_bytes: u64) -> RedisCache {
        RedisCache {
            link,
            ttl,
            writable,
            max_value_bytes,
        }
    }

    /// The Redis key of an answer.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.link.key("answer", &key.to_hex())
    }

    /// The largest value read back, in bytes.
    pub fn max_value_bytes(&self) -> u64 {
        self.max_value_bytes
    }

    /// The answer, `Ok(None)` on a miss, `Err` when Redis cannot tell. A corrupt or oversized
    /// entry is deleted and is a miss.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>, RedisUnavailable> {
        let redis_key = self.redis_key(key);
        let max = self.max_value_bytes;
        let script_key = redis_key.clone();
        let (raw, dropped): (String, u64) = self
            .link
            .run("cache_get", |mut conn| async move {
                SCRIPTS
                    .cache_get
                    .key(script_key)
                    .arg(max)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if dropped > 0 {
            tracing::warn!("deleted an oversized or mistyped cache entry in redis");
            crate::redis_link::metrics::redis_corrupt("answer", dropped);
        }
        if raw.is_empty() {
            return Ok(None);
        }
        match decode(&raw) {
            Some(answer) => Ok(Some(answer)),
            None => {
                self.delete_corrupt(redis_key, "answer").await;
                Ok(None)
            }
        }
    }

    /// Deletes a value that could not be read, so no reader trips over it again.
    pub(crate) async fn delete_corrupt(&self, redis_key: String, kind: &'static str) {
        crate::redis_link::metrics::redis_corrupt(kind, 1);
        let _ = self
            .link
            .run("corrupt_delete", |mut conn| async move {
                conn.del::<_, ()>(redis_key).await
            })
            .await;
    }

    /// Deletes answers (when a conversation they were made from is erased), and notes them in
    /// the evictions stream, from which every server drops them from its own memory too
    /// ([`RedisCache::evictions_after`]).
    pub async fn remove(&self, keys: &[CacheKey]) -> Result<(), RedisUnavailable> {
        if keys.is_empty() {
            return Ok(());
        }
        let redis_keys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let hexes = keys
            .iter()
            .map(CacheKey::to_hex)
            .collect::<Vec<_>>()
            .join(",");
        let stream = self.evictions_key();
        self.link
            .run("cache_remove", |mut conn| async move {
                conn.del::<_, ()>(redis_keys).await?;
                ::redis::cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(EVICTIONS_KEPT)
                    .arg("*")
                    .arg("keys")
                    .arg(hexes)
                    .query_async::<()>(&mut conn)
                    .await?;
                // Read within seconds by every server; an idle stream goes away.
                conn.pexpire::<_, ()>(&stream, EVICTIONS_TTL_MS).await
            })
            .await
    }

    fn evictions_key(&self) -> String {
        self.link.key("cache", "evictions")
    }

    /// The answers evicted after the entry `last` (any server's erasures), and the id to read
    /// after next time.
    pub async fn evictions_after(
        &self,
        last: &str,
    ) -> Result<(Vec<CacheKey>, String), RedisUnavailable> {
        let (stream, from) = (self.evictions_key(), last.to_owned());
        let reply: XreadReply = self
            .link
            .run("cache_evictions", |mut conn| async move {
                ::redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(EVICTIONS_READ)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&from)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut next = last.to_owned();
        let mut keys = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                for hexes in fields
                    .chunks(2)
                    .filter(|f| f[0] == "keys")
                    .filter_map(|f| f.get(1))
                {
                    keys.extend(hexes.split(',').filter_map(parse_key));
                }
                next = id;
            }
        }
        Ok((keys, next))
    }

    /// Stores an answer for the TTL (nothing when this server may not write answers).
    pub async fn set(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<(), RedisUnavailable> {
        if !self.writable {
            return Ok(());
        }
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
