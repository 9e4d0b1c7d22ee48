//! Cluster-wide coalescing: identical questions in flight on different servers make ONE model
//! call. (Within one server, the chat service's shared task already does this.)
//!
//! The first server to ask takes a short lease on the question (`SET NX PX`) and renews it while
//! it works; the others poll, with backoff, for the answer to appear in the Redis cache or the
//! lease to vanish. A holder that fails releases the lease and the others go themselves; a holder
//! that dies stops renewing and delays the others only until the lease expires.

use crate::cache::{CacheKey, CachedAnswer, RedisCache};
use crate::redis_link::RedisLink;
use ::redis::AsyncCommands;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First poll interval while waiting for another server's answer; doubles up to the cap.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest poll interval: an answer that lands is seen within this.
const MAX_POLL: Duration = Duration::from_millis(200);

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// What the cluster says about a question this server is about to ask the model.
pub enum LeaseOutcome {
    /// This server holds the lease: ask the model, then [`Lease::finish`].
    Holder(Lease),
    /// Another server answered while we waited.
    Answered(CachedAnswer),
    /// Redis cannot coordinate right now: ask the model without it.
    Unavailable,
    /// The deadline passed while waiting for another server.
    TimedOut,
}

/// Coordinates model calls for identical questions across servers.
#[derive(Debug, Clone)]
pub struct ClusterCoalescer {
    link: RedisLink,
    cache: RedisCache,
    lease: Duration,
}

impl ClusterCoalescer {
    /// Leases last `lease` unless renewed.
    pub fn new(link: RedisLink, cache: RedisCache, lease: Duration) -> ClusterCoalescer {
        ClusterCoalescer {
            link,
            cache,
            lease: lease.max(Duration::from_millis(300)),
        }
    }

    /// Takes the lease for `key`, or waits for the server holding it to publish the answer.
    pub async fn acquire(&self, key: &CacheKey, deadline: Instant) -> LeaseOutcome {
        let lease_key = self.link.key("lease", &key.to_hex());
        let answer_key = self.cache.redis_key(key);
        let holder = self.link.server_id().to_owned();
        let lease_ms = self.lease.as_millis() as u64;
        let mut counted_wait = false;
        loop {
            let taken = {
                let (lease_key, holder) = (lease_key.clone(), holder.clone());
                self.link
                    .run("lease_acquire", |mut conn| async move {
                        let reply: Option<String> = ::redis::cmd("SET")
                            .arg(&lease_key)
                            .arg(&holder)
                            .arg("NX")
                            .arg("PX")
                            .arg(lease_ms)
                            .query_async(&mut conn)
                            .await?;
                        Ok(reply.is_some())
                    })
                    .await
            };
            match taken {
                Err(_) => return LeaseOutcome::Unavailable,
                Ok(true) => return LeaseOutcome::Holder(self.start_lease(lease_key)),
                Ok(false) => {}
            }
            if !counted_wait {
                crate::metrics::coalesced("cluster");
                counted_wait = true;
            }
            let mut poll = FIRST_POLL;
            loop {
                if Instant::now() + poll >= deadline {
                    tokio::time::sleep_until(deadline).await;
                    return LeaseOutcome::TimedOut;
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(MAX_POLL);
                let (answer_key, lease_key) = (answer_key.clone(), lease_key.clone());
                // One round trip tells both: is the answer there, is anyone still working on it.
                let state = self
                    .link
                    .run("lease_poll", |mut conn| async move {
                        conn.mget::<_, (Option<String>, Option<String>)>(&[answer_key, lease_key])
                            .await
                    })
                    .await;
                match state {
                    Err(_) => return LeaseOutcome::Unavailable,
                    Ok((Some(text), _)) => {
                        if let Some(answer) = crate::cache::redis::decode(&text) {
                            return LeaseOutcome::Answered(answer);
                        }
                    }
                    // Released without an answer (it failed, or was not cacheable): try ourselves.
                    Ok((None, None)) => break,
                    Ok((None, Some(_))) => {}
                }
            }
        }
    }

    fn start_lease(&self, lease_key: String) -> Lease {
        let link = self.link.clone();
        let key = lease_key.clone();
        let every = self.lease / 3;
        let lease_ms = self.lease.as_millis() as u64;
        // Renewal keeps a slow but live holder's lease; a dead holder stops renewing.
        let renewer = tokio::spawn(crate::telemetry::in_current_context(async move {
            loop {
                tokio::time::sleep(every).await;
                let (key, holder) = (key.clone(), link.server_id().to_owned());
                let _ = link
                    .run("lease_renew", |mut conn| async move {
                        ::redis::Script::new(RENEW_SCRIPT)
                            .key(key)
                            .arg(holder)
                            .arg(lease_ms)
                            .invoke_async::<i64>(&mut conn)
                            .await
                    })
                    .await;
            }
        }));
        Lease {
            link: self.link.clone(),
            cache: self.cache.clone(),
            lease_key,
            renewer: Some(renewer),
        }
    }
}

/// The right to ask the model for one question on behalf of the cluster.
pub struct Lease {
    link: RedisLink,
    cache: RedisCache,
    lease_key: String,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    /// Publishes the answer (when there is a cacheable one) and then releases the lease, in the
    /// background: the order matters (waiters must see the answer before the lease goes), the
    /// latency does not.
    pub fn finish(mut self, answer: Option<(CacheKey, CachedAnswer)>) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let link = self.link.clone();
        let cache = self.cache.clone();
        let lease_key = std::mem::take(&mut self.lease_key);
        tokio::spawn(crate::telemetry::in_current_context(async move {
            if let Some((key, answer)) = answer {
                let _ = cache.set(&key, &answer).await;
            }
            release(&link, lease_key).await;
        }));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without finish (an early error return): release so others need not wait.
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
            let link = self.link.clone();
            let lease_key = std::mem::take(&mut self.lease_key);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { release(&link, lease_key).await });
            }
        }
    }
}

async fn release(link: &RedisLink, lease_key: String) {
    let holder = link.server_id().to_owned();
    let _ = link
        .run("lease_release", |mut conn| async move {
            ::redis::Script::new(RELEASE_SCRIPT)
                .key(lease_key)
                .arg(holder)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await;
}
