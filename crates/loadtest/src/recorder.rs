//! Records every request: latency (exact to 0.1 %, in microseconds), status and `cached` flag.
//!
//! goose keeps its own metrics too, but rounds response times and has no p95 column, and knows
//! nothing of `cached`; this recorder is the source of the report's figures.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Status recorded for a request that got no HTTP response (connect error, timeout, reset).
pub const STATUS_NO_RESPONSE: u16 = 0;
/// Largest latency the histogram holds (longer ones are clamped to it): one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Shared by every simulated user; cheap to lock (a few counter updates per request).
pub struct Recorder {
    started: Instant,
    users: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    latency_us: Histogram<u64>,
    by_status: BTreeMap<u16, u64>,
    ok: u64,
    cached: u64,
    /// For the progress line's rate over the last interval.
    last_total: u64,
    last_at: Instant,
}

/// What one finished request looked like.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// HTTP status, or [`STATUS_NO_RESPONSE`].
    pub status: u16,
    /// Time from sending (or from the scheduled send, for open-loop runs) to the full body.
    pub latency: Duration,
    /// The response said `"cached": true`.
    pub cached: bool,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Time since the recorder was made.
    pub elapsed: Duration,
    /// Users started so far (goose mode).
    pub users: u64,
    /// Requests finished.
    pub requests: u64,
    /// 2xx responses.
    pub ok: u64,
    /// 2xx responses that were cache hits.
    pub cached: u64,
    /// Requests by status (0: no response).
    pub by_status: BTreeMap<u16, u64>,
    /// Latency distribution in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Snapshot {
    /// Requests that were not 2xx.
    pub fn failures(&self) -> u64 {
        self.requests - self.ok
    }

    /// The latency at `quantile` (0..=1) in milliseconds; 0 without requests.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder; its clock starts now.
    pub fn new() -> Recorder {
        // 3 significant figures: p99 of 2800 ms is known to within about 3 ms.
        #[allow(clippy::expect_used)] // constant, valid bounds; called at start-up only
        let latency_us = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Recorder {
            started: Instant::now(),
            users: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                latency_us,
                by_status: BTreeMap::new(),
                ok: 0,
                cached: 0,
                last_total: 0,
                last_at: Instant::now(),
            }),
        }
    }

    /// Counts one more started user.
    pub fn user_started(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished request.
    pub fn record(&self, outcome: Outcome) {
        let micros = u64::try_from(outcome.latency.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        let mut inner = self.inner.lock();
        inner.latency_us.saturating_record(micros);
        *inner.by_status.entry(outcome.status).or_default() += 1;
        if (200..300).contains(&outcome.status) {
            inner.ok += 1;
            if outcome.cached {
                inner.cached += 1;
            }
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock();
        Snapshot {
            elapsed: self.started.elapsed(),
            users: self.users.load(Ordering::Relaxed),
            requests: inner.by_status.values().sum(),
            ok: inner.ok,
            cached: inner.cached,
            by_status: inner.by_status.clone(),
            latency_us: inner.latency_us.clone(),
        }
    }

    /// One progress line: elapsed, users, request rate since the previous line, failures,
    /// cache hits and latency percentiles so far.
    pub fn progress_line(&self) -> String {
        let snapshot = self.snapshot();
        let rate = {
            let mut inner = self.inner.lock();
            let now = Instant::now();
            let seconds = now.duration_since(inner.last_at).as_secs_f64().max(1e-3);
            let rate = (snapshot.requests.saturating_sub(inner.last_total)) as f64 / seconds;
            inner.last_total = snapshot.requests;
            inner.last_at = now;
            rate
        };
        format!(
            "[{:>5.0}s] users {:>5}  req/s {:>8.1}  requests {:>8}  failures {:>6}  cached {:>5.1}%  p50 {:>8.1} ms  p99 {:>8.1} ms",
            snapshot.elapsed.as_secs_f64(),
            snapshot.users,
            rate,
            snapshot.requests,
            snapshot.failures(),
            percent(snapshot.cached, snapshot.ok),
            snapshot.latency_ms(0.50),
            snapshot.latency_ms(0.99),
        )
    }
}

/// `part / whole` in percent, 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Prints [`Recorder::progress_line`] to stderr every `every` until the task is aborted.
pub fn spawn_progress(
    recorder: std::sync::Arc<Recorder>,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            eprintln!("{}", recorder.progress_line());
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let recorder = Recorder::new();
        for ms in 1..=100u64 {
            recorder.record(Outcome {
                status: 200,
                latency: Duration::from_millis(ms),
                cached: ms % 4 == 0,
            });
        }
        recorder.record(Outcome {
            status: 503,
            latency: Duration::from_millis(1),
            cached: false,
        });
        recorder.record(Outcome {
            status: STATUS_NO_RESPONSE,
            latency: Duration::from_millis(1),
            cached: true,
        });
        let s = recorder.snapshot();
        assert_eq!(s.requests, 102);
        assert_eq!(s.ok, 100);
        assert_eq!(s.failures(), 2);
        assert_eq!(s.cached, 25);
        assert_eq!(s.by_status[&503], 1);
        let p95 = s.latency_ms(0.95);
        assert!((92.0..=96.0).contains(&p95), "{p95}");
        assert!((99.9..=100.1).contains(&s.latency_ms(1.0)));
        assert!(recorder.progress_line().contains("requests      102"));
    }
}
