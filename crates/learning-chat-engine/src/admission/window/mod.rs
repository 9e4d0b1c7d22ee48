//! One sliding-window limiter for every limit the server keeps: the upstream quota (requests and
//! input tokens per minute, [`super::QuotaLimiter`]) and the per-key limits (requests per
//! minute, tokens per day, requests in progress, [`crate::auth::limits::KeyLimiter`]).
//!
//! A limit is a [`Window`]: at most `limit` units within ANY `span`, which is how a provider's
//! "per minute" is safest read (unlike a fixed window, no pair of adjacent windows lets twice the
//! limit through). A call reserves units in several windows of one scope at once, at the
//! earliest time all allow; a call that cannot go now either waits for that time (the quota) or
//! is refused with it as the hint (a deadline that has already come).
//!
//! Where it is decided:
//! - Without Redis, in this process ([`SlidingWindow`]).
//! - With Redis, by one script for the whole cluster ([`redis`]), every server drawing from the
//!   same windows. When Redis fails, this server must not count only itself: it decides locally,
//!   each of its calls counting `redis.replicas` times against what is known to be in the window,
//!   so the servers doing the same together stay within the limit (the one fallback).
//! - A limiter that *remembers* (the quota, whose overshoot costs 429s upstream) knows more of
//!   the window when Redis fails: its own calls and the others' as last seen in Redis (each
//!   expiring no earlier than the real one). When Redis is back it first writes its own calls
//!   back (an empty Redis has forgotten them), and keeps bounding Redis' answers by its local
//!   windows until every replica has done so or a whole window passed. A limiter that does not
//!   remember (per-key budgets: many scopes, day-long windows) trusts Redis again at once.

mod budget;
mod local;
mod redis;
mod scope;
mod settle;
mod trust;

pub use local::SlidingWindow;
pub use redis::{Seen, WindowOps};

use crate::redis_link::RedisLink;
use budget::Scopes;
use parking_lot::Mutex;
use redis::{Ask, Outcome, RedisWindows};
use scope::{recorded, OwnCall, Scope};
use std::borrow::Cow;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

/// How often the other servers' entries are fetched from Redis, to be counted if it goes away.
const SNAPSHOT_EVERY_MS: u64 = 1_000;
/// A server that reserved in Redis this recently counts as present and synced.
const FRESH_MS: u64 = 5_000;
/// Reservation attempts when Redis asks for a re-publish first (it restarted mid-request).
const RESERVE_ATTEMPTS: usize = 3;
/// Past this many scopes kept in memory, the idle ones are dropped.
const MAX_SCOPES: usize = 10_000;

/// One limit: at most `limit` units within any `span_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Its name in its scope: the last part of its Redis key.
    pub name: Cow<'static, str>,
    /// Units allowed within any span (at least 1).
    pub limit: u64,
    /// The span, in ms.
    pub span_ms: u64,
    /// Units that must fit for a call to go.
    pub fit: u64,
    /// Units a granted call records.
    pub record: u64,
}

impl Window {
    /// A window in which each call counts `units`, recorded when it is granted.
    pub fn counting(
        name: impl Into<Cow<'static, str>>,
        limit: u64,
        span_ms: u64,
        units: u64,
    ) -> Window {
        let limit = limit.max(1);
        let units = units.min(limit);
        Window {
            name: name.into(),
            limit,
            span_ms,
            fit: units,
            record: units,
        }
    }

    /// A window charged once a call is done (its cost is known only then, see
    /// [`WindowLimiter::settle`]): a call goes while a unit is left.
    pub fn charged(name: impl Into<Cow<'static, str>>, limit: u64, span_ms: u64) -> Window {
        Window {
            name: name.into(),
            limit: limit.max(1),
            span_ms,
            fit: 1,
            record: 0,
        }
    }
}

/// How a limiter falls back.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Remembers its calls and the others' (see the module documentation).
    pub remember: bool,
    /// Reports the quota's metrics (`learning_chat_quota_*`) and logs its mode changes.
    pub quota_metrics: bool,
}

/// Where and when a granted call was recorded, for [`WindowLimiter::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Local ms its units count from.
    at_ms: u64,
    local: bool,
}

impl Ticket {
    /// True when decided in this process (Redis down or not configured).
    pub fn local(&self) -> bool {
        self.local
    }
}

/// A granted call.
#[derive(Debug, Clone)]
pub struct Granted {
    /// For [`WindowLimiter::settle`].
    pub ticket: Ticket,
    /// When the call may go (now, or the reserved time to wait for).
    pub at: Instant,
    /// What each window held, this call included.
    pub windows: Vec<Seen>,
}

/// A refused call: nothing was recorded.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The first window (index into the call's) with no room in time.
    pub window: usize,
    /// Until the call would fit every window.
    pub wait: Duration,
    /// True when decided in this process.
    pub local: bool,
    /// What each window held.
    pub windows: Vec<Seen>,
}

