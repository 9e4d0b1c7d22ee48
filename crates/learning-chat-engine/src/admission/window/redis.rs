//! The windows in Redis, shared by every server: `window_reserve.lua`, `window_record.lua` and
//! `window_used.lua`, on Redis' clock so the servers' clocks need not agree.
//!
//! A scope's keys are `{prefix}:{kind}:{<scope>}:{name}`: one sorted set per window, `totals`
//! (the units each window holds) and `synced` (the servers that have written their calls in),
//! all in the slot of the scope's hash tag, as one script touches them together.

use super::Window;
use crate::redis_link::{RedisLink, RedisUnavailable};
use crate::redis_scripts::SCRIPTS;
use std::time::Duration;

/// The names a limiter's Redis calls are measured under (`operation` of the Redis metrics).
#[derive(Debug, Clone, Copy)]
pub struct WindowOps {
    /// Reserving.
    pub reserve: &'static str,
    /// Recording after the fact, and writing calls back.
    pub record: &'static str,
    /// Reading the units counted now.
    pub used: &'static str,
}

/// How Redis answered a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Reserved: go after the wait.
    Granted,
    /// No room within the allowed wait; nothing recorded.
    Refused,
    /// Redis does not know this server's calls (it came back empty): nothing was reserved;
    /// write them back first.
    Unsynced,
}

/// What Redis showed of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// Units it holds, reservations and (when granted) this one included.
    pub held: u64,
    /// Until the units asked would fit in it alone.
    pub wait: Duration,
    /// Until its oldest entry leaves (zero when it is empty).
    pub reset: Duration,
}

/// A reservation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub outcome: Outcome,
    /// Until the reserved time (granted), or the earliest one (refused).
    pub wait: Duration,
    /// Servers seen within `fresh` that have written their calls in.
    pub fresh_servers: u64,
    /// Per window of the request.
    pub windows: Vec<Seen>,
    /// With `snapshot`: the other servers' entries of the first window as (ms from Redis' now,
    /// units), each rounded up to a whole second.
    pub others: Option<Vec<(i64, u64)>>,
}

/// What a reservation asks besides its windows.
#[derive(Debug, Clone)]
pub(super) struct Ask<'a> {
    pub member: &'a str,
    pub max_wait: Duration,
    /// Reserve no earlier than this from Redis' now.
    pub not_before: Duration,
    /// Answer `Unsynced` while Redis does not know this server's calls.
    pub sync: bool,
    /// Also return the other servers' entries of the first window.
    pub snapshot: bool,
    /// Also count the servers seen within this (zero: don't).
    pub fresh: Duration,
}

/// An entry written after the fact.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Index of its window.
    pub window: usize,
    /// How long ago it counts from (negative: still to come).
    pub age_ms: i64,
    pub member: String,
    pub units: u64,
    /// Add it (unless there), or remove it.
    pub add: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One limiter's windows in Redis.
#[derive(Debug, Clone)]
pub(super) struct RedisWindows {
    link: RedisLink,
    kind: &'static str,
    ops: WindowOps,
}

impl RedisWindows {
    pub fn new(link: RedisLink, kind: &'static str, ops: WindowOps) -> RedisWindows {
        RedisWindows { link, kind, ops }
    }

    /// This server's id; members written by it start with it and `:`.
    pub fn server_id(&self) -> &str {
        self.link.server_id()
    }

    /// The member this server writes for the call `member`.
    pub fn member(&self, member: &str) -> String {
        format!("{}:{member}", self.link.server_id())
    }

    fn keys(&self, scope: &str, windows: &[Window]) -> Vec<String> {
        let mut keys = Vec::with_capacity(windows.len() + 2);
        keys.push(self.link.grouped_key(self.kind, scope, "synced"));
        keys.push(self.link.grouped_key(self.kind, scope, "totals"));
        keys.extend(
            windows
                .iter()
                .map(|w| self.link.grouped_key(self.kind, scope, &w.name)),
        );
        keys
    }

    /// Reserves `windows` for one call.
    pub async fn reserve(
        &self,
        scope: &str,
        windows: &[Window],
        ask: Ask<'_>,
    ) -> Result<Reply, RedisUnavailable> {
        let mut invocation = SCRIPTS.window_reserve.prepare_invoke();
        for key in self.keys(scope, windows) {
            invocation.key(key);
        }
        invocation
            .arg(self.server_id())
            .arg(self.member(ask.member))
            .arg(millis(ask.max_wait))
            .arg(millis(ask.not_before))
            .arg(u8::from(ask.sync))
            .arg(u8::from(ask.snapshot))
            .arg(millis(ask.fresh));
        for w in windows {
            invocation
                .arg(w.limit)
                .arg(w.span_ms)
                .arg(w.fit)
                .arg(w.record);
        }
        let reply: Vec<i64> = self
            .link
            .run(self.ops.reserve, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let field = |i: usize| unsigned(reply.get(i).copied().unwrap_or(0));
        let outcome = match field(1) {
            0 => Outcome::Granted,
            1 => Outcome::Refused,
            _ => Outcome::Unsynced,
        };
        let seen = if outcome == Outcome::Unsynced {
            Vec::new()
        } else {
            (0..windows.len())
                .map(|i| Seen {
                    held: field(3 + 3 * i),
                    wait: Duration::from_millis(field(4 + 3 * i)),
                    reset: Duration::from_millis(field(5 + 3 * i)),
                })
                .collect()
        };
        let others = (ask.snapshot && outcome != Outcome::Unsynced).then(|| {
            reply
                .get(3 + 3 * windows.len()..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|pair| (pair[0], unsigned(pair[1])))
                .collect()
        });
        Ok(Reply {
            outcome,
            wait: Duration::from_millis(field(0)),
            fresh_servers: field(2),
            windows: seen,
            others,
        })
    }

    /// Writes `entries` (members as the caller names them); with `sync`, also records this
    /// server as having written its calls in. Returns the entries changed per window.
    pub async fn record(
        &self,
        scope: &str,
        windows: &[Window],
        entries: &[Entry],
        sync: bool,
    ) -> Result<Vec<u64>, RedisUnavailable> {
        let mut invocation = SCRIPTS.window_record.prepare_invoke();
        for key in self.keys(scope, windows) {
            invocation.key(key);
        }
        invocation.arg(if sync { self.server_id() } else { "" });
        for w in windows {
            invocation.arg(w.span_ms);
        }
        for entry in entries {
            invocation
                .arg(entry.window + 1)
                .arg(entry.age_ms)
                .arg(self.member(&entry.member))
                .arg(entry.units)
                .arg(if entry.add { "+" } else { "-" });
        }
        self.link
            .run(self.ops.record, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await
    }

    /// The units `window` counts now, cluster-wide (reservations still to come left out).
    pub async fn used(&self, scope: &str, window: &Window) -> Result<u64, RedisUnavailable> {
        let key = self.link.grouped_key(self.kind, scope, &window.name);
        let span = window.span_ms;
        self.link
            .run(self.ops.used, |mut conn| async move {
                SCRIPTS
                    .window_used
                    .key(key)
                    .arg(span)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }
}
