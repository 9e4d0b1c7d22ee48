//! `[upstream]`: bounds on calls to the model (concurrency, queue, quota, retries).

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::num::{NonZero, NonZeroUsize};
use std::time::Duration;

/// Bounds on calls to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Ceiling of model calls in flight at once; below it the limit follows `rpm` and latency.
    pub max_concurrency: NonZeroUsize,
    /// Floor of the derived concurrency limit (capped by `max_concurrency`).
    pub min_concurrency: usize,
    /// The concurrency limit is `rpm / 60 x typical call latency x` this (Little's law + room).
    pub concurrency_headroom: f64,
    /// Half-life of a model-call latency sample in the estimate behind the limit and quota gate
    /// (`latency_half_life_ms`).
    #[serde(rename = "latency_half_life_ms", with = "super::duration")]
    pub latency_half_life: Duration,
    /// Deprecated: `latency_half_life_secs` in seconds, read as `latency_half_life_ms` (warned about at start-up).
    #[serde(rename = "latency_half_life_secs", skip_serializing)]
    pub deprecated_latency_half_life_secs: Option<u64>,
    /// Distinct questions allowed to wait for a free slot; beyond it requests get 503.
    pub max_queue: usize,
    /// Longest a question waits for a free slot before 503 (`max_queue_wait_ms`).
    #[serde(rename = "max_queue_wait_ms", with = "super::duration")]
    pub max_queue_wait: Duration,
    /// Requests per minute allowed to each model across the cluster (a model's own
    /// `[models]` table overrides it); 0 = no limit.
    pub rpm: u32,
    /// Input tokens per minute allowed across the cluster; 0 = no limit.
    pub input_tpm: u64,
    /// Requests per day allowed across the cluster, counted from midnight Pacific time as
    /// Gemini counts; 0 = no limit.
    pub rpd: u32,
    /// Added to the 60 s quota window (`quota_window_margin_ms`) so clock skew and network
    /// jitter never let the provider count one request too many in its own window.
    #[serde(rename = "quota_window_margin_ms", with = "super::duration")]
    pub quota_window_margin: Duration,
    /// Retries after the first attempt for 429/500/503/504 and connection errors.
    pub max_retries: u32,
    /// First retry backoff (`retry_base_delay_ms`); doubles each time, with full jitter.
    #[serde(rename = "retry_base_delay_ms", with = "super::duration")]
    pub retry_base_delay: Duration,
    /// Cap on one retry backoff (`retry_max_delay_ms`).
    #[serde(rename = "retry_max_delay_ms", with = "super::duration")]
    pub retry_max_delay: Duration,
    /// Longest wait honoured from a 429's `RetryInfo.retryDelay` (and passed on as
    /// `Retry-After`) (`max_retry_after_ms`): an absurd value from the wire clamps to this.
    #[serde(rename = "max_retry_after_ms", with = "super::duration")]
    pub max_retry_after: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            max_concurrency: const { NonZero::new(1000).unwrap() },
            min_concurrency: 32,
            concurrency_headroom: 2.0,
            latency_half_life: Duration::from_secs(30),
            deprecated_latency_half_life_secs: None,
            max_queue: 1000,
            max_queue_wait: Duration::from_secs(20),
            rpm: 1000,
            input_tpm: 0,
            rpd: 0,
            quota_window_margin: Duration::from_millis(500),
            max_retries: 3,
            retry_base_delay: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl UpstreamSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.concurrency_headroom >= 1.0 && self.concurrency_headroom.is_finite()) {
            return invalid("upstream.concurrency_headroom must be a number of at least 1.0");
        }
        super::positive("upstream.latency_half_life_ms", self.latency_half_life)?;
        if self.retry_base_delay > self.retry_max_delay {
            return invalid(
                "upstream.retry_base_delay_ms must not exceed upstream.retry_max_delay_ms",
            );
        }
        Ok(())
    }
}
