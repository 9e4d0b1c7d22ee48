//! The in-process tier: moka with a TTL, bounded in entries and in bytes (TinyLFU eviction).
//!
//! Both bounds are one moka weight: an answer weighs its bytes, but at least
//! `max_bytes / capacity`, so the cache holds at most `capacity` answers and at most `max_bytes`
//! bytes, whichever binds first. The bytes actually held are counted apart (added on insert,
//! taken back by moka's eviction listener for every removal), for the gauge.

use super::{CacheKey, CachedAnswer};
// The synchronous cache: a hit is a map read, and its future (kept by every request that looks
// up an answer) stays small; moka's async get carried ~800 bytes of state for nothing to await.
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What an entry costs besides its text: the key, the answer's fields and moka's bookkeeping
/// (its entry, access-order nodes and frequency sketch share).
const ENTRY_OVERHEAD: u64 = 256;

/// The bytes an answer holds in the cache.
fn answer_bytes(answer: &CachedAnswer) -> u64 {
    ENTRY_OVERHEAD
        + answer.text.len() as u64
        + answer.model.len() as u64
        + answer.question.len() as u64
}

/// Answers in process memory.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    inner: Cache<CacheKey, Arc<CachedAnswer>>,
    /// Bytes the answers held now take.
    bytes: Arc<AtomicU64>,
}

impl MemoryCache {
    /// A cache holding at most `capacity` answers and `max_bytes` bytes, for `ttl` each.
    pub fn new(capacity: u64, max_bytes: u64, ttl: Duration) -> MemoryCache {
        let bytes = Arc::new(AtomicU64::new(0));
        let floor = (max_bytes / capacity.max(1)).max(1);
        let released = bytes.clone();
        MemoryCache {
            inner: Cache::builder()
                .name("responses")
                .max_capacity(max_bytes)
                .weigher(move |_, answer: &Arc<CachedAnswer>| {
                    u32::try_from(answer_bytes(answer).max(floor)).unwrap_or(u32::MAX)
                })
                .eviction_listener(move |_, answer: Arc<CachedAnswer>, _| {
                    released.fetch_sub(answer_bytes(&answer), Ordering::AcqRel);
                })
                .time_to_live(ttl)
                .build(),
            bytes,
        }
    }

    /// The answer for `key`, if present and fresh.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.inner.get(key)
    }

    /// Stores an answer.
    pub async fn insert(&self, key: CacheKey, answer: Arc<CachedAnswer>) {
        self.bytes
            .fetch_add(answer_bytes(&answer), Ordering::AcqRel);
        self.inner.insert(key, answer);
    }

    /// Drops an answer.
    pub async fn remove(&self, key: &CacheKey) {
        self.inner.invalidate(key);
    }

    /// Applies moka's pending bookkeeping (expiry, eviction) so the counts below are current.
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks();
    }

    /// Approximate number of entries (moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Bytes the answers held take (moka evicts lazily: current after `run_pending_tasks`).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheKeyParts;
    use crate::providers::Usage;

    fn key(i: usize) -> CacheKey {
        CacheKey::new(CacheKeyParts {
            provider: "p",
            agent_id: "math",
            prompt_version: "v",
            model: "m",
            message: &format!("question {i}"),
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        })
    }

    fn answer(len: usize) -> Arc<CachedAnswer> {
        Arc::new(CachedAnswer {
            digest: Default::default(),
            text: "x".repeat(len),
            model: "m".into(),
            usage: Usage::default(),
            created_at_unix: 0,
            question: "q".into(),
            ratings: Default::default(),
        })
    }

    #[tokio::test]
    async fn the_bytes_held_stay_within_the_budget() {
        const BUDGET: u64 = 1024 * 1024;
        let cache = MemoryCache::new(100_000, BUDGET, Duration::from_secs(3600));
        // 8 MiB of 8 KiB answers into a 1 MiB cache.
        for i in 0..1024 {
            cache.insert(key(i), answer(8 * 1024)).await;
            if i % 64 == 0 {
                cache.run_pending_tasks().await;
                assert!(cache.bytes() <= BUDGET + 64 * 8500, "{}", cache.bytes());
            }
        }
        cache.run_pending_tasks().await;
        assert!(cache.bytes() <= BUDGET, "{} > {BUDGET}", cache.bytes());
        assert!(
            cache.bytes() > BUDGET / 2,
            "the budget is used: {}",
            cache.bytes()
        );
        assert!(cache.entry_count() <= 128);
    }

    #[tokio::test]
    async fn small_answers_are_bounded_by_the_count_and_the_bytes_are_counted_back() {
        let cache = MemoryCache::new(10, 1024 * 1024, Duration::from_secs(3600));
        for i in 0..100 {
            cache.insert(key(i), answer(10)).await;
        }
        cache.run_pending_tasks().await;
        assert!(cache.entry_count() <= 10, "{}", cache.entry_count());
        assert_eq!(cache.bytes(), cache.entry_count() * (ENTRY_OVERHEAD + 12));
        // Replacing and removing take their bytes back.
        cache.insert(key(99), answer(10)).await;
        for i in 0..100 {
            cache.remove(&key(i)).await;
        }
        cache.run_pending_tasks().await;
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(cache.bytes(), 0);
        // An answer larger than the whole budget is not kept, and not counted.
        let tiny = MemoryCache::new(10, 4096, Duration::from_secs(3600));
        tiny.insert(key(0), answer(10_000)).await;
        tiny.run_pending_tasks().await;
        assert_eq!(tiny.bytes(), 0);
    }
}
