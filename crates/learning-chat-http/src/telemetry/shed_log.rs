//! The load-shedding log: one line a second at most, with a count, however many requests are
//! shed; the minute monitor flushes the tail of a burst.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shortest time between two "requests shed" log lines.
const SHED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) static SHED_LOG: ShedLog = ShedLog {
    pending: AtomicU64::new(0),
    last_line: parking_lot::Mutex::new(None),
};

/// Logs load shedding at most once per [`SHED_LOG_INTERVAL`], with the count since the last line.
pub(super) struct ShedLog {
    pending: AtomicU64,
    last_line: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl ShedLog {
    pub(super) fn record(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        // Under overload every shed passes here: a busy lock means another thread is logging.
        let Some(mut last) = self.last_line.try_lock() else {
            return;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SHED_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.flush();
    }

    fn flush(&self) {
        let count = self.pending.swap(0, Ordering::Relaxed);
        if count > 0 {
            tracing::warn!(
                shed = count,
                "{count} requests shed with 503 overloaded since the last such line (overload; see learning_chat_requests_shed_total)"
            );
        }
    }
}

/// Logs the sheds not yet logged (the tail of a burst); called by the minute monitor.
pub fn flush_shed_log() {
    let Some(mut last) = SHED_LOG.last_line.try_lock() else {
        return;
    };
    *last = Some(std::time::Instant::now());
    drop(last);
    SHED_LOG.flush();
}
