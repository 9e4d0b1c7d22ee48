//! The response cache: complete answers by question, in process (moka) and, when configured, in
//! Redis. The chat service only sees [`ResponseCache`]; [`ResponseCache::keep`] is the one place
//! that writes answers to both tiers.

mod key;
mod memory;
pub mod metrics;
pub(crate) mod redis;

pub use self::redis::RedisCache;
pub use key::{normalise_message, CacheKey, CacheKeyParts};
pub use memory::MemoryCache;

use crate::providers::Usage;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a cache entry holds: everything needed to answer without the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The answer text.
    pub text: String,
    /// The model that produced it.
    pub model: String,
    /// Tokens it cost when it was produced.
    pub usage: Usage,
    /// When it was produced (Unix seconds).
    pub created_at_unix: u64,
    /// The question it answers (normalised): a conversation token's follow-up reads its first
    /// exchange from here, so a one-shot question stores nothing else.
    #[serde(default)]
    pub question: String,
    /// Gemini's safety ratings of the question and the answer: a hit carries them at no cost.
    #[serde(default, skip_serializing_if = "crate::safety::Ratings::is_empty")]
    pub ratings: crate::safety::Ratings,
    /// The digest of `text` a conversation token carries, worked out at the first hit that
    /// signs one, not at every hit (the text is kilobytes of SHA-256).
    #[serde(skip)]
    pub digest: std::sync::OnceLock<[u8; 8]>,
}

impl CachedAnswer {
    /// The first 8 bytes of SHA-256 of the text (see [`crate::conversations::answer_digest`]).
    pub fn digest(&self) -> [u8; 8] {
        *self
            .digest
            .get_or_init(|| crate::conversations::answer_digest(&self.text))
    }
}

/// The cache tiers, defined with the metrics that label lookups by them.
pub use metrics::CacheTier;

/// How a kept answer reaches the shared (Redis) tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Written now, in the background.
    Now,
    /// Handed back for the lease holder to publish before it releases the question: the
    /// servers waiting on the lease must find the answer when the lease goes.
    ByLease,
    /// It came from the shared tier: this process only.
    Already,
}

/// The cache tiers chosen at start-up (memory, or memory in front of Redis).
#[derive(Debug, Clone)]
pub enum ResponseCache {
    /// Caching turned off.
    Disabled,
    /// In-process only.
    Memory(MemoryCache),
    /// A short-lived in-process first tier over the shared Redis tier.
    Tiered {
        /// L1: this process.
        memory: MemoryCache,
        /// L2: every server.
        redis: RedisCache,
    },
}

impl ResponseCache {
    /// The cached answer for `key`, with the tier that had it.
    pub async fn get(&self, key: &CacheKey) -> Option<(Arc<CachedAnswer>, CacheTier)> {
        self.fetch(key, true).await
    }

    /// The cached answer for `key`, not counted as a lookup: a conversation reading back an
    /// answer it was given (its token's first exchange), not a question asked.
    pub async fn read_back(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.fetch(key, false).await.map(|(answer, _)| answer)
    }

    async fn fetch(&self, key: &CacheKey, count: bool) -> Option<(Arc<CachedAnswer>, CacheTier)> {
        let lookup = |tier, hit| {
            if count {
                crate::cache::metrics::cache_lookup(tier, hit);
            }
        };
        match self {
            ResponseCache::Disabled => None,
            ResponseCache::Memory(memory) => {
                let found = memory.get(key).await;
                lookup(CacheTier::Memory, found.is_some());
                found.map(|a| (a, CacheTier::Memory))
            }
            ResponseCache::Tiered { memory, redis } => {
                if let Some(found) = memory.get(key).await {
                    lookup(CacheTier::Memory, true);
                    return Some((found, CacheTier::Memory));
                }
                lookup(CacheTier::Memory, false);
                // Redis down is a miss: the question goes to the model instead of failing.
                // Boxed: a Redis call's future is large, and a hit in memory never makes one.
                let found = Box::pin(redis.get(key)).await.ok().flatten().map(Arc::new);
                lookup(CacheTier::Redis, found.is_some());
                let found = found?;
                Box::pin(memory.insert(*key, found.clone())).await;
                Some((found, CacheTier::Redis))
            }
        }
    }

