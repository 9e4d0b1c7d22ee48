//! Each model's own quota: Gemini counts requests and tokens per model of a project, so every
//! model of every chain gets its own [`QuotaLimiter`] (its `[models]` table, else the
//! `[upstream]` budget), each shared by the cluster through its own Redis keys
//! (`{prefix}:quota:{model:<id>}:*`).

use super::QuotaLimiter;
use crate::config::ModelQuota;
use crate::redis_link::RedisLink;
use serde::Serialize;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What `/ready` shows of one model's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaStatus {
    /// Configured requests per minute (0 = unlimited).
    pub rpm: u32,
    /// Requests in the current sliding minute (cluster-wide when Redis answers).
    pub requests_in_window: u64,
    /// Requests the minute still allows (`None` when unlimited).
    pub remaining_in_window: Option<u64>,
    /// Configured input tokens per minute (0 = unlimited).
    pub input_tpm: u64,
    /// Configured requests per Pacific day (0 = unlimited).
    pub rpd: u32,
    /// Requests today, Pacific time (`None` without a per-day budget).
    pub requests_today: Option<u64>,
    /// Requests today still allows (`None` without a per-day budget).
    pub remaining_today: Option<u64>,
}

/// Every model's quota limiter, by model id.
#[derive(Debug)]
pub struct ModelQuotas {
    by_model: BTreeMap<String, QuotaLimiter>,
    /// For a model asked for that was not known at start (never, with a router built from the
    /// same agents): the `[upstream]` budget.
    unknown: QuotaLimiter,
    /// Woken at every model's refusals.
    refusals: Arc<Notify>,
}

impl ModelQuotas {
    /// A limiter per model of `models`, and one with `defaults` for any other; in Redis for
    /// `cluster`'s replicas when given, else in this process.
    pub fn new(
        models: impl IntoIterator<Item = (String, ModelQuota)>,
        defaults: ModelQuota,
        margin: Duration,
        cluster: Option<(RedisLink, NonZeroU32)>,
    ) -> ModelQuotas {
        let refusals = Arc::new(Notify::new());
        let build = |quota: ModelQuota, scope: &str| {
            let limiter = match &cluster {
                Some((link, replicas)) => QuotaLimiter::clustered_scoped(
                    quota.rpm,
                    quota.input_tpm,
                    margin,
                    *replicas,
                    link.clone(),
                    scope,
                ),
                None => QuotaLimiter::scoped(quota.rpm, quota.input_tpm, margin),
            };
            limiter.with_rpd(quota.rpd).notifying(refusals.clone())
        };
        let by_model: BTreeMap<String, QuotaLimiter> = models
            .into_iter()
            .map(|(model, quota)| {
                let limiter = build(quota, &format!("model:{model}"));
                (model, limiter)
            })
            .collect();
        let quotas = ModelQuotas {
            by_model,
            unknown: build(defaults, "model:*"),
            refusals,
        };
        super::metrics::quota_rpm(quotas.total_rpm());
        for (model, limiter) in &quotas.by_model {
            super::metrics::model_quota_limits(model, limiter.rpm(), limiter.rpd());
            super::metrics::spill_over_init(model);
        }
        quotas
    }

    /// The limiter of `model`.
    pub fn of(&self, model: &str) -> &QuotaLimiter {
        self.by_model.get(model).unwrap_or(&self.unknown)
    }

    /// Woken whenever any model's quota refuses a question: the moment to check whether a
    /// queued question would be refused too.
    pub fn refusals(&self) -> &Notify {
        &self.refusals
    }

    /// The requests per minute of every model together (0 when any model is unlimited): what
    /// the concurrency bound must be able to keep busy.
    pub fn total_rpm(&self) -> u32 {
        let mut total: u32 = 0;
        for limiter in self.by_model.values() {
            if limiter.rpm() == 0 {
                return 0;
            }
            total = total.saturating_add(limiter.rpm());
        }
        if self.by_model.is_empty() {
            return self.unknown.rpm();
        }
        total
    }

    /// Each model's window and remaining budget now; also sets the quota gauges.
    pub async fn status(&self) -> BTreeMap<String, QuotaStatus> {
        let mut all = BTreeMap::new();
        let mut in_window = 0;
        for (model, limiter) in &self.by_model {
            let requests_in_window = limiter.requests_in_window().await;
            let requests_today = limiter.requests_today().await;
            let rpm = limiter.rpm();
            let rpd = limiter.rpd();
            let status = QuotaStatus {
                rpm,
                requests_in_window,
                remaining_in_window: (rpm > 0)
                    .then(|| u64::from(rpm).saturating_sub(requests_in_window)),
                input_tpm: limiter.input_tpm(),
                rpd,
                requests_today,
                remaining_today: requests_today.map(|used| u64::from(rpd).saturating_sub(used)),
            };
            super::metrics::model_quota_used(model, &status);
            in_window += requests_in_window;
            all.insert(model.clone(), status);
        }
        super::metrics::quota_window_used(in_window);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn quota(rpm: u32, rpd: u32) -> ModelQuota {
        ModelQuota {
            rpm,
            input_tpm: 0,
            rpd,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_model_has_its_own_window_and_day() {
        let quotas = ModelQuotas::new(
            [
                ("flash".to_owned(), quota(2, 0)),
                ("lite".to_owned(), quota(5, 3)),
            ],
            quota(1000, 0),
            Duration::ZERO,
            None,
        );
        assert_eq!(quotas.total_rpm(), 7);
        let now = Instant::now();
        quotas.of("flash").acquire(1, now).await.unwrap();
        quotas.of("flash").acquire(1, now).await.unwrap();
        assert!(quotas.of("flash").acquire(1, now).await.is_err());
        // Flash's window is full; Flash-Lite's is untouched, up to its per-day budget.
        for _ in 0..3 {
            quotas.of("lite").acquire(1, now).await.unwrap();
        }
        let day_full = quotas.of("lite").acquire(1, now).await.unwrap_err();
        // A full day frees nothing before the next Pacific midnight, at most 25 h away. Both
        // read the wall clock, the refusal a moment before this: they differ by that moment,
        // either way once rounded.
        let next_day = super::super::pacific::today().until_next;
        let apart = day_full.retry_after.abs_diff(next_day);
        assert!(
            apart < Duration::from_secs(5),
            "{day_full:?} vs {next_day:?}"
        );
        let status = quotas.status().await;
        assert_eq!(status["flash"].requests_in_window, 2);
        assert_eq!(status["flash"].remaining_in_window, Some(0));
        assert_eq!(status["flash"].requests_today, None);
        assert_eq!(status["lite"].requests_today, Some(3));
        assert_eq!(status["lite"].remaining_today, Some(0));
        assert_eq!(status["lite"].remaining_in_window, Some(2));
        // A minute later Flash has room again; Flash-Lite's day is still spent.
        tokio::time::advance(Duration::from_secs(61)).await;
        quotas.of("flash").acquire(1, Instant::now()).await.unwrap();
        assert!(quotas.of("lite").acquire(1, Instant::now()).await.is_err());
    }

    #[test]
    fn an_unlimited_model_makes_the_total_unlimited() {
        let quotas = ModelQuotas::new(
            [
                ("flash".to_owned(), quota(2, 0)),
                ("local".to_owned(), quota(0, 0)),
            ],
            quota(1000, 0),
            Duration::ZERO,
            None,
        );
        assert_eq!(quotas.total_rpm(), 0);
    }
}