/// A change to a granted call's entries once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Charges `units` to a window made by [`Window::charged`], counted from now.
    Charge {
        /// Index into the call's windows.
        window: usize,
        /// The units.
        units: u64,
    },
    /// Takes back what the grant recorded in a window (a request in progress has ended).
    Release {
        /// Index into the call's windows.
        window: usize,
    },
}

#[derive(Debug)]
struct Cluster {
    redis: RedisWindows,
    replicas: u64,
    /// One re-publish at a time.
    republishing: tokio::sync::Mutex<()>,
}

/// The limiter: windows per scope, in Redis when configured.
#[derive(Debug)]
pub struct WindowLimiter {
    cluster: Option<Cluster>,
    options: Options,
    origin: Instant,
    scopes: Mutex<Scopes>,
    /// Most bytes the local windows may hold (`None`: unbounded; see [`budget`]).
    max_bytes: Option<usize>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WindowLimiter {
    /// A limiter deciding in this process alone, on the whole limits.
    pub fn local(options: Options) -> WindowLimiter {
        WindowLimiter {
            cluster: None,
            options,
            origin: Instant::now(),
            scopes: Mutex::new(Scopes::default()),
            max_bytes: None,
        }
    }

    /// This limiter with its local windows bounded to `max_bytes` (see [`budget`]).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> WindowLimiter {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// True while `scope` holds calls decided in process that Redis has not been given yet:
    /// they are written back at its next reservation, so one must be made.
    pub fn has_unpublished(&self, scope: &str) -> bool {
        self.scopes.lock().get(scope).is_some_and(|s| s.unpublished)
    }

    /// How many calls of `windows` fit in `scope` at `at`, on what this process decides, or,
    /// while Redis decides, on what a remembering limiter last knew of Redis' first window
    /// (`None` when it knows nothing). Reservations are made in order, so the calls queued
    /// before one take that many of these slots first.
    pub fn local_room(&self, scope_name: &str, windows: &[Window], at: Instant) -> Option<u64> {
        let now = self.now_ms();
        let at = self.deadline_ms(at);
        let mut scopes = self.scopes.lock();
        let room = match scopes.get_mut(scope_name) {
            Some(scope) if scope.local.is_some() => scope.local_room(windows, at, now),
            // Redis decides: a limiter that remembers knows its first window well enough.
            Some(scope) if self.options.remember => {
                let fit = windows.first().map_or(1, |w| w.fit.max(1));
                scope
                    .remembered_window(windows)
                    .map(|mut w| w.room_at(at.max(now), now) / fit)
            }
            Some(_) => None,
            // Nothing reserved yet: alone, every window is empty.
            None if self.cluster.is_none() => Some(u64::MAX),
            None => None,
        };
        scopes.account(scope_name);
        room
    }

    /// The earliest time `windows` fit in `scope` on what this process decides (or, while
    /// Redis decides, last knew of its first window), without reserving (`None` when unknown).
    pub fn local_earliest(&self, scope_name: &str, windows: &[Window]) -> Option<Instant> {
        let now = self.now_ms();
        let mut scopes = self.scopes.lock();
        let at = match scopes.get_mut(scope_name) {
            Some(scope) if scope.local.is_some() => Some(scope.local_earliest(windows, now).0),
            Some(scope) if self.options.remember => {
                let fit = windows.first().map_or(1, |w| w.fit);
                scope
                    .remembered_window(windows)
                    .map(|mut w| w.earliest(fit, now))
            }
            None if self.cluster.is_none() => Some(now),
            _ => None,
        };
        scopes.account(scope_name);
        at.map(|at| self.instant(at))
    }

    /// Bytes its local windows hold now.
    pub fn local_bytes(&self) -> usize {
        self.scopes.lock().bytes()
    }

    /// A limiter in Redis under `{prefix}:{kind}:{<scope>}:*` for `replicas` servers.
    pub fn clustered(
        link: RedisLink,
        kind: &'static str,
        ops: WindowOps,
        replicas: NonZeroU32,
        options: Options,
    ) -> WindowLimiter {
        WindowLimiter {
            cluster: Some(Cluster {
                redis: RedisWindows::new(link, kind, ops),
                replicas: u64::from(replicas.get()),
                republishing: tokio::sync::Mutex::new(()),
            }),
            ..WindowLimiter::local(options)
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    /// Local ms of `deadline` (0 for one before the limiter existed).
    fn deadline_ms(&self, deadline: Instant) -> u64 {
        millis(deadline.saturating_duration_since(self.origin))
    }

    fn instant(&self, at_ms: u64) -> Instant {
        self.origin + Duration::from_millis(at_ms)
    }

    /// Reserves `windows` in `scope` for the call `member` (unique per call). A slot free now
    /// is always granted; a later one only when it is no later than `deadline`.
    pub async fn reserve(
        &self,
        scope: &str,
        member: &str,
        windows: &[Window],
        deadline: Instant,
    ) -> Result<Granted, Refused> {
        self.reserve_from(scope, member, windows, Duration::ZERO, deadline)
            .await
    }

    /// [`WindowLimiter::reserve`], counting the call from `not_before` from now at the
    /// earliest: units spent over a stretch of time (a block of requests leased at once) are
    /// counted from its end, so no window of the real requests sees more than the limit.
    pub async fn reserve_from(
        &self,
        scope: &str,
        member: &str,
        windows: &[Window],
        not_before: Duration,
        deadline: Instant,
    ) -> Result<Granted, Refused> {
        match &self.cluster {
            Some(cluster) => {
                self.reserve_in_cluster(cluster, scope, member, windows, not_before, deadline)
                    .await
            }
            None => self.reserve_locally(scope, member, windows, not_before, deadline),
        }
    }

    /// Reserves through Redis, bounded by the local windows while a remembering limiter does
    /// not trust Redis yet; decides locally when Redis fails.
    async fn reserve_in_cluster(
        &self,
        cluster: &Cluster,
        scope_name: &str,
        member: &str,
        windows: &[Window],
        not_before: Duration,
        deadline: Instant,
    ) -> Result<Granted, Refused> {
        let remember = self.options.remember;
        for _ in 0..RESERVE_ATTEMPTS {
            if remember {
                let unpublished = self
                    .scopes
                    .lock()
                    .get(scope_name)
                    .is_some_and(|s| s.unpublished);
                if unpublished && self.republish(cluster, scope_name, windows).await.is_err() {
                    return self.reserve_locally(scope_name, member, windows, not_before, deadline);
                }
            }
            let now = self.now_ms();
            // While the local windows bound Redis' answers, the call's slot is held in them (and
            // Redis asked for no earlier) so the two agree on when the call goes.
            let (held, snapshot, fresh) = if remember {
                let mut scopes = self.scopes.lock();
                let scope = scopes.entry(scope_name.to_owned()).or_default();
                let snapshot = scope
                    .snapshot_at
                    .is_none_or(|at| now >= at + SNAPSHOT_EVERY_MS);
                let held = match scope.local {
                    Some(_) => {
                        let (at, each) = scope.local_earliest(windows, now);
                        let deadline_ms = self.deadline_ms(deadline);
                        if at > now && at > deadline_ms {
                            return Err(refused_locally(
                                scope,
                                windows,
                                &each,
                                at,
                                now,
                                deadline_ms,
                            ));
                        }
                        scope.local_record(windows, at, now, true);
                        Some(at)
                    }
                    None => None,
                };
                let fresh = scope.local.as_ref().map(|l| {
                    l.back_at
                        .map_or(FRESH_MS, |back| now.saturating_sub(back).min(FRESH_MS))
                });
                (held, snapshot, fresh)
            } else {
                (None, false, None)
            };
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let ask = Ask {
                member,
                max_wait,
                not_before: Duration::from_millis(held.map_or(0, |at| at.saturating_sub(now)))
                    .max(not_before),
                sync: remember,
                snapshot,
                // At least 1 ms, so this server's own reservation counts and the count comes back.
                fresh: fresh.map_or(Duration::ZERO, |ms| Duration::from_millis(ms.max(1))),
            };
            let reply = cluster.redis.reserve(scope_name, windows, ask).await;
            let now = self.now_ms();
            let mut scopes = self.scopes.lock();
            let release_held = |scope: &mut Scope| {
                if let Some(at) = held {
                    scope.local_record(windows, at, now, false);
                }
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(_) => {
                    if let Some(scope) = scopes.get_mut(scope_name) {
                        release_held(scope);
                    }
                    drop(scopes);
                    return self.reserve_locally(scope_name, member, windows, not_before, deadline);
                }
            };
            if !remember {
                // Redis answers: it decides again at once (nothing to write back).
                scopes.drop_scope(scope_name);
            }
            match reply.outcome {
                Outcome::Granted => {
                    let at = (now + millis(reply.wait)).max(held.unwrap_or(0));
                    if let Some(scope) = scopes.get_mut(scope_name).filter(|_| remember) {
                        scope.own.push_back(OwnCall {
                            at,
                            member: member.to_owned(),
                            units: recorded(windows),
                        });
                        let first = reply.windows.first().map_or(0, |w| w.held);
                        scope.learn_others(windows, first, reply.others.as_deref(), now);
                        if scope.local.is_some() {
                            match held {
                                Some(held_at) if held_at == at => {}
                                Some(held_at) => {
                                    scope.local_record(windows, held_at, now, false);
                                    scope.local_record(windows, at, now, true);
                                }
                                // The mode began while this call was in flight: the others
                                // may not know it, so it counts like a call made since.
                                None => scope.local_record(windows, at, now, true),
                            }
                        }
                        self.maybe_trust_redis(cluster, scope, reply.fresh_servers, now);
                    }
                    return Ok(Granted {
                        ticket: Ticket {
                            at_ms: at,
                            local: false,
                        },
                        at: self.instant(at),
                        windows: reply.windows,
                    });
                }
                Outcome::Refused => {
                    if let Some(scope) = scopes.get_mut(scope_name) {
                        release_held(scope);
                    }
                    let window = reply
                        .windows
                        .iter()
                        .position(|w| w.wait > max_wait)
                        .unwrap_or(0);
                    return Err(Refused {
                        window,
                        wait: reply.wait,
                        local: false,
                        windows: reply.windows,
                    });
                }
                Outcome::Unsynced => {
                    // Redis lost this server's calls (it restarted empty): the others may not
                    // have written theirs back yet either, so count conservatively. (A server
                    // just started has lost nothing and trusts Redis at once.)
                    let scope = scopes.entry(scope_name.to_owned()).or_default();
                    release_held(scope);
                    if scope.ever_synced && scope.enter_local(cluster.replicas) {
                        self.entered_local(scope);
                    }
                    scope.unpublished = true;
                }
            }
        }
        self.reserve_locally(scope_name, member, windows, not_before, deadline)
    }

    /// Decides in this process: alone (no Redis) on the whole limits, or clustered (Redis
    /// unavailable) on this server's share of what is known to be left.
    fn reserve_locally(
        &self,
        scope_name: &str,
        member: &str,
        windows: &[Window],
        not_before: Duration,
        deadline: Instant,
    ) -> Result<Granted, Refused> {
        let now = self.now_ms();
        let deadline_ms = self.deadline_ms(deadline);
        let mut scopes = self.scopes.lock();
        if !self.options.remember && scopes.len() > MAX_SCOPES {
            scopes.drop_idle(now);
        }
        let decided = self.decide_locally(
            scopes.entry(scope_name.to_owned()).or_default(),
            member,
            windows,
            now,
            now.saturating_add(millis(not_before)),
            deadline_ms,
        );
        scopes.account(scope_name);
        self.keep_within_budget(&mut scopes, now);
        decided
    }

    /// Decides one call in `scope`'s local windows.
    fn decide_locally(
        &self,
        scope: &mut Scope,
        member: &str,
        windows: &[Window],
        now: u64,
        not_before: u64,
        deadline_ms: u64,
    ) -> Result<Granted, Refused> {
        let weight = self.cluster.as_ref().map_or(1, |c| c.replicas);
        if scope.enter_local(weight) && self.cluster.is_some() {
            self.entered_local(scope);
        }
        let (at, each) = scope.local_earliest(windows, now);
        let at = at.max(not_before);
        // Only a wait can make a call too late; refusing a free slot would turn an idle limit
        // into refusals whenever calls run long.
        if at > now && at > deadline_ms {
            return Err(refused_locally(scope, windows, &each, at, now, deadline_ms));
        }
        scope.local_record(windows, at, now, true);
        if self.cluster.is_some() {
            if self.options.remember {
                scope.own.push_back(OwnCall {
                    at,
                    member: member.to_owned(),
                    units: recorded(windows),
                });
                scope.unpublished = true;
            }
            if self.options.quota_metrics {
                crate::admission::metrics::quota_local_decision();
            }
        }
        Ok(Granted {
            ticket: Ticket {
                at_ms: at,
                local: true,
            },
            at: self.instant(at),
            windows: local_seen(scope, windows, &each, now),
        })
    }
}

/// What the local windows hold, and when each would have room.
fn local_seen(scope: &mut Scope, windows: &[Window], each: &[u64], now: u64) -> Vec<Seen> {
    windows
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let window = scope.local_window(i, spec, now);
            let (held, reset) = window.map_or((0, 0), |w| {
                let held = w.total(now);
                (held, w.next_expiry().map_or(0, |e| e.saturating_sub(now)))
            });
            Seen {
                held,
                wait: Duration::from_millis(each.get(i).map_or(0, |e| e.saturating_sub(now))),
                reset: Duration::from_millis(reset),
            }
        })
        .collect()
}

fn refused_locally(
    scope: &mut Scope,
    windows: &[Window],
    each: &[u64],
    at: u64,
    now: u64,
    deadline_ms: u64,
) -> Refused {
    Refused {
        window: each
            .iter()
            .position(|&e| e > now && e > deadline_ms)
            .unwrap_or(0),
        wait: Duration::from_millis(at - now),
        local: true,
        windows: local_seen(scope, windows, each, now),
    }
}

#[cfg(test)]
mod tests;