    /// The shared tier, when there is one.
    pub fn redis(&self) -> Option<&RedisCache> {
        match self {
            ResponseCache::Tiered { redis, .. } => Some(redis),
            _ => None,
        }
    }

    /// Keeps a complete answer: the one place that decides which tier gets what. Process
    /// memory at once; the shared tier as `share` says. Returns the answer when the lease
    /// holder is to publish it ([`Share::ByLease`]).
    pub async fn keep(
        &self,
        key: CacheKey,
        answer: CachedAnswer,
        share: Share,
    ) -> Option<CachedAnswer> {
        let answer = Arc::new(answer);
        if let ResponseCache::Memory(memory) | ResponseCache::Tiered { memory, .. } = self {
            memory.insert(key, answer.clone()).await;
            crate::cache::metrics::cache_entries(memory.entry_count());
            crate::cache::metrics::cache_bytes(memory.bytes());
        }
        match (share, self.redis()) {
            (Share::ByLease, _) => Some(Arc::unwrap_or_clone(answer)),
            // Off the request path; Redis may also be down now and back by the time it runs.
            (Share::Now, Some(redis)) => {
                let redis = redis.clone();
                tokio::spawn(crate::trace::in_background_of_current(async move {
                    let _ = redis.set(&key, &answer).await;
                }));
                None
            }
            (Share::Now | Share::Already, _) => None,
        }
    }

    /// Drops answers from this process and from Redis; `Err` when Redis could not be reached
    /// (the in-process entries are gone either way).
    pub async fn remove(
        &self,
        keys: &[CacheKey],
    ) -> Result<(), crate::redis_link::RedisUnavailable> {
        match self {
            ResponseCache::Disabled => Ok(()),
            ResponseCache::Memory(memory) => {
                for key in keys {
                    memory.remove(key).await;
                }
                Ok(())
            }
            ResponseCache::Tiered { memory, redis } => {
                for key in keys {
                    memory.remove(key).await;
                }
                redis.remove(keys).await
            }
        }
    }

    /// With Redis, keeps this server's in-process answers in step with erasures made on any
    /// server: every `every` it reads the evictions they noted in Redis (one `XREAD`, off the
    /// request path) and drops those answers from its memory. `None` without Redis.
    pub fn watch_evictions(
        &self,
        every: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let ResponseCache::Tiered { memory, redis } = self else {
            return None;
        };
        let (memory, redis) = (memory.clone(), redis.clone());
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // From the start of the stream (at most its few thousand recent entries): an
            // eviction noted while this server was starting must not be missed, and dropping
            // an answer this server never held costs nothing.
            let mut last = "0-0".to_owned();
            loop {
                ticks.tick().await;
                // Several reads when far behind; Redis down: the next tick tries again.
                while let Ok((keys, next)) = redis.evictions_after(&last).await {
                    for key in &keys {
                        memory.remove(key).await;
                    }
                    let caught_up = next == last;
                    last = next;
                    if caught_up {
                        break;
                    }
                }
            }
        }))
    }

    /// Brings the in-process entry count up to date (called before a metrics scrape).
    pub async fn run_pending_tasks(&self) {
        if let ResponseCache::Memory(memory) | ResponseCache::Tiered { memory, .. } = self {
            memory.run_pending_tasks().await;
            crate::cache::metrics::cache_bytes(memory.bytes());
        }
    }

    /// Bytes the answers held in process memory take.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            ResponseCache::Disabled => 0,
            ResponseCache::Memory(memory) | ResponseCache::Tiered { memory, .. } => memory.bytes(),
        }
    }

    /// Entries held in process memory.
    pub fn memory_entries(&self) -> u64 {
        match self {
            ResponseCache::Disabled => 0,
            ResponseCache::Memory(memory) | ResponseCache::Tiered { memory, .. } => {
                memory.entry_count()
            }
        }
    }
}
