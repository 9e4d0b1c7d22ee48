//! The model-call quota (requests and input tokens per minute, requests per day), enforced before
//! a call is sent so the provider never has to answer 429: windows of the [`WindowLimiter`], in
//! Redis for the cluster, remembering this server's calls and the others' so that a Redis outage
//! or restart never lets the cluster past the quota.
//!
//! The per-day budget counts from midnight Pacific, as Gemini's does: its window is named after
//! the Pacific date, so a new day starts an empty window (the old one expires on its own).

use super::window::{Options, Window, WindowLimiter, WindowOps};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The quota window: one minute, as providers count.
const MINUTE_MS: u64 = 60_000;
/// The span of a per-day window: a Pacific day lasts 23 to 25 hours, and its window's name
/// changes with the date, so a span of the longest day counts the whole day and nothing else.
const DAY_SPAN_MS: u64 = 25 * 3_600_000;
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
    /// Requests per Pacific day (0 = unlimited).
    rpd: u32,
    window_ms: u64,
    /// The Redis hash tag of its keys: `model:<id>` per model, or one per API key and model.
    scope: String,
    limiter: WindowLimiter,
    /// Until when its last refusal said no slot is free: a hint for spill-over's cache lookup
    /// and for refusing queued questions at once.
    refusing_until: parking_lot::Mutex<Option<Instant>>,
    /// Woken at each refusal, so questions queued behind it can tell at once whether they
    /// would be refused too (shared by every model's limiter of a [`super::ModelQuotas`]).
    refusals: Arc<Notify>,
}

impl QuotaLimiter {
    /// A limiter in this process for `rpm` requests and `input_tpm` input tokens per minute
    /// (0 = unlimited), counting each minute `margin` longer than 60 s.
    pub fn new(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        Self::build(rpm, input_tpm, margin, None, "quota")
    }

    /// A limiter for one model (or one API key and model) in this process: like
    /// [`QuotaLimiter::new`].
    pub fn scoped(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        Self::build(rpm, input_tpm, margin, None, "quota")
    }

