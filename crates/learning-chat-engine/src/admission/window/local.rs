//! An exact sliding-window limit with reservations: at most `limit` units in ANY window of
//! `window_ms`, which is how a provider's "per minute" quota is safest read. Unlike a token
//! bucket (which allows a full burst on top of the steady rate), this never lets a window of the
//! provider's own choosing see more than the quota.
//!
//! A caller that cannot go now reserves the earliest time at which it can, and sleeps until then;
//! reservations are entries in the future, so waiters are served in order without polling.
//! The Redis side runs the same algorithm in `window_reserve.lua`.

use std::collections::VecDeque;

/// Entries of (time in ms, units), sorted by time.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: u64,
    window_ms: u64,
    entries: VecDeque<(u64, u64)>,
    total: u64,
}

impl SlidingWindow {
    /// At most `limit` units in any `window_ms`.
    pub fn new(limit: u64, window_ms: u64) -> SlidingWindow {
        SlidingWindow {
            limit: limit.max(1),
            window_ms,
            entries: VecDeque::new(),
            total: 0,
        }
    }

    /// Changes the limit (a key's limits were edited); what is counted stays.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.max(1);
    }

    fn prune(&mut self, now_ms: u64) {
        while let Some(&(at, units)) = self.entries.front() {
            if at + self.window_ms <= now_ms {
                self.entries.pop_front();
                self.total -= units;
            } else {
                break;
            }
        }
    }

    /// The earliest time (>= `now_ms`) at which `units` more fit, without reserving.
    pub fn earliest(&mut self, units: u64, now_ms: u64) -> u64 {
        self.prune(now_ms);
        let units = units.min(self.limit);
        if self.total + units <= self.limit {
            return now_ms;
        }
        // Walk from the oldest entry until what remains after it leaves room for `units`.
        let mut remaining = self.total;
        for &(at, u) in &self.entries {
            remaining -= u;
            if remaining + units <= self.limit {
                return (at + self.window_ms).max(now_ms);
            }
        }
        now_ms
    }

    /// Records `units` at `at_ms` (which must come from [`SlidingWindow::earliest`] or later).
    pub fn record(&mut self, units: u64, at_ms: u64) {
        let units = units.min(self.limit);
        let position = self.entries.partition_point(|&(t, _)| t <= at_ms);
        self.entries.insert(position, (at_ms, units));
        self.total += units;
    }

    /// Takes back `units` recorded at `at_ms` (a reservation not used after all).
    pub fn remove(&mut self, units: u64, at_ms: u64) {
        let units = units.min(self.limit);
        if let Some(i) = self
            .entries
            .iter()
            .position(|&(t, u)| t == at_ms && u == units)
        {
            self.entries.remove(i);
            self.total -= units;
        }
    }

    /// Units held at `now_ms`, reservations still to come included.
    pub fn total(&mut self, now_ms: u64) -> u64 {
        self.prune(now_ms);
        self.total
    }

    /// When the oldest entry leaves the window (`None`: empty).
    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.front().map(|&(at, _)| at + self.window_ms)
    }

    /// Units counted in the window ending at `now_ms` (reservations not yet due left out).
    pub fn used(&mut self, now_ms: u64) -> u64 {
        self.prune(now_ms);
        self.entries
            .iter()
            .filter(|&&(at, _)| at <= now_ms)
            .map(|&(_, u)| u)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_in_any_window(times: &[u64], window: u64) -> usize {
        times
            .iter()
            .map(|&start| {
                times
                    .iter()
                    .filter(|&&t| t >= start && t < start + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_ever_exceeds_the_limit_and_the_quota_is_used() {
        let mut w = SlidingWindow::new(10, 60_000);
        let mut granted = Vec::new();
        // 40 requests arriving 1 s apart: 10 go at once, the rest at the earliest legal time.
        for i in 0..40u64 {
            let now = i * 1000;
            let at = w.earliest(1, now);
            w.record(1, at);
            granted.push(at);
        }
        assert_eq!(max_in_any_window(&granted, 60_000), 10);
        assert_eq!(
            &granted[..10],
            &(0..10).map(|i| i * 1000).collect::<Vec<_>>()[..]
        );
        assert_eq!(granted[10], 60_000);
        assert_eq!(granted[39], 180_000 + 9_000);
    }

    #[test]
    fn weighted_units_wait_for_enough_room() {
        let mut w = SlidingWindow::new(100, 60_000);
        w.record(70, 0);
        w.record(20, 10_000);
        assert_eq!(w.earliest(10, 20_000), 20_000);
        assert_eq!(w.earliest(30, 20_000), 60_000);
        assert_eq!(w.earliest(100, 20_000), 70_000);
        assert_eq!(w.used(20_000), 90);
        assert_eq!(w.used(65_000), 20);
    }
}
