//! The remembering fallback's way back to Redis: writing this server's calls back into a Redis
//! that lost them, and trusting Redis alone again once every server did.

use super::redis::Entry;
use super::scope::Scope;
use super::{Cluster, Window, WindowLimiter};
use crate::redis_link::RedisUnavailable;

impl WindowLimiter {
    /// Reports that `scope` began deciding locally.
    pub(super) fn entered_local(&self, scope: &Scope) {
        if !self.options.quota_metrics {
            return;
        }
        let others: u64 = scope.others.iter().map(|&(_, units)| units).sum();
        crate::admission::metrics::quota_conservative(true);
        tracing::info!(
            own_calls = scope.own.len(),
            other_calls = others,
            "quota: counting conservatively until Redis is back and trusted"
        );
    }

    /// Leaves the local mode once Redis is trustworthy again: every replica has written its
    /// calls back and reserved recently, or a whole window passed since this server did.
    pub(super) fn maybe_trust_redis(
        &self,
        cluster: &Cluster,
        scope: &mut Scope,
        fresh: u64,
        now: u64,
    ) {
        let Some(local) = &scope.local else {
            return;
        };
        if scope.unpublished {
            return;
        }
        let everyone_back = fresh >= cluster.replicas;
        let window_passed = local.until.is_some_and(|until| now >= until);
        if everyone_back || window_passed {
            scope.local = None;
            scope.bytes = 0;
            if self.options.quota_metrics {
                crate::admission::metrics::quota_conservative(false);
                tracing::info!(
                    everyone_back,
                    "quota: Redis trusted again for the cluster quota"
                );
            }
        }
    }

    /// Writes this server's calls of the window back into Redis.
    pub(super) async fn republish(
        &self,
        cluster: &Cluster,
        scope_name: &str,
        windows: &[Window],
    ) -> Result<(), RedisUnavailable> {
        let _one_at_a_time = cluster.republishing.lock().await;
        let entries = {
            let mut scopes = self.scopes.lock();
            let Some(scope) = scopes.get_mut(scope_name).filter(|s| s.unpublished) else {
                return Ok(());
            };
            scope.unpublished = false;
            let now = self.now_ms();
            scope.prune(now, windows);
            let age =
                |at: u64| i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(at).unwrap_or(0);
            scope
                .own
                .iter()
                .flat_map(|call| {
                    call.units.iter().filter_map(move |(name, units)| {
                        let window = windows.iter().position(|w| w.name == name.as_str())?;
                        Some(Entry {
                            window,
                            age_ms: age(call.at),
                            member: call.member.clone(),
                            units: *units,
                            add: true,
                        })
                    })
                })
                .collect::<Vec<_>>()
        };
        let written = cluster
            .redis
            .record(scope_name, windows, &entries, true)
            .await;
        let now = self.now_ms();
        let mut scopes = self.scopes.lock();
        let scope = scopes.entry(scope_name.to_owned()).or_default();
        match written {
            Ok(added) => {
                if self.options.quota_metrics {
                    crate::admission::metrics::quota_republished(
                        added.first().copied().unwrap_or(0),
                    );
                }
                scope.ever_synced = true;
                if let Some(local) = scope.local.as_mut() {
                    let longest = windows.iter().map(|w| w.span_ms).max().unwrap_or(0);
                    local.until.get_or_insert(now + longest);
                    local.back_at = Some(now);
                }
                Ok(())
            }
            Err(e) => {
                scope.unpublished = true;
                Err(e)
            }
        }
    }
}
