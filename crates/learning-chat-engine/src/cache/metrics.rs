//! Metrics of the answer cache: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Cache lookups by tier (memory/redis) and result (hit/miss).
pub const CACHE_LOOKUPS: &str = "learning_chat_cache_lookups_total";

/// Answers held in the in-process cache.
pub const CACHE_ENTRIES: &str = "learning_chat_cache_entries";

/// Bytes the answers in the in-process cache take.
pub const CACHE_BYTES: &str = "learning_chat_cache_bytes";

/// Which tier answered a lookup; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    /// In-process memory.
    Memory,
    /// Redis.
    Redis,
}

impl CacheTier {
    /// Its position among the tiers (for arrays of per-tier metric handles).
    pub fn index(self) -> usize {
        match self {
            CacheTier::Memory => 0,
            CacheTier::Redis => 1,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Redis => "redis",
        }
    }
}

/// Handles of the cache-lookup counters, by tier then hit: every request looks the cache up, and a
/// lookup through the macros hashes the name and labels each time. Made only once a recorder is
/// installed ([`recorder_installed`]), so no handle can be a no-op one.
static CACHE_LOOKUP_HANDLES: [[OnceLock<Counter>; 2]; 2] = [
    [OnceLock::new(), OnceLock::new()],
    [OnceLock::new(), OnceLock::new()],
];

static RECORDER_READY: AtomicBool = AtomicBool::new(false);

/// True once the process's recorder is installed: a hot metric may then keep its handle.
pub(crate) fn recorder_ready() -> bool {
    RECORDER_READY.load(Ordering::Acquire)
}

/// Tells the engine the process's metrics recorder is installed: from now on its hot counters
/// keep their handles.
pub fn recorder_installed() {
    RECORDER_READY.store(true, Ordering::Release);
}

/// Records a cache lookup.
pub fn cache_lookup(tier: CacheTier, hit: bool) {
    let make = || counter!(CACHE_LOOKUPS, "tier" => tier.as_str(), "result" => if hit { "hit" } else { "miss" });
    if RECORDER_READY.load(Ordering::Acquire) {
        CACHE_LOOKUP_HANDLES[tier.index()][usize::from(hit)]
            .get_or_init(make)
            .increment(1);
    } else {
        make().increment(1);
    }
}

/// Sets the in-process cache size.
pub fn cache_entries(entries: u64) {
    gauge!(CACHE_ENTRIES, "tier" => "memory").set(entries as f64);
}

/// Sets the bytes the in-process cache holds.
pub fn cache_bytes(bytes: u64) {
    gauge!(CACHE_BYTES, "tier" => "memory").set(bytes as f64);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(CACHE_LOOKUPS, "Response cache lookups by tier and result.");
    describe_gauge!(CACHE_ENTRIES, "Answers held in the in-process cache.");
    describe_gauge!(
        CACHE_BYTES,
        metrics::Unit::Bytes,
        "Bytes the answers in the in-process cache take (cache.max_bytes)."
    );
}
