//! The upstream quota (requests and input tokens per minute), enforced before a call is sent so
//! the provider never has to answer 429.

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

/// Enforces `rpm` and `input_tpm` for this process.
#[derive(Debug)]
pub struct QuotaLimiter {
    rpm: u32,
    input_tpm: u64,
    window_ms: u64,
    origin: Instant,
    windows: Mutex<Windows>,
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
        let window_ms = MINUTE_MS + margin.as_millis() as u64;
        crate::metrics::quota_rpm(rpm);
        QuotaLimiter {
            rpm,
            input_tpm,
            window_ms,
            origin: Instant::now(),
            windows: Mutex::new(Windows {
                requests: (rpm > 0).then(|| SlidingWindow::new(rpm.into(), window_ms)),
                tokens: (input_tpm > 0).then(|| SlidingWindow::new(input_tpm, window_ms)),
            }),
        }
    }

    /// The configured requests per minute (0 = unlimited).
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Reserves a slot for one request of `input_tokens` and waits for it, or refuses at once
    /// when the slot lies beyond `deadline`.
    pub async fn acquire(&self, input_tokens: u32, deadline: Instant) -> Result<(), QuotaRejection> {
        if self.rpm == 0 && self.input_tpm == 0 {
            return Ok(());
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
            if slot > deadline {
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

    /// Requests counted in the current window (the quota-usage gauge's numerator).
    pub fn requests_in_window(&self) -> u64 {
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
}
