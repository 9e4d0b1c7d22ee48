//! The log of refused keys: one line a second at most, with the counts since the last line,
//! however many requests are refused (a flood of random keys must not become a flood of log
//! lines). `learning_chat_auth_failures_total` counts every one.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between two lines.
const INTERVAL: Duration = Duration::from_secs(1);

/// The reasons counted, in the order of [`RefusalLog::counts`].
const REASONS: [&str; 6] = [
    "missing",
    "unknown",
    "revoked",
    "agent_not_allowed",
    "learner_required",
    "store_unavailable",
];

/// Refusal counts not logged yet, and when the last line was written.
pub struct RefusalLog {
    counts: [AtomicU64; REASONS.len()],
    last_line: Mutex<Option<Instant>>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            last_line: Mutex::new(None),
        }
    }
}

impl RefusalLog {
    /// Counts a refusal by its metric reason; writes a line if a second has passed.
    pub fn record(&self, reason: &'static str) {
        let Some(slot) = REASONS.iter().position(|r| *r == reason) else {
            return;
        };
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.flush_if_due();
    }

    /// Writes the counts not yet logged, if a second has passed since the last line.
    pub fn flush_if_due(&self) {
        // Under a flood every refusal passes here: a busy lock means another thread is logging.
        let Some(mut last) = self.last_line.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < INTERVAL) {
            return;
        }
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        *last = Some(now);
        drop(last);
        let detail = REASONS
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            refused = total,
            reasons = %detail,
            "{total} API key checks refused since the last such line ({detail})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_until_a_line_is_due() {
        let log = RefusalLog::default();
        log.record("unknown");
        // The first refusal wrote a line and reset the counts; the next ones wait for a second.
        for _ in 0..50 {
            log.record("unknown");
        }
        log.record("revoked");
        assert_eq!(log.counts[1].load(Ordering::Relaxed), 50);
        assert_eq!(log.counts[2].load(Ordering::Relaxed), 1);
    }
}
