//! The bytes a limiter's local windows hold, and the budget that bounds them.
//!
//! Each scope counts the bytes of its own windows as they change; the limiter adds them up when a
//! scope is used ([`Scopes::account`]). Past the budget, the windows that count nothing any more
//! go first; then the least recently used windows (by their newest entry) are forgotten until a
//! quarter of the budget is free again. Forgetting a window forgets what it counted: memory
//! stays bounded whatever a caller sends (a new learner id with every request, say), at the
//! price of letting the least recently seen subjects start afresh.

use super::scope::Scope;
use super::WindowLimiter;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

/// The scopes of one limiter and the bytes their windows hold.
#[derive(Debug, Default)]
pub(super) struct Scopes {
    map: HashMap<String, Scope>,
    /// The sum of every scope's `accounted`.
    bytes: usize,
}

impl Deref for Scopes {
    type Target = HashMap<String, Scope>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl DerefMut for Scopes {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Scopes {
    /// Brings the total up to date with scope `name`'s bytes.
    pub fn account(&mut self, name: &str) {
        if let Some(scope) = self.map.get_mut(name) {
            self.bytes = (self.bytes + scope.bytes).saturating_sub(scope.accounted);
            scope.accounted = scope.bytes;
        }
    }

    /// Drops scope `name` and what it held.
    pub fn drop_scope(&mut self, name: &str) {
        if let Some(scope) = self.map.remove(name) {
            self.bytes = self.bytes.saturating_sub(scope.accounted);
        }
    }

    /// Drops the scopes (and windows) that count nothing at `now`, and recounts the rest.
    pub fn drop_idle(&mut self, now: u64) {
        self.map.retain(|_, scope| !scope.is_idle(now));
        self.recount();
    }

    fn recount(&mut self) {
        self.bytes = 0;
        for scope in self.map.values_mut() {
            scope.accounted = scope.bytes;
            self.bytes += scope.bytes;
        }
    }

    /// Bytes held by every scope's local windows.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl WindowLimiter {
    /// Keeps the local windows within the limiter's byte budget (none: unbounded).
    pub(super) fn keep_within_budget(&self, scopes: &mut Scopes, now: u64) {
        let Some(max) = self.max_bytes else {
            return;
        };
        if scopes.bytes <= max {
            crate::admission::metrics::limit_windows_bytes(scopes.bytes);
            return;
        }
        scopes.drop_idle(now);
        let target = max - max / 4;
        // A few rounds at most: each forgets the oldest share the average window size says.
        for _ in 0..8 {
            if scopes.bytes <= target {
                break;
            }
            let mut newest: Vec<u64> = scopes.values().flat_map(Scope::newest_entries).collect();
            if newest.is_empty() {
                break;
            }
            newest.sort_unstable();
            let average = (scopes.bytes / newest.len()).max(1);
            let excess = (scopes.bytes - target).div_ceil(average);
            let cutoff = newest[excess.min(newest.len() - 1)];
            let mut forgotten = 0;
            for scope in scopes.values_mut() {
                forgotten += scope.forget_older(cutoff.max(1));
            }
            if forgotten == 0 {
                // Every window left is as recent as the cutoff: forget those too.
                for scope in scopes.values_mut() {
                    scope.forget_older(u64::MAX);
                }
            }
            crate::admission::metrics::limit_windows_forgotten();
            scopes.drop_idle(now);
        }
        crate::admission::metrics::limit_windows_bytes(scopes.bytes);
    }
}
