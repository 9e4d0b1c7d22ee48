//! What happens to a granted call afterwards: its cost charged, its lease ended, its units read
//! back for the usage gauge.

use super::redis::Entry;
use super::{Change, Ticket, Window, WindowLimiter};

impl WindowLimiter {
    /// Applies `changes` to a granted call's entries where it was decided (Redis, or this
    /// process when Redis fails now: the charges count here then, while deciding locally).
    pub async fn settle(
        &self,
        scope_name: &str,
        member: &str,
        windows: &[Window],
        ticket: Ticket,
        changes: &[Change],
    ) {
        if changes.is_empty() {
            return;
        }
        if !ticket.local {
            if let Some(cluster) = &self.cluster {
                let entries: Vec<Entry> = changes
                    .iter()
                    .filter_map(|change| {
                        let (window, units, add) = match *change {
                            Change::Charge { window, units } => (window, units, true),
                            Change::Release { window } => {
                                (window, windows.get(window)?.record, false)
                            }
                        };
                        Some(Entry {
                            window,
                            age_ms: 0,
                            member: member.to_owned(),
                            units,
                            add,
                        })
                    })
                    .collect();
                if cluster
                    .redis
                    .record(scope_name, windows, &entries, false)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        let now = self.now_ms();
        let mut scopes = self.scopes.lock();
        let Some(scope) = scopes.get_mut(scope_name) else {
            return;
        };
        let weight = scope.local.as_ref().map_or(1, |l| l.weight);
        for change in changes {
            match *change {
                Change::Charge { window, units } => {
                    if let Some(spec) = windows.get(window) {
                        scope.change(window, spec, now, |w| {
                            w.record(units.saturating_mul(weight), now);
                        });
                    }
                }
                // A lease taken in Redis expires there on its own.
                Change::Release { window } if ticket.local => {
                    if let Some(spec) = windows.get(window) {
                        scope.change(window, spec, now, |w| {
                            w.remove(spec.record * weight, ticket.at_ms);
                        });
                    }
                }
                Change::Release { .. } => {}
            }
        }
        scopes.account(scope_name);
        self.keep_within_budget(&mut scopes, now);
    }

    /// Units `window` of `scope` counts now: cluster-wide when Redis answers, else this
    /// server's.
    pub async fn used(&self, scope: &str, window: &Window) -> u64 {
        if let Some(cluster) = &self.cluster {
            if let Ok(used) = cluster.redis.used(scope, window).await {
                return used;
            }
        }
        self.local_used(scope, window)
    }

    /// Units `window` of `scope` counts now on this server alone.
    pub fn local_used(&self, scope: &str, window: &Window) -> u64 {
        let now = self.now_ms();
        let mut scopes = self.scopes.lock();
        let Some(scope) = scopes.get_mut(scope) else {
            return 0;
        };
        if self.cluster.is_some() && self.options.remember {
            return scope.own_used(&window.name, window.span_ms, now);
        }
        scope
            .local
            .as_mut()
            .and_then(|l| l.windows.get_mut(window.name.as_ref()))
            .map_or(0, |w| w.used(now))
    }
}
