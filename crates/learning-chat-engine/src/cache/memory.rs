//! The in-process tier: moka with a TTL and a capacity (TinyLFU eviction).

use super::{CacheKey, CachedAnswer};
use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// Answers in process memory.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    inner: Cache<CacheKey, Arc<CachedAnswer>>,
}

impl MemoryCache {
    /// A cache holding at most `capacity` answers for `ttl` each.
    pub fn new(capacity: u64, ttl: Duration) -> MemoryCache {
        MemoryCache {
            inner: Cache::builder()
                .name("responses")
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The answer for `key`, if present and fresh.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.inner.get(key).await
    }

    /// Stores an answer.
    pub async fn insert(&self, key: CacheKey, answer: Arc<CachedAnswer>) {
        self.inner.insert(key, answer).await;
    }

    /// Drops an answer.
    pub async fn remove(&self, key: &CacheKey) {
        self.inner.invalidate(key).await;
    }

    /// Applies moka's pending bookkeeping (expiry, eviction) so the count below is current.
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// Approximate number of entries (moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}
