//! A lease in Redis: a key holding one holder's id, with an expiry. Only its holder renews or
//! releases it (compare and delete), so a holder whose lease ran out can never end the next
//! holder's; a holder that dies stops renewing and holds the others off only until it expires.
//!
//! It serves both the coalescing lease on a question (taken inside `coalesce_look.lua`, together
//! with the look at the question's answer) and the lock on a conversation (taken here, waiting
//! with backoff while another message holds it).

use crate::redis_link::{RedisLink, RedisUnavailable};
use crate::redis_scripts::SCRIPTS;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First wait before looking at a held lease again; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait between two looks: a released lease is taken within this.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// The names a lease's Redis calls are measured under (`operation` of the Redis metrics).
#[derive(Debug, Clone, Copy)]
pub struct LeaseOps {
    /// Taking the lease.
    pub acquire: &'static str,
    /// Extending it.
    pub renew: &'static str,
    /// Releasing it.
    pub release: &'static str,
}

/// One lease key as seen by one holder.
#[derive(Debug, Clone)]
pub struct RedisLease {
    link: RedisLink,
    key: String,
    holder: String,
    ttl_ms: u64,
    ops: LeaseOps,
}

impl RedisLease {
    /// The lease `key` as `holder` would hold it, for `ttl` from each take or renewal.
    pub fn new(
        link: RedisLink,
        key: String,
        holder: String,
        ttl: Duration,
        ops: LeaseOps,
    ) -> RedisLease {
        RedisLease {
            link,
            key,
            holder,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            ops,
        }
    }

    /// The Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long a take or renewal lasts, in ms.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Takes the lease once if it is free (or, with `retake`, already this holder's); true when
    /// held now. A value in its place that could never expire is deleted and counted.
    pub async fn try_take(&self, retake: bool) -> Result<bool, RedisUnavailable> {
        let (key, holder, ttl) = (self.key.clone(), self.holder.clone(), self.ttl_ms);
        let (taken, repaired): (i64, u64) = self
            .link
            .run(self.ops.acquire, |mut conn| async move {
                SCRIPTS
                    .lease_acquire
                    .key(key)
                    .arg(holder)
                    .arg(ttl)
                    .arg(if retake { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if repaired > 0 {
            tracing::warn!("deleted a lease that could never expire");
            crate::redis_link::metrics::redis_corrupt("lease_or_value", repaired);
        }
        Ok(taken == 1)
    }

    /// Takes the lease, waiting with backoff while another holds it, until `until`; `None` when
    /// it was still held then. Tries at least once, even with `until` passed.
    pub async fn take_until(self, until: Instant) -> Result<Option<HeldLease>, RedisUnavailable> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.try_take(false).await {
                Ok(true) => return Ok(Some(self.held(false))),
                Ok(false) => {}
                Err(e) => {
                    // The reply was lost, maybe not the command: give back what it may have
                    // taken rather than hold the others off until it expires.
                    let lease = self.clone();
                    tokio::spawn(async move { lease.release().await });
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            tokio::time::sleep(backoff.min(until - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The lease as held by this holder (it was just taken); with `renew`, renewed every third
    /// of its TTL until released, so a slow but live holder keeps it.
    pub fn held(self, renew: bool) -> HeldLease {
        let renewer = renew.then(|| {
            let lease = self.clone();
            let every = Duration::from_millis(self.ttl_ms / 3).max(Duration::from_millis(1));
            tokio::spawn(crate::trace::in_background_of_current(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = lease.renew().await;
                }
            }))
        });
        HeldLease {
            lease: Some(self),
            renewer,
        }
    }

    /// Extends the lease while this holder holds it; true when extended.
    pub async fn renew(&self) -> Result<bool, RedisUnavailable> {
        let (key, holder, ttl) = (self.key.clone(), self.holder.clone(), self.ttl_ms);
        let renewed: i64 = self
            .link
            .run(self.ops.renew, |mut conn| async move {
                SCRIPTS
                    .lease_renew
                    .key(key)
                    .arg(holder)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes the lease if this holder still holds it (best effort: it expires anyway).
    pub async fn release(&self) {
        let (key, holder) = (self.key.clone(), self.holder.clone());
        let _ = self
            .link
            .run(self.ops.release, |mut conn| async move {
                SCRIPTS
                    .lease_release
                    .key(key)
                    .arg(holder)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }
}

/// A lease this holder holds: released by [`HeldLease::release`], or in the background when
/// dropped (an early return must not make the others wait for the expiry).
#[derive(Debug)]
pub struct HeldLease {
    lease: Option<RedisLease>,
    renewer: Option<JoinHandle<()>>,
}

impl HeldLease {
    /// Stops renewing and releases the lease.
    pub async fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if let Some(lease) = self.lease.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { lease.release().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisSettings, Secret};
    use learning_chat_testkit::redis::RedisProcess;

    const OPS: LeaseOps = LeaseOps {
        acquire: "test_lease",
        renew: "test_lease",
        release: "test_lease",
    };

    async fn start() -> (RedisProcess, RedisLink) {
        let redis = tokio::task::spawn_blocking(RedisProcess::start)
            .await
            .unwrap();
        let settings = RedisSettings {
            url: Secret::new(redis.url()),
            // Not a test of slow Redis.
            command_timeout: Duration::from_secs(5),
            ..RedisSettings::default()
        };
        let link = RedisLink::new(&settings).unwrap();
        assert!(link.probe().await);
        (redis, link)
    }

    fn lease(link: &RedisLink, holder: &str, ttl: Duration) -> RedisLease {
        RedisLease::new(link.clone(), "lock".into(), holder.into(), ttl, OPS)
    }

    #[tokio::test]
    async fn a_waiter_takes_the_lease_once_its_holder_releases_it_or_gives_up_at_its_deadline() {
        let (redis, link) = start().await;
        let minute = Duration::from_secs(60);
        let first = lease(&link, "a", minute).take_until(Instant::now()).await;
        let first = first.unwrap().expect("a free lease is taken at once");
        assert_eq!(redis.cli(&["GET", "lock"]), "a");

        let later = Instant::now() + Duration::from_millis(100);
        let busy = lease(&link, "b", minute).take_until(later).await.unwrap();
        assert!(busy.is_none(), "held by another until the deadline");

        // Released while the other waits (its deadline well before the minute's expiry).
        let waiter = tokio::spawn(
            lease(&link, "b", minute).take_until(Instant::now() + Duration::from_secs(30)),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.release().await;
        let second = waiter.await.unwrap().unwrap();
        assert!(second.is_some(), "taken once released");
        assert_eq!(redis.cli(&["GET", "lock"]), "b");

        // Dropped without a release: released in the background all the same.
        drop(second);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while redis.cli(&["EXISTS", "lock"]) == "1" {
            assert!(std::time::Instant::now() < until, "never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_renewed_lease_outlives_its_ttl_and_one_not_renewed_expires() {
        let (redis, link) = start().await;
        let short = Duration::from_millis(300);
        let renewed = lease(&link, "a", short);
        assert!(renewed.try_take(false).await.unwrap());
        let renewed = renewed.held(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(redis.cli(&["GET", "lock"]), "a", "kept by its renewals");
        assert!(!lease(&link, "b", short).try_take(false).await.unwrap());
        renewed.release().await;

        let once = lease(&link, "c", short);
        assert!(once.try_take(false).await.unwrap());
        let _held = once.held(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            lease(&link, "d", short).try_take(false).await.unwrap(),
            "expired without renewals"
        );
    }
}
