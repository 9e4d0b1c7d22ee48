//! The response cache: complete answers by question, in process (moka) and, when configured, in
//! Redis. The chat service only sees [`ResponseCache`].

mod key;
mod memory;

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
}

/// Which tier answered a lookup; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    /// In-process memory.
    Memory,
    /// Redis.
    Redis,
}

impl CacheTier {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Redis => "redis",
        }
    }
}

/// The cache backend chosen at start-up.
#[derive(Debug, Clone)]
pub enum ResponseCache {
    /// Caching turned off.
    Disabled,
    /// In-process only.
    Memory(MemoryCache),
}

impl ResponseCache {
    /// The cached answer for `key`, with the tier that had it.
    pub async fn get(&self, key: &CacheKey) -> Option<(Arc<CachedAnswer>, CacheTier)> {
        match self {
            ResponseCache::Disabled => None,
            ResponseCache::Memory(memory) => {
                let found = memory.get(key).await;
                crate::metrics::cache_lookup(CacheTier::Memory, found.is_some());
                found.map(|a| (a, CacheTier::Memory))
            }
        }
    }

    /// Stores a complete answer.
    pub async fn insert(&self, key: CacheKey, answer: Arc<CachedAnswer>) {
        match self {
            ResponseCache::Disabled => {}
            ResponseCache::Memory(memory) => memory.insert(key, answer).await,
        }
    }

    /// Entries held in process memory.
    pub fn memory_entries(&self) -> u64 {
        match self {
            ResponseCache::Disabled => 0,
            ResponseCache::Memory(memory) => memory.entry_count(),
        }
    }
}
