//! What one server keeps of one scope's windows: the local windows that decide while Redis is
//! away (or always, without Redis), and, for a limiter that remembers, its own calls and the
//! others' as last seen in Redis.

use super::{SlidingWindow, Window};
use std::collections::{HashMap, VecDeque};

/// What a local window costs besides its entries: the window, its name's `String` and the
/// map's slot.
const WINDOW_OVERHEAD: usize =
    std::mem::size_of::<SlidingWindow>() + std::mem::size_of::<String>() * 2 + 16;

/// The bytes a local window named `name` holds.
fn window_bytes(name: &str, window: &SlidingWindow) -> usize {
    WINDOW_OVERHEAD + name.len() + window.heap_bytes()
}

/// One of this server's calls, kept to be written back into a Redis that lost it.
#[derive(Debug, Clone)]
pub(super) struct OwnCall {
    /// Local ms its units count from.
    pub at: u64,
    /// Its member (without this server's prefix).
    pub member: String,
    /// Units recorded per window name.
    pub units: Vec<(String, u64)>,
}

/// The windows deciding in this process.
#[derive(Debug)]
pub(super) struct Local {
    /// By window name.
    pub windows: HashMap<String, SlidingWindow>,
    /// What one call of this server counts for: 1 alone, `replicas` while the others cannot be
    /// seen (so every server doing the same keeps the sum within the limit).
    pub weight: u64,
    /// Once back in Redis: trust Redis alone from this time even if a replica never showed up.
    pub until: Option<u64>,
    /// When this server last wrote its calls back. Only servers that reserved since count as
    /// back: after a Sentinel failover the promoted replica still holds the others'
    /// reservations from just before the outage, which would otherwise pass for a return.
    pub back_at: Option<u64>,
}

/// One scope's state on this server.
#[derive(Debug, Default)]
pub(super) struct Scope {
    /// This server's calls of the longest window (reservations included), oldest first; kept
    /// only by a limiter that remembers.
    pub own: VecDeque<OwnCall>,
    /// The other servers' units in the first window as last seen in Redis: (local ms no
    /// earlier than the call, units).
    pub others: Vec<(u64, u64)>,
    /// When `others` was last fetched whole.
    pub snapshot_at: Option<u64>,
    /// Set while this process decides (or bounds Redis' answers).
    pub local: Option<Local>,
    /// Own calls decided without Redis, or lost by Redis, are still to be written back.
    pub unpublished: bool,
    /// This server has written its calls into Redis at least once.
    pub ever_synced: bool,
    /// Bytes its local windows hold (kept up to date by the methods that change them).
    pub bytes: usize,
    /// `bytes` as the limiter last counted it (see `Scopes::account`).
    pub accounted: usize,
}

fn longest(windows: &[Window]) -> u64 {
    windows.iter().map(|w| w.span_ms).max().unwrap_or(0)
}

impl Scope {
    /// Forgets what left every window.
    pub fn prune(&mut self, now: u64, windows: &[Window]) {
        let span = longest(windows);
        while self.own.front().is_some_and(|c| c.at + span <= now) {
            self.own.pop_front();
        }
        if let Some(first) = windows.first() {
            self.others.retain(|&(at, _)| at + first.span_ms > now);
        }
    }

    /// True when nothing is kept that would change a decision (the scope can go). Drops the
    /// local windows that count nothing now.
    pub fn is_idle(&mut self, now: u64) -> bool {
        if let Some(local) = &mut self.local {
            local.windows.retain(|_, w| w.total(now) > 0);
            self.bytes = local
                .windows
                .iter()
                .map(|(name, w)| window_bytes(name, w))
                .sum();
        }
        self.own.is_empty()
            && !self.unpublished
            && self.local.as_ref().is_none_or(|l| l.windows.is_empty())
    }

    /// Starts deciding locally, with each call counting `weight` times. Returns true when the
    /// mode began now.
    pub fn enter_local(&mut self, weight: u64) -> bool {
        if self.local.is_some() {
            return false;
        }
        self.local = Some(Local {
            windows: HashMap::new(),
            weight,
            until: None,
            back_at: None,
        });
        true
    }

    /// The local window for `spec` (the `index`th of the call), made on first use from
    /// everything known of it: this server's calls and, for the first window, the others'.
    pub fn local_window(
        &mut self,
        index: usize,
        spec: &Window,
        now: u64,
    ) -> Option<&mut SlidingWindow> {
        let Scope {
            own,
            others,
            local,
            bytes,
            ..
        } = self;
        let local = local.as_mut()?;
        let window = local
            .windows
            .entry(spec.name.to_string())
            .or_insert_with(|| {
                let mut window = SlidingWindow::new(spec.limit, spec.span_ms);
                for call in own.iter().filter(|c| c.at + spec.span_ms > now) {
                    for (name, units) in &call.units {
                        if *name == spec.name {
                            window.record(*units, call.at);
                        }
                    }
                }
                if index == 0 {
                    for &(at, units) in others.iter() {
                        window.record(units, at);
                    }
                }
                *bytes += window_bytes(&spec.name, &window);
                window
            });
        window.set_limit(spec.limit);
        Some(window)
    }

