//! An exact sliding-window limit with reservations: at most `limit` units in ANY window of
//! `window_ms`, which is how a provider's "per minute" quota is safest read. Unlike a token
//! bucket (which allows a full burst on top of the steady rate), this never lets a window of the
//! provider's own choosing see more than the quota.
//!
//! A caller that cannot go now reserves the earliest time at which it can, and sleeps until then;
//! reservations are entries in the future, so waiters are served in order without polling.
//! The Redis side runs the same algorithm in `window_reserve.lua`.
//!
//! A window holds at most [`MAX_ENTRIES`] entries, so its memory is bounded whatever its span
//! (a day of token charges) and rate: past that, entries are merged into buckets of
//! `span / (MAX_ENTRIES / 2)`, each counted from its bucket's end. A merged unit is held at most
//! one bucket longer than it was, never shorter, so the limit still holds.

use std::collections::VecDeque;

/// Most entries one window keeps before merging them into buckets.
pub const MAX_ENTRIES: usize = 1024;

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

    /// Units that fit at `at_ms` (no earlier than `now_ms`), on what is held now: what has
    /// left the window by then frees its units, reservations still to come keep theirs.
    pub fn room_at(&mut self, at_ms: u64, now_ms: u64) -> u64 {
        self.prune(now_ms);
        let leaving: u64 = self
            .entries
            .iter()
            .take_while(|&&(t, _)| t + self.window_ms <= at_ms)
            .map(|&(_, u)| u)
            .sum();
        self.limit.saturating_sub(self.total - leaving)
    }

    /// Records `units` at `at_ms` (which must come from [`SlidingWindow::earliest`] or later).
    pub fn record(&mut self, units: u64, at_ms: u64) {
        let units = units.min(self.limit);
        let position = self.entries.partition_point(|&(t, _)| t <= at_ms);
        self.entries.insert(position, (at_ms, units));
        self.total += units;
        if self.entries.len() > MAX_ENTRIES {
            self.coarsen();
        }
    }

    /// The width of the buckets entries are merged into.
    fn bucket_ms(&self) -> u64 {
        (self.window_ms / (MAX_ENTRIES as u64 / 2)).max(1)
    }

    /// Merges the entries into buckets, each counted from its bucket's end (later, never
    /// earlier, than its entries); the total is unchanged.
    fn coarsen(&mut self) {
        let width = self.bucket_ms();
        let mut merged: VecDeque<(u64, u64)> = VecDeque::with_capacity(MAX_ENTRIES / 2 + 1);
        for &(at, units) in &self.entries {
            let end = at.div_ceil(width).saturating_mul(width);
            match merged.back_mut() {
                Some((t, u)) if *t == end => *u += units,
                _ => merged.push_back((end, units)),
            }
        }
        // Reservations far ahead can still leave too many buckets: fold the oldest into the
        // next (later) one.
        while merged.len() > MAX_ENTRIES {
            if let Some((_, units)) = merged.pop_front() {
                if let Some((_, next)) = merged.front_mut() {
                    *next += units;
                }
            }
        }
        self.entries = merged;
    }

    /// Takes back `units` recorded at `at_ms` (a reservation not used after all, a request
    /// that ended); from its bucket when the entries were merged.
    pub fn remove(&mut self, units: u64, at_ms: u64) {
        let units = units.min(self.limit);
        if let Some(i) = self
            .entries
            .iter()
            .position(|&(t, u)| t == at_ms && u == units)
        {
            self.entries.remove(i);
            self.total -= units;
            return;
        }
        let width = self.bucket_ms();
        let end = at_ms.div_ceil(width).saturating_mul(width);
        if let Some(i) = self
            .entries
            .iter()
            .position(|&(t, u)| t == end && u >= units)
        {
            if let Some(entry) = self.entries.get_mut(i) {
                entry.1 -= units;
                if entry.1 == 0 {
                    self.entries.remove(i);
                }
            }
            self.total -= units;
        }
    }

    /// Heap bytes its entries take.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    /// When its newest entry counts from (`None`: empty).
    pub fn newest(&self) -> Option<u64> {
        self.entries.back().map(|&(at, _)| at)
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
    fn room_counts_what_leaves_the_window_by_then() {
        let mut w = SlidingWindow::new(10, 60_000);
        for i in 0..8 {
            w.record(1, i * 1000);
        }
        // A reservation still to come keeps its unit whenever it is asked.
        w.record(1, 30_000);
        assert_eq!(w.room_at(10_000, 10_000), 1);
        // By 62.5 s the calls of 0, 1 and 2 s have left.
        assert_eq!(w.room_at(62_500, 10_000), 4);
        assert_eq!(w.room_at(62_500, 10_000), w.room_at(62_500, 20_000));
        // Every entry gone: the whole limit.
        assert_eq!(w.room_at(100_000, 10_000), 10);
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

    #[test]
    fn a_day_of_charges_is_bounded_in_memory_and_never_undercounted() {
        const DAY: u64 = 86_400_000;
        let mut w = SlidingWindow::new(u64::MAX / 2, DAY);
        // A charge every 86 ms for a day: a million entries unmerged.
        let mut recorded = 0u64;
        let mut peak = 0;
        for i in 0..1_000_000u64 {
            w.record(7, i * 86);
            recorded += 7;
            peak = peak.max(w.heap_bytes());
        }
        assert!(w.entries.len() <= MAX_ENTRIES, "{}", w.entries.len());
        assert!(peak <= 2 * MAX_ENTRIES * 16, "{peak} bytes");
        // Everything recorded is still counted at the end of the day...
        assert_eq!(w.total(DAY - 1), recorded);
        // ...and leaves at most one bucket (a day / 512, under 3 minutes) late.
        let bucket = DAY / (MAX_ENTRIES as u64 / 2);
        assert!(w.total(DAY + DAY / 2) > 0);
        assert_eq!(w.total(2 * DAY + bucket), 0);
    }

    #[test]
    fn a_merged_entry_can_still_be_taken_back() {
        let mut w = SlidingWindow::new(10_000, 60_000);
        for i in 0..(MAX_ENTRIES as u64 + 1) {
            w.record(1, i);
        }
        let before = w.total(2_000);
        w.remove(1, 500);
        assert_eq!(w.total(2_000), before - 1);
    }
}
