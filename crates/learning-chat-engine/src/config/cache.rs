//! `[cache]`: the response cache (in process, and in Redis when configured).

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who shares cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Every caller: an answer paid for once serves everyone (the point of the service).
    #[default]
    Shared,
    /// Each API key its own: one key's learners never learn what another key's asked, at the
    /// price of a model call per key for the same question.
    Key,
}

/// The response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Turn caching off entirely (every question goes to the model; coalescing still applies).
    pub enabled: bool,
    /// `shared` (every caller) or `key` (each API key its own answers, coalescing included).
    pub scope: CacheScope,
    /// How long an answer is served from cache (`ttl_ms`).
    #[serde(rename = "ttl_ms", with = "super::duration")]
    pub ttl: Duration,
    /// Most answers kept in process memory; may be 0 only with caching off.
    pub capacity: u64,
    /// Most bytes the answers kept in process memory take (text and bookkeeping).
    pub max_bytes: u64,
    /// Most bytes the remembered refusals take (`refusal_ttl_ms`).
    pub refusal_max_bytes: u64,
    /// With Redis enabled, the in-process cache is a short-lived first tier: its TTL
    /// (`l1_ttl_ms`).
    #[serde(rename = "l1_ttl_ms", with = "super::duration")]
    pub l1_ttl: Duration,
    /// How long a prompt the model refused (blocked or filtered) is answered with the same
    /// refusal without asking again (`refusal_ttl_ms`); zero = never remembered.
    #[serde(rename = "refusal_ttl_ms", with = "super::duration")]
    pub refusal_ttl: Duration,
    /// Let a server without a Gemini key (answering from the offline model) write its
    /// answers into the shared Redis cache. Off: offline answers stay in that server's memory.
    pub share_offline_answers: bool,
    /// Deprecated: `ttl_secs` in seconds, read as `ttl_ms` (warned about at start-up).
    #[serde(rename = "ttl_secs", skip_serializing)]
    pub deprecated_ttl_secs: Option<u64>,
    /// Deprecated: `l1_ttl_secs` in seconds, read as `l1_ttl_ms` (warned about at start-up).
    #[serde(rename = "l1_ttl_secs", skip_serializing)]
    pub deprecated_l1_ttl_secs: Option<u64>,
    /// Deprecated: `refusal_ttl_secs` in seconds, read as `refusal_ttl_ms` (warned about at start-up).
    #[serde(rename = "refusal_ttl_secs", skip_serializing)]
    pub deprecated_refusal_ttl_secs: Option<u64>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            scope: CacheScope::Shared,
            ttl: Duration::from_secs(3600),
            capacity: 1000,
            max_bytes: 8 * 1024 * 1024,
            refusal_max_bytes: 1024 * 1024,
            l1_ttl: Duration::from_secs(60),
            refusal_ttl: Duration::from_secs(60),
            share_offline_answers: false,
            deprecated_ttl_secs: None,
            deprecated_l1_ttl_secs: None,
            deprecated_refusal_ttl_secs: None,
        }
    }
}

impl CacheSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.capacity == 0 {
            return invalid("cache.capacity must be at least 1 (or set cache.enabled = false)");
        }
        if self.max_bytes < 64 * 1024 {
            return invalid(
                "cache.max_bytes must be at least 65536 (or set cache.enabled = false)",
            );
        }
        if self.refusal_max_bytes < 64 * 1024 {
            return invalid(
                "cache.refusal_max_bytes must be at least 65536 (or set cache.refusal_ttl_ms = 0)",
            );
        }
        if self.ttl.is_zero() {
            return invalid("cache.ttl_ms must be at least 1 ms (or set cache.enabled = false)");
        }
        if self.l1_ttl.is_zero() {
            return invalid("cache.l1_ttl_ms must be at least 1 ms (or set cache.enabled = false)");
        }
        Ok(())
    }
}