    /// The earliest local ms (no earlier than `now`) at which the call fits every local
    /// window, and each window's own earliest.
    pub fn local_earliest(&mut self, windows: &[Window], now: u64) -> (u64, Vec<u64>) {
        let weight = self.local.as_ref().map_or(1, |l| l.weight);
        let mut at = now;
        let mut each = Vec::with_capacity(windows.len());
        for (i, spec) in windows.iter().enumerate() {
            let earliest = self
                .local_window(i, spec, now)
                .map_or(now, |w| w.earliest(spec.fit * weight, now));
            at = at.max(earliest);
            each.push(earliest);
        }
        (at, each)
    }

    /// The first window of `windows` as this server last knew it while Redis decides (its own
    /// calls and the others' as last seen, each expiring no earlier than the real one); `None`
    /// before it has seen Redis' window.
    pub fn remembered_window(&self, windows: &[Window]) -> Option<SlidingWindow> {
        let first = windows.first()?;
        self.snapshot_at?;
        let mut window = SlidingWindow::new(first.limit, first.span_ms);
        for call in &self.own {
            for (name, units) in &call.units {
                if *name == first.name {
                    window.record(*units, call.at);
                }
            }
        }
        for &(at, units) in &self.others {
            window.record(units, at);
        }
        Some(window)
    }

    /// How many calls fit every local window at `at` (`None`: not deciding locally).
    pub fn local_room(&mut self, windows: &[Window], at: u64, now: u64) -> Option<u64> {
        let weight = self.local.as_ref()?.weight;
        let mut calls = u64::MAX;
        for (i, spec) in windows.iter().enumerate() {
            let per_call = (spec.fit * weight).max(1);
            let room = self
                .local_window(i, spec, now)
                .map_or(spec.limit, |w| w.room_at(at.max(now), now));
            calls = calls.min(room / per_call);
        }
        Some(calls)
    }

    /// Records (or, with `add` false, takes back) the call's units at `at` in the local
    /// windows.
    pub fn local_record(&mut self, windows: &[Window], at: u64, now: u64, add: bool) {
        let weight = self.local.as_ref().map_or(1, |l| l.weight);
        for (i, spec) in windows.iter().enumerate() {
            if spec.record == 0 {
                continue;
            }
            self.change(i, spec, now, |window| {
                if add {
                    window.record(spec.record * weight, at);
                } else {
                    window.remove(spec.record * weight, at);
                }
            });
        }
    }

    /// Applies `change` to the local window of `spec` (made if need be), keeping `bytes` true.
    pub fn change(
        &mut self,
        index: usize,
        spec: &Window,
        now: u64,
        change: impl FnOnce(&mut SlidingWindow),
    ) {
        let Some(window) = self.local_window(index, spec, now) else {
            return;
        };
        let before = window.heap_bytes();
        change(window);
        let after = window.heap_bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
    }

    /// Forgets the local windows whose newest entry is older than `before` (local ms); returns
    /// the bytes freed.
    pub fn forget_older(&mut self, before: u64) -> usize {
        let Some(local) = &mut self.local else {
            return 0;
        };
        let mut freed = 0;
        local.windows.retain(|name, w| {
            let keep = w.newest().is_some_and(|at| at >= before);
            if !keep {
                freed += window_bytes(name, w);
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        freed
    }

    /// When each local window's newest entry counts from.
    pub fn newest_entries(&self) -> impl Iterator<Item = u64> + '_ {
        self.local
            .iter()
            .flat_map(|l| l.windows.values())
            .map(|w| w.newest().unwrap_or(0))
    }

    /// Takes in what a granted reservation showed of the others' calls in the first window.
    pub fn learn_others(
        &mut self,
        windows: &[Window],
        held: u64,
        others: Option<&[(i64, u64)]>,
        now: u64,
    ) {
        let Some(first) = windows.first() else {
            return;
        };
        if let Some(others) = others {
            let now = i64::try_from(now).unwrap_or(i64::MAX);
            self.others = others
                .iter()
                .map(|&(rel, units)| (u64::try_from(now + rel).unwrap_or(0), units))
                .collect();
            self.snapshot_at = u64::try_from(now).ok();
        }
        self.prune(now, windows);
        // Calls the others made since the last snapshot: counted as made now (the latest they
        // can have been made), so they expire no earlier than the real ones.
        let own: u64 = self
            .own
            .iter()
            .flat_map(|c| c.units.iter())
            .filter(|(name, _)| *name == first.name)
            .map(|(_, units)| units)
            .sum();
        let others_now = held.saturating_sub(own);
        let known: u64 = self.others.iter().map(|&(_, units)| units).sum();
        if others_now > known {
            self.others.push((now, others_now - known));
        }
    }

    /// This server's units of window `name` counted at `now` (reservations still to come left
    /// out).
    pub fn own_used(&self, name: &str, span_ms: u64, now: u64) -> u64 {
        self.own
            .iter()
            .filter(|c| c.at <= now && c.at + span_ms > now)
            .flat_map(|c| c.units.iter())
            .filter(|(n, _)| n == name)
            .map(|(_, units)| units)
            .sum()
    }
}

/// The units a call records, by window name.
pub(super) fn recorded(windows: &[Window]) -> Vec<(String, u64)> {
    windows
        .iter()
        .filter(|w| w.record > 0)
        .map(|w| (w.name.to_string(), w.record.min(w.limit)))
        .collect()
}
