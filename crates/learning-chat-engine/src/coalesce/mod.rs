//! One model call per question, success or not, on this server and across servers.
//!
//! - [`local`]: identical questions in flight on this server share one spawned call
//!   ([`local::LocalCoalescer`]), with the re-ask rule for askers that have more time left;
//!   each asker holds a [`subscription::Subscription`] (pieces so far, then live, then the
//!   outcome).
//! - This module: identical questions in flight on different servers share one call through a
//!   lease in Redis ([`ClusterCoalescer`]), taken by the call the local coalescer started.
//! - Streamed answers fan out too: [`fanout`] shares one answer's pieces with every local request
//!   (late joiners get the prefix replayed), [`PieceSink`] is where a call puts them, and
//!   [`relay`] carries them from the lease holder to the other servers through a Redis Stream.
//!
//! The caller (the chat service) supplies what one call does (ask the model, keep the answer) and
//! this module decides how often it runs. The first server to ask takes a short lease on the
//! question ([`crate::lease`], holder: its server id) and renews it while it works; the others
//! poll, with backoff, for the answer to appear in the Redis cache, for the holder's shared
//! outcome (a failure or an uncacheable answer), or for the lease to vanish. A holder that fails
//! publishes what happened before releasing, so the waiters answer with it instead of each asking
//! the model in turn; a holder that dies stops renewing and delays the others only until the
//! lease expires.
//!
//! Every look at the shared state is one script: answer, then outcome, then the lease (taken when
//! free), so a server that wins the lease just after another published still sees the answer,
//! and a value that is corrupt, oversized or a lease without expiry is deleted and counted
//! instead of being waited on until the deadline.
//!
//! A look that fails while Redis is still up (one slow reply, not yet `redis.down_after_failures`
//! in a row) is made again instead of sending the server to the model: otherwise every server
//! that saw one slow reply would ask the model for the same question. Only a Redis marked down
//! sends the question to the model without coordination. The failed look may still run once
//! Redis catches up and take the lease for this server, so the next look takes back a lease
//! already held under this server's id instead of waiting for it to expire.

pub mod fanout;
pub mod local;
pub mod metrics;
pub mod relay;
pub mod subscription;

use crate::cache::{CacheKey, CachedAnswer, RedisCache};
use crate::lease::{HeldLease, LeaseOps, RedisLease};
use crate::providers::{Completion, ProviderError, Usage};
use crate::redis_link::RedisLink;
use crate::redis_scripts::SCRIPTS;
use fanout::Fanout;
use gemini_wire::FinishReason;
use relay::{RelayBounds, RelayPublisher, RelayReader};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First poll interval while waiting for another server's answer; doubles up to the cap.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest poll interval: an answer that lands is seen within this.
const MAX_POLL: Duration = Duration::from_millis(200);

/// The names of the coalescing lease's Redis calls (it is taken by `coalesce_look.lua`).
const LEASE_OPS: LeaseOps = LeaseOps {
    acquire: "lease_look",
    renew: "lease_renew",
    release: "lease_release",
};

/// What a lease holder that got no cacheable answer tells the servers waiting on the question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SharedOutcome {
    /// An answer that is returned but never cached (e.g. truncated at `MAX_TOKENS`).
    Uncached {
        /// The answer text.
        text: String,
        /// The model that produced it.
        model: String,
        /// Tokens it cost.
        usage: Usage,
        /// Why it stopped.
        finish_reason: FinishReason,
        /// Its safety ratings.
        #[serde(default)]
        ratings: crate::safety::Ratings,
    },
    /// The model gave no usable answer (refusal, 429 after retries, 5xx, ...).
    Failed(ProviderError),
}

impl SharedOutcome {
    /// The outcome of `completion`, an answer that is not to be cached.
    pub fn uncached(completion: &Completion) -> SharedOutcome {
        SharedOutcome::Uncached {
            text: completion.text.clone(),
            model: completion.model.clone(),
            usage: completion.usage,
            finish_reason: completion.finish_reason.clone(),
            ratings: completion.ratings.clone(),
        }
    }

    /// What a waiting server answers with: the same answer, or the same failure.
    pub fn into_result(self) -> Result<Completion, ProviderError> {
        match self {
            SharedOutcome::Uncached {
                text,
                model,
                usage,
                finish_reason,
                ratings,
            } => Ok(Completion {
                text,
                finish_reason,
                model,
                usage,
                ratings,
            }),
            SharedOutcome::Failed(error) => Err(error),
        }
    }

    /// A metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            SharedOutcome::Uncached { .. } => "uncached_answer",
            SharedOutcome::Failed(error) => error.kind(),
        }
    }
}