    /// A cluster-wide limiter for one model (or one API key and model): its own Redis keys
    /// under `scope`.
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
            rpd: 0,
            window_ms: MINUTE_MS + u64::try_from(margin.as_millis()).unwrap_or(0),
            scope: scope.to_owned(),
            limiter,
            refusing_until: parking_lot::Mutex::new(None),
            refusals: Arc::new(Notify::new()),
        }
    }

    /// This limiter waking `refusals` at each of its refusals.
    pub fn notifying(mut self, refusals: Arc<Notify>) -> QuotaLimiter {
        self.refusals = refusals;
        self
    }

    /// True while its last refusal's wait has not passed: questions are being refused for
    /// want of a slot (a hint from this server's own refusals, never a decision).
    pub fn refusing(&self) -> bool {
        self.refusing_until().is_some()
    }

    /// The first time a slot may be free, as this server's last refusal said, while that time
    /// is still to come. Slots are reserved in order, so a question that must start before it
    /// would be refused too.
    pub fn refusing_until(&self) -> Option<Instant> {
        // Calls decided while Redis was away are written back by the next reservation: a hint
        // that skips reserving would keep them from the cluster's count.
        if self.limiter.has_unpublished(&self.scope) {
            return None;
        }
        let until = (*self.refusing_until.lock())?;
        (Instant::now() < until).then_some(until)
    }

    /// The request windows (per minute, per day) one call counts in today.
    fn request_windows(&self, calls: u64) -> Vec<Window> {
        let mut windows = Vec::with_capacity(2);
        if self.rpm > 0 {
            windows.push(Window::counting(
                "requests",
                u64::from(self.rpm),
                self.window_ms,
                calls,
            ));
        }
        if self.rpd > 0 {
            let day = self.day_window(&super::pacific::today().date);
            windows.push(Window::counting(day.name, day.limit, day.span_ms, calls));
        }
        windows
    }

    /// How many more calls its request budgets allow by `at`, as this server decides them or,
    /// with Redis deciding, as it last saw Redis' minute (`None` when it knows nothing, or
    /// while calls decided without Redis are still to be written back; `u64::MAX` without a
    /// request budget). Input tokens are
    /// left out: a question's count is only known when it is asked.
    pub fn room_at(&self, at: Instant) -> Option<u64> {
        // As for `refusing_until`: a question refused here would make no reservation, and the
        // calls decided while Redis was away are written back only by one.
        if self.limiter.has_unpublished(&self.scope) {
            return None;
        }
        let windows = self.request_windows(1);
        if windows.is_empty() {
            return Some(u64::MAX);
        }
        self.limiter.local_room(&self.scope, &windows, at)
    }

    /// When `calls` more calls would fit its request budgets, as this server decides them or
    /// last saw them in Redis (`None` when unknown).
    pub fn earliest_for(&self, calls: u64) -> Option<Instant> {
        let windows = self.request_windows(calls);
        if windows.is_empty() {
            return Some(Instant::now());
        }
        self.limiter.local_earliest(&self.scope, &windows)
    }

    /// This limiter with a budget of `rpd` requests per Pacific day as well (0 = unlimited).
    pub fn with_rpd(mut self, rpd: u32) -> QuotaLimiter {
        self.rpd = rpd;
        self
    }

    /// The configured requests per minute (0 = unlimited).
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    /// The configured input tokens per minute (0 = unlimited).
    pub fn input_tpm(&self) -> u64 {
        self.input_tpm
    }

    /// The configured requests per Pacific day (0 = unlimited).
    pub fn rpd(&self) -> u32 {
        self.rpd
    }

    /// The per-day window of the Pacific day `date`.
    fn day_window(&self, date: &str) -> Window {
        Window::counting(
            format!("requests_day_{date}"),
            u64::from(self.rpd),
            DAY_SPAN_MS,
            1,
        )
    }

    fn requests_window(&self) -> Window {
        Window::counting("requests", u64::from(self.rpm), self.window_ms, 1)
    }

    /// The windows one call of `input_tokens` reserves in, on the Pacific day `date`.
    fn windows(&self, input_tokens: u32, date: &str) -> Vec<Window> {
        let mut windows = Vec::with_capacity(3);
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
        if self.rpd > 0 {
            windows.push(self.day_window(date));
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
        let at = self.reserve(input_tokens, deadline).await?;
        Self::wait_for(at).await;
        Ok(())
    }

    /// Reserves a slot for one request of `input_tokens` (as [`QuotaLimiter::acquire`] does)
    /// and returns when it starts, without waiting for it: a caller that holds its place in a
    /// queue lets the next one reserve meanwhile.
    pub async fn reserve(
        &self,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<Instant, QuotaRejection> {
        if self.rpm == 0 && self.input_tpm == 0 && self.rpd == 0 {
            return Ok(Instant::now());
        }
        let member = uuid::Uuid::new_v4().simple().to_string();
        let day = super::pacific::today();
        let windows = self.windows(input_tokens, &day.date);
        let granted = self
            .limiter
            .reserve(&self.scope, &member, &windows, deadline)
            .await
            .map_err(|refused| {
                // A full day frees no slot until the next Pacific day: say so, not the
                // window's own (day-long) reckoning.
                let day_full = windows
                    .get(refused.window)
                    .is_some_and(|w| w.span_ms == DAY_SPAN_MS);
                QuotaRejection {
                    retry_after: if day_full {
                        day.until_next
                    } else {
                        refused.wait
                    },
                }
            })
            .inspect_err(|rejected| {
                *self.refusing_until.lock() = Some(Instant::now() + rejected.retry_after);
                self.refusals.notify_waiters();
            })?;
        Ok(granted.at)
    }

    /// Waits for a reserved slot that starts `at`.
    pub async fn wait_for(at: Instant) {
        let now = Instant::now();
        if at > now {
            crate::admission::metrics::quota_wait(at - now);
            tokio::time::sleep_until(at).await;
        }
    }

    /// Requests counted in the current window: cluster-wide when Redis answers, else this
    /// server's (the quota-usage gauge's numerator).
    pub async fn requests_in_window(&self) -> u64 {
        self.limiter
            .used(&self.scope, &self.requests_window())
            .await
    }

    /// Requests counted today (Pacific) when a per-day budget is set: cluster-wide when Redis
    /// answers, else this server's.
    pub async fn requests_today(&self) -> Option<u64> {
        if self.rpd == 0 {
            return None;
        }
        let day = super::pacific::today();
        Some(
            self.limiter
                .used(&self.scope, &self.day_window(&day.date))
                .await,
        )
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
