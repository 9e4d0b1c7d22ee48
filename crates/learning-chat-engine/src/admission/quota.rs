//! The model-call quota (requests and input tokens per minute), enforced before a call is sent so
//! the provider never has to answer 429: two windows of the [`WindowLimiter`], in Redis for the
//! cluster, remembering this server's calls and the others' so that a Redis outage or restart
//! never lets the cluster past the quota.

use super::window::{Options, Window, WindowLimiter, WindowOps};
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

/// The quota window: one minute, as providers count.
const MINUTE_MS: u64 = 60_000;
/// The names the quota's Redis calls are measured under.
const OPS: WindowOps = WindowOps {
    reserve: "quota_reserve",
    record: "quota_republish",
    used: "quota_used",
};
/// The fallback of the upstream quota: an overshoot costs 429s from the provider.
const OPTIONS: Options = Options {
    remember: true,
    quota_metrics: true,
};

/// No slot before the deadline; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRejection {
    /// When a slot would be free.
    pub retry_after: Duration,
}

/// Enforces `rpm` and `input_tpm`: across the cluster through Redis when configured, otherwise
/// (or while Redis is down) in this process.
#[derive(Debug)]
pub struct QuotaLimiter {
    rpm: u32,
    input_tpm: u64,
    window_ms: u64,
    /// The Redis hash tag of its keys: `quota`, or one per API key and model.
    scope: String,
    limiter: WindowLimiter,
}

impl QuotaLimiter {
    /// A limiter for `rpm` requests and `input_tpm` input tokens per minute (0 = unlimited),
    /// counting each minute `margin` longer than 60 s.
    pub fn new(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        crate::admission::metrics::quota_rpm(rpm);
        Self::build(rpm, input_tpm, margin, None, "quota")
    }

    /// A limiter for one API key and model: like [`QuotaLimiter::new`], without reporting
    /// itself as the service's quota.
    pub fn scoped(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        Self::build(rpm, input_tpm, margin, None, "quota")
    }

    /// A cluster-wide limiter for one API key and model: its own Redis keys under `scope`.
    pub fn clustered_scoped(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: NonZeroU32,
        link: crate::redis_link::RedisLink,
        scope: &str,
    ) -> QuotaLimiter {
        Self::build(rpm, input_tpm, margin, Some((link, replicas)), scope)
    }

    /// A cluster-wide limiter in Redis for `replicas` servers. While Redis is down, or back but
    /// not yet trusted, each server takes a `1 / replicas` share of what the cluster had left.
    pub fn clustered(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: NonZeroU32,
        link: crate::redis_link::RedisLink,
    ) -> QuotaLimiter {
        crate::admission::metrics::quota_rpm(rpm);
        Self::build(rpm, input_tpm, margin, Some((link, replicas)), "quota")
    }

    fn build(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        cluster: Option<(crate::redis_link::RedisLink, NonZeroU32)>,
        scope: &str,
    ) -> QuotaLimiter {
        let limiter = match cluster {
            Some((link, replicas)) => {
                crate::admission::metrics::quota_conservative(false);
                WindowLimiter::clustered(link, "quota", OPS, replicas, OPTIONS)
            }
            None => WindowLimiter::local(OPTIONS),
        };
        QuotaLimiter {
            rpm,
            input_tpm,
            window_ms: MINUTE_MS + u64::try_from(margin.as_millis()).unwrap_or(0),
            scope: scope.to_owned(),
            limiter,
        }
    }

    /// The configured requests per minute (0 = unlimited).
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    fn requests_window(&self) -> Window {
        Window::counting("requests", u64::from(self.rpm), self.window_ms, 1)
    }

    /// The windows one call of `input_tokens` reserves in.
    fn windows(&self, input_tokens: u32) -> Vec<Window> {
        let mut windows = Vec::with_capacity(2);
        if self.rpm > 0 {
            windows.push(self.requests_window());
        }
        if self.input_tpm > 0 {
            let tokens = u64::from(input_tokens);
            windows.push(Window::counting(
                "input_tokens",
                self.input_tpm,
                self.window_ms,
                tokens,
            ));
        }
        windows
    }

    /// Reserves a slot for one request of `input_tokens` and waits for it. A slot free now is
    /// always granted; a slot in the future is refused at once when it lies beyond `deadline`
    /// (for a model call: the request's deadline less the time the call needs).
    pub async fn acquire(
        &self,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<(), QuotaRejection> {
        if self.rpm == 0 && self.input_tpm == 0 {
            return Ok(());
        }
        let member = uuid::Uuid::new_v4().simple().to_string();
        let windows = self.windows(input_tokens);
        let granted = self
            .limiter
            .reserve(&self.scope, &member, &windows, deadline)
            .await
            .map_err(|refused| QuotaRejection {
                retry_after: refused.wait,
            })?;
        let now = Instant::now();
        if granted.at > now {
            crate::admission::metrics::quota_wait(granted.at - now);
            tokio::time::sleep_until(granted.at).await;
        }
        Ok(())
    }

    /// Requests counted in the current window: cluster-wide when Redis answers, else this
    /// server's (the quota-usage gauge's numerator).
    pub async fn requests_in_window(&self) -> u64 {
        self.limiter
            .used(&self.scope, &self.requests_window())
            .await
    }

    /// Requests counted in this server's own window.
    pub fn local_requests_in_window(&self) -> u64 {
        self.limiter
            .local_used(&self.scope, &self.requests_window())
    }

    /// The window length, margin included.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn over_quota_requests_wait_for_their_slot_or_are_refused() {
        let quota = QuotaLimiter::new(2, 0, Duration::ZERO);
        let far = Instant::now() + Duration::from_secs(300);
        quota.acquire(10, far).await.unwrap();
        quota.acquire(10, far).await.unwrap();
        let start = Instant::now();
        quota.acquire(10, far).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // The third took the first free slot at 60 s; one more fits now, the next only at 120 s.
        let near = Instant::now() + Duration::from_secs(5);
        quota.acquire(10, near).await.unwrap();
        let refused = quota.acquire(10, near).await.unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(5), "{refused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let quota = QuotaLimiter::new(0, 0, Duration::ZERO);
        let deadline = Instant::now();
        for _ in 0..1000 {
            quota.acquire(1_000_000, deadline).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_is_granted_even_when_the_latest_start_has_passed() {
        let quota = QuotaLimiter::new(2, 0, Duration::ZERO);
        // A caller whose calls run long asks with a latest start already behind it.
        let passed = Instant::now() - Duration::from_secs(1);
        quota.acquire(10, passed).await.unwrap();
        quota.acquire(10, passed).await.unwrap();
        // The next slot is 60 s away: that one is refused, at once, with the wait as the hint.
        let refused = quota.acquire(10, passed).await.unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        // A refusal reserves nothing: once the window moves on, two slots are free again.
        tokio::time::advance(Duration::from_secs(60)).await;
        quota.acquire(10, Instant::now()).await.unwrap();
        quota.acquire(10, Instant::now()).await.unwrap();
    }
}