/// What the cluster says about a question this server is about to ask the model.
pub enum LeaseOutcome {
    /// This server holds the lease: ask the model, then [`Lease::finish`].
    Holder(Lease),
    /// Another server answered while we waited.
    Answered(CachedAnswer),
    /// Another server asked and got no cacheable answer: this is what happened.
    Shared(SharedOutcome),
    /// Redis cannot coordinate right now: ask the model without it.
    Unavailable,
    /// The deadline passed while waiting for another server.
    TimedOut,
}

/// What a holder publishes when it is done.
pub enum Publish {
    /// A complete answer: into the shared cache.
    Answer(CachedAnswer),
    /// No cacheable answer: shown to waiters for `ttl`.
    Outcome(SharedOutcome, Duration),
    /// Nothing worth sharing (e.g. the holder ran out of its own deadline: waiters with time
    /// left should ask themselves).
    Nothing,
}

/// Coordinates model calls for identical questions across servers.
#[derive(Debug, Clone)]
pub struct ClusterCoalescer {
    link: RedisLink,
    cache: RedisCache,
    lease: Duration,
    relay: RelayBounds,
}

impl ClusterCoalescer {
    /// Leases last `lease` unless renewed.
    pub fn new(link: RedisLink, cache: RedisCache, lease: Duration) -> ClusterCoalescer {
        ClusterCoalescer {
            link,
            cache,
            lease: lease.max(Duration::from_millis(300)),
            relay: RelayBounds {
                max_entries: 10_000,
                ttl_ms: 60_000,
            },
        }
    }

    /// Bounds the Redis Streams that carry streamed answers to the other servers.
    pub fn with_relay(mut self, relay: RelayBounds) -> ClusterCoalescer {
        self.relay = relay;
        self
    }

    fn stream_key(&self, key: &CacheKey) -> String {
        self.link.key("stream", &key.to_hex())
    }

    fn outcome_key(&self, key: &CacheKey) -> String {
        self.link.key("outcome", &key.to_hex())
    }

    /// Takes the lease for `key`, or waits for the server holding it to publish its result.
    pub async fn acquire(&self, key: &CacheKey, deadline: Instant) -> LeaseOutcome {
        self.acquire_streamed(key, deadline, None).await
    }

