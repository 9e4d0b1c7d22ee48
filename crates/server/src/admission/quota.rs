//! The upstream quota (requests and input tokens per minute), enforced before a call is sent so
//! the provider never has to answer 429.

use super::redis_quota::{RedisQuota, Reservation};
use super::SlidingWindow;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The quota window: one minute, as providers count.
const MINUTE_MS: u64 = 60_000;

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
    origin: Instant,
    windows: Mutex<Windows>,
    cluster: Option<RedisQuota>,
}

#[derive(Debug)]
struct Windows {
    requests: Option<SlidingWindow>,
    tokens: Option<SlidingWindow>,
}

impl QuotaLimiter {
    /// A limiter for `rpm` requests and `input_tpm` input tokens per minute (0 = unlimited),
    /// counting each minute `margin` longer than 60 s.
    pub fn new(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        Self::with_local_share(rpm, input_tpm, margin, 1, None)
    }

    /// A cluster-wide limiter in Redis; while Redis is down each of the `replicas` servers falls
    /// back to its share (`rpm / replicas`), so together they still stay within the quota.
    pub fn clustered(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: u32,
        link: crate::redis_link::RedisLink,
    ) -> QuotaLimiter {
        let window = Duration::from_millis(MINUTE_MS) + margin;
        let cluster = RedisQuota::new(link, rpm, input_tpm, window);
        Self::with_local_share(rpm, input_tpm, margin, replicas, Some(cluster))
    }

    fn with_local_share(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: u32,
        cluster: Option<RedisQuota>,
    ) -> QuotaLimiter {
        let window_ms = MINUTE_MS + margin.as_millis() as u64;
        let replicas = replicas.max(1);
        // A share rounds down but never to zero, or a small quota would stop every server.
        let local_rpm = (rpm > 0).then(|| u64::from((rpm / replicas).max(1)));
        let local_tpm = (input_tpm > 0).then(|| (input_tpm / u64::from(replicas)).max(1));
        crate::metrics::quota_rpm(rpm);
        QuotaLimiter {
            rpm,
            input_tpm,
            window_ms,
            origin: Instant::now(),
            windows: Mutex::new(Windows {
                requests: local_rpm.map(|limit| SlidingWindow::new(limit, window_ms)),
                tokens: local_tpm.map(|limit| SlidingWindow::new(limit, window_ms)),
            }),
            cluster,
        }
    }

    /// The configured requests per minute (0 = unlimited).
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
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
        if let Some(cluster) = &self.cluster {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            match cluster.reserve(input_tokens, max_wait).await {
                Ok(Reservation::Granted(wait)) => {
                    if !wait.is_zero() {
                        crate::metrics::quota_wait(wait);
                        tokio::time::sleep(wait).await;
                    }
                    return Ok(());
                }
                Ok(Reservation::Refused(retry_after)) => {
                    return Err(QuotaRejection { retry_after })
                }
                // Redis is down: fall through to this server's share of the quota.
                Err(_) => {}
            }
        }
        let now = self.now_ms();
        let at = {
            let mut windows = self.windows.lock();
            let Windows { requests, tokens } = &mut *windows;
            let mut at = now;
            if let Some(w) = requests.as_mut() {
                at = at.max(w.earliest(1, now));
            }
            if let Some(w) = tokens.as_mut() {
                at = at.max(w.earliest(input_tokens.into(), now));
            }
            let slot = self.origin + Duration::from_millis(at);
            // Only a wait can make the call too late; refusing a free slot would turn an idle
            // quota into 503s whenever calls run long.
            if at > now && slot > deadline {
                return Err(QuotaRejection {
                    retry_after: Duration::from_millis(at - now),
                });
            }
            if let Some(w) = requests.as_mut() {
                w.record(1, at);
            }
            if let Some(w) = tokens.as_mut() {
                w.record(input_tokens.into(), at);
            }
            at
        };
        if at > now {
            crate::metrics::quota_wait(Duration::from_millis(at - now));
            tokio::time::sleep_until(self.origin + Duration::from_millis(at)).await;
        }
        Ok(())
    }

    /// Requests counted in the current window: cluster-wide when Redis answers, else this
    /// server's (the quota-usage gauge's numerator).
    pub async fn requests_in_window(&self) -> u64 {
        if let Some(cluster) = &self.cluster {
            if let Ok(used) = cluster.used().await {
                return used;
            }
        }
        self.local_requests_in_window()
    }

    /// Requests counted in this server's own window.
    pub fn local_requests_in_window(&self) -> u64 {
        let now = self.now_ms();
        self.windows
            .lock()
            .requests
            .as_mut()
            .map_or(0, |w| w.used(now))
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