    /// As [`ClusterCoalescer::acquire`]; with `stream`, the answer is streamed: a holder gets a
    /// [`Lease`] that publishes its pieces, and a waiter copies the holder's pieces into
    /// `stream` while it waits.
    pub async fn acquire_streamed(
        &self,
        key: &CacheKey,
        deadline: Instant,
        stream: Option<&Arc<Fanout>>,
    ) -> LeaseOutcome {
        let answer_key = self.cache.redis_key(key);
        let outcome_key = self.outcome_key(key);
        let lease_key = self.link.key("lease", &key.to_hex());
        let holder = self.link.server_id().to_owned();
        let lease_ms = self.lease.as_millis() as u64;
        let max_bytes = self.cache.max_value_bytes();
        let stream_key = self.stream_key(key);
        let mut reader = stream.map(|fanout| RelayReader::new(stream_key.clone(), fanout.clone()));
        let mut poll = FIRST_POLL;
        let mut counted_wait = false;
        let mut look_failed = false;
        loop {
            let keys = [
                answer_key.clone(),
                outcome_key.clone(),
                lease_key.clone(),
                stream_key.clone(),
            ];
            let holder = holder.clone();
            let look = self
                .link
                .run(LEASE_OPS.acquire, |mut conn| async move {
                    SCRIPTS
                        .coalesce_look
                        .key(&keys[0])
                        .key(&keys[1])
                        .key(&keys[2])
                        .key(&keys[3])
                        .arg(holder)
                        .arg(lease_ms)
                        .arg(max_bytes)
                        .arg(if look_failed { "1" } else { "0" })
                        .invoke_async::<(String, String, u64)>(&mut conn)
                        .await
                })
                .await;
            let (state, value, dropped) = match look {
                Ok(look) => look,
                Err(_) if self.link.is_up() && Instant::now() + poll < deadline => {
                    // Slow, not down: asking the model now would make one call per server.
                    look_failed = true;
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(MAX_POLL);
                    continue;
                }
                Err(_) => return LeaseOutcome::Unavailable,
            };
            if dropped > 0 {
                tracing::warn!("deleted a corrupt, oversized or never-expiring coalescing value");
                crate::redis_link::metrics::redis_corrupt("lease_or_value", dropped);
            }
            match state.as_str() {
                "holder" => {
                    let publisher = stream.map(|_| {
                        RelayPublisher::start(self.link.clone(), stream_key.clone(), self.relay)
                    });
                    let mut lease = self.start_lease(lease_key);
                    if let Some(publisher) = publisher {
                        lease.relay = Some((publisher, stream_key, self.relay));
                    }
                    return LeaseOutcome::Holder(lease);
                }
                "answer" => match crate::cache::redis::decode(&value) {
                    Some(answer) => return LeaseOutcome::Answered(answer),
                    // Deleted; the next look takes the lease or waits for the holder.
                    None => {
                        self.cache
                            .delete_corrupt(answer_key.clone(), "answer")
                            .await;
                        continue;
                    }
                },
                "outcome" => match serde_json::from_str::<SharedOutcome>(&value) {
                    Ok(outcome) => return LeaseOutcome::Shared(outcome),
                    Err(_) => {
                        self.cache
                            .delete_corrupt(outcome_key.clone(), "outcome")
                            .await;
                        continue;
                    }
                },
                _ => {}
            }
            if !counted_wait {
                crate::coalesce::metrics::coalesced("cluster");
                counted_wait = true;
            }
            if Instant::now() + poll >= deadline {
                tokio::time::sleep_until(deadline).await;
                return LeaseOutcome::TimedOut;
            }
            match &mut reader {
                // New pieces wake the read at once; the lease is looked at again after each.
                Some(reader) => reader.read(&self.link, MAX_POLL.min(poll * 4)).await,
                None => tokio::time::sleep(poll).await,
            }
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    fn start_lease(&self, lease_key: String) -> Lease {
        let holder = self.link.server_id().to_owned();
        let lease = RedisLease::new(self.link.clone(), lease_key, holder, self.lease, LEASE_OPS);
        Lease {
            link: self.link.clone(),
            cache: self.cache.clone(),
            // Renewal keeps a slow but live holder's lease; a dead holder stops renewing.
            held: Some(lease.held(true)),
            relay: None,
        }
    }
}

/// The right to ask the model for one question on behalf of the cluster.
pub struct Lease {
    link: RedisLink,
    cache: RedisCache,
    /// Released once the result is published, or in the background when dropped without
    /// [`Lease::finish`] (an early error return), so the others need not wait for its expiry.
    held: Option<HeldLease>,
    /// For a streamed answer: where its pieces go for the other servers.
    relay: Option<(RelayPublisher, String, RelayBounds)>,
}

impl Lease {
    /// Shares a piece of a streamed answer (at byte `offset`) with the other servers.
    pub fn relay(&self, offset: usize, text: &str) {
        if let Some((publisher, _, _)) = &self.relay {
            publisher.push(offset, text);
        }
    }

    /// Publishes what happened and then releases the lease, in the background: the order
    /// matters (waiters must see the result before the lease goes), the latency does not.
    pub fn finish(mut self, key: CacheKey, publish: Publish) {
        let link = self.link.clone();
        let cache = self.cache.clone();
        let held = self.held.take();
        let relay = self.relay.take();
        tokio::spawn(crate::trace::in_background_of_current(async move {
            // The pieces first, then the result, then the end mark that wakes the readers.
            let relay = match relay {
                Some((publisher, stream_key, bounds)) => {
                    publisher.flush().await;
                    Some((stream_key, bounds))
                }
                None => None,
            };
            match publish {
                Publish::Answer(answer) => {
                    let _ = cache.set(&key, &answer).await;
                }
                Publish::Outcome(outcome, ttl) => {
                    publish_outcome(&link, &key, &outcome, ttl).await;
                }
                Publish::Nothing => {}
            }
            if let Some((stream_key, bounds)) = relay {
                relay::publish_end(&link, stream_key, bounds).await;
            }
            if let Some(held) = held {
                held.release().await;
            }
        }));
    }
}

/// Where a streamed call's pieces go: the local fan-out and, as lease holder, the cluster.
pub struct PieceSink<'a> {
    fanout: &'a Fanout,
    lease: Option<&'a Lease>,
    /// Bytes published so far; the next piece's offset.
    bytes: usize,
}

impl<'a> PieceSink<'a> {
    /// A sink into `fanout` and, when this server holds it, `lease`'s relay.
    pub fn new(fanout: &'a Fanout, lease: Option<&'a Lease>) -> PieceSink<'a> {
        PieceSink {
            fanout,
            lease,
            bytes: 0,
        }
    }

    /// Publishes the next piece.
    pub fn push(&mut self, text: &str) {
        self.fanout.push_at(self.bytes, text);
        if let Some(lease) = self.lease {
            lease.relay(self.bytes, text);
        }
        self.bytes += text.len();
    }
}

/// Stores `outcome` for `key` for `ttl`, so servers asking the same question answer with it.
pub async fn publish_outcome(
    link: &RedisLink,
    key: &CacheKey,
    outcome: &SharedOutcome,
    ttl: Duration,
) {
    let ttl_ms = ttl.as_millis() as u64;
    if ttl_ms == 0 {
        return;
    }
    let Ok(text) = serde_json::to_string(outcome) else {
        return;
    };
    let outcome_key = link.key("outcome", &key.to_hex());
    let _ = link
        .run("outcome_set", |mut conn| async move {
            ::redis::cmd("SET")
                .arg(outcome_key)
                .arg(text)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
}
