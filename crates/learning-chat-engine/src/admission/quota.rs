//! The model-call quota (requests and input tokens per minute), enforced before a call is sent so
//! the provider never has to answer 429.

use super::redis_quota::{OwnCall, RedisQuota, Reservation, ReserveReply, ReserveRequest};
use super::SlidingWindow;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

/// The quota window: one minute, as providers count.
const MINUTE_MS: u64 = 60_000;
/// How often the other servers' entries are fetched from Redis, to be counted if it goes away.
const SNAPSHOT_EVERY_MS: u64 = 1_000;
/// A server that reserved in Redis this recently counts as present and synced.
const FRESH_MS: u64 = 5_000;
/// Reservation attempts when Redis asks for a re-publish first (it restarted mid-request).
const RESERVE_ATTEMPTS: usize = 3;

/// No slot before the deadline; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRejection {
    /// When a slot would be free.
    pub retry_after: Duration,
}

/// Enforces `rpm` and `input_tpm`: across the cluster through Redis when configured, otherwise
/// (or while Redis is down) in this process.
#[derive(Debug)]
pub struct QuotaLimiter {
    rpm: u32,
    input_tpm: u64,
    window_ms: u64,
    origin: Instant,
    windows: Mutex<Windows>,
    cluster: Option<Cluster>,
}

#[derive(Debug)]
struct Windows {
    requests: Option<SlidingWindow>,
    tokens: Option<SlidingWindow>,
}

/// The cluster quota and what this server remembers of it for when Redis fails.
///
/// While Redis answers it decides. When it fails, this server must not count only itself: it
/// enters a conservative mode whose window holds every call known to have been made in the last
/// minute (its own, and the others' as last seen in Redis, each expiring no earlier than the
/// real one) with weight 1, and each call it makes from then on with weight `replicas`. Every
/// server doing the same keeps the sum within the quota: in any window, known calls plus
/// `replicas` shares of what they left. When Redis is back, the server first writes its own calls
/// of the window back (an empty Redis has forgotten them), and it stays conservative, its local
/// window bounding Redis' answers too, until every replica has done so or a whole window passed.
#[derive(Debug)]
struct Cluster {
    redis: RedisQuota,
    replicas: u64,
    state: Mutex<ClusterState>,
    /// One re-publish at a time.
    republishing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct ClusterState {
    /// This server's calls of the last window (reservations included), oldest first.
    own: VecDeque<OwnEntry>,
    /// The other servers' calls as last seen in Redis: (local ms no earlier than the call, count).
    others: Vec<(u64, u64)>,
    /// When `others` was last fetched whole.
    snapshot_at: Option<u64>,
    /// Set while Redis trouble makes this server count conservatively.
    conservative: Option<Conservative>,
    /// Own calls decided without Redis, or lost by Redis, are still to be written back.
    unpublished: bool,
    /// This server has written its calls into Redis at least once.
    ever_synced: bool,
}

#[derive(Debug, Clone)]
struct OwnEntry {
    at: u64,
    member: String,
    tokens: u64,
}

#[derive(Debug)]
struct Conservative {
    /// Known calls with weight 1, calls since the trouble with weight `replicas`.
    window: SlidingWindow,
    /// Once back in Redis: trust Redis alone from this time even if a replica never showed up.
    until: Option<u64>,
    /// When this server last wrote its calls back. Only servers that reserved since count as
    /// back: after a Sentinel failover the promoted replica still holds the others' reservations
    /// from just before the outage, which would otherwise pass for a return.
    back_at: Option<u64>,
}

impl ClusterState {
    fn prune(&mut self, now: u64, window_ms: u64) {
        while self.own.front().is_some_and(|e| e.at + window_ms <= now) {
            self.own.pop_front();
        }
        self.others.retain(|&(at, _)| at + window_ms > now);
    }

    /// Enters the conservative mode (if not in it yet) from everything known of the window.
    fn enter_conservative(&mut self, rpm: u64, now: u64, window_ms: u64) -> &mut Conservative {
        if self.conservative.is_none() {
            self.prune(now, window_ms);
            let mut window = SlidingWindow::new(rpm, window_ms);
            for &(at, count) in &self.others {
                window.record(count, at);
            }
            for entry in &self.own {
                window.record(1, entry.at);
            }
            let others: u64 = self.others.iter().map(|&(_, count)| count).sum();
            crate::metrics::quota_conservative(true);
            tracing::info!(
                own_calls = self.own.len(),
                other_calls = others,
                "quota: counting conservatively until Redis is back and trusted"
            );
            self.conservative = Some(Conservative {
                window,
                until: None,
                back_at: None,
            });
        }
        self.conservative.get_or_insert_with(|| Conservative {
            window: SlidingWindow::new(rpm, window_ms),
            until: None,
            back_at: None,
        })
    }

    /// Takes in what a granted reservation showed of the others' calls.
    fn learn_others(&mut self, reply: &ReserveReply, now: u64, window_ms: u64) {
        if let Some(others) = &reply.others {
            self.others = others
                .iter()
                .map(|&(rel, count)| ((now as i64 + rel).max(0) as u64, count))
                .collect();
            self.snapshot_at = Some(now);
        }
        self.prune(now, window_ms);
        // Calls the others made since the last snapshot: counted as made now (the latest
        // they can have been made), so they expire no earlier than the real ones.
        let others_now = reply.requests.saturating_sub(self.own.len() as u64);
        let known: u64 = self.others.iter().map(|&(_, count)| count).sum();
        if others_now > known {
            self.others.push((now, others_now - known));
        }
    }
}

impl QuotaLimiter {
    /// A limiter for `rpm` requests and `input_tpm` input tokens per minute (0 = unlimited),
    /// counting each minute `margin` longer than 60 s.
    pub fn new(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        crate::metrics::quota_rpm(rpm);
        Self::with_local_share(rpm, input_tpm, margin, NonZeroU32::MIN, None)
    }

    /// A limiter for one API key and model (issue 16): like [`QuotaLimiter::new`], without
    /// reporting itself as the service's quota.
    pub fn scoped(rpm: u32, input_tpm: u64, margin: Duration) -> QuotaLimiter {
        Self::with_local_share(rpm, input_tpm, margin, NonZeroU32::MIN, None)
    }

    /// A cluster-wide limiter for one API key and model: its own Redis keys under `scope`.
    pub fn clustered_scoped(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: NonZeroU32,
        link: crate::redis_link::RedisLink,
        scope: &str,
    ) -> QuotaLimiter {
        let window = Duration::from_millis(MINUTE_MS) + margin;
        let cluster = RedisQuota::scoped(link, rpm, input_tpm, window, scope);
        Self::with_local_share(rpm, input_tpm, margin, replicas, Some(cluster))
    }

    /// A cluster-wide limiter in Redis for `replicas` servers. While Redis is down, or back but
    /// not yet trusted, each server takes a `1 / replicas` share of what the cluster had left.
    pub fn clustered(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: NonZeroU32,
        link: crate::redis_link::RedisLink,
    ) -> QuotaLimiter {
        let window = Duration::from_millis(MINUTE_MS) + margin;
        let cluster = RedisQuota::new(link, rpm, input_tpm, window);
        crate::metrics::quota_rpm(rpm);
        Self::with_local_share(rpm, input_tpm, margin, replicas, Some(cluster))
    }

    fn with_local_share(
        rpm: u32,
        input_tpm: u64,
        margin: Duration,
        replicas: NonZeroU32,
        cluster: Option<RedisQuota>,
    ) -> QuotaLimiter {
        let window_ms = MINUTE_MS + margin.as_millis() as u64;
        let replicas = u64::from(replicas.get());
        // Clustered, requests are counted by the conservative window instead (see `Cluster`).
        let local_rpm = (rpm > 0 && cluster.is_none()).then_some(u64::from(rpm));
        // A share rounds down but never to zero, or a small quota would stop every server.
        let local_tpm = (input_tpm > 0).then(|| (input_tpm / replicas).max(1));
        if cluster.is_some() {
            crate::metrics::quota_conservative(false);
        }
        QuotaLimiter {
            rpm,
            input_tpm,
            window_ms,
            origin: Instant::now(),
            windows: Mutex::new(Windows {
                requests: local_rpm.map(|limit| SlidingWindow::new(limit, window_ms)),
                tokens: local_tpm.map(|limit| SlidingWindow::new(limit, window_ms)),
            }),
            cluster: cluster.map(|redis| Cluster {
                redis,
                replicas,
                state: Mutex::new(ClusterState::default()),
                republishing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The configured requests per minute (0 = unlimited).
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Local ms of `deadline` (saturating at 0 for a past one).
    fn deadline_ms(&self, deadline: Instant) -> u64 {
        deadline.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Reserves a slot for one request of `input_tokens` and waits for it. A slot free now is
    /// always granted; a slot in the future is refused at once when it lies beyond `deadline`
    /// (for a model call: the request's deadline less the time the call needs).
    pub async fn acquire(
        &self,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<(), QuotaRejection> {
        if self.rpm == 0 && self.input_tpm == 0 {
            return Ok(());
        }
        let at = match &self.cluster {
            Some(cluster) => {
                self.reserve_in_cluster(cluster, input_tokens, deadline)
                    .await?
            }
            None => self.reserve_locally(None, input_tokens, deadline)?,
        };
        let now = self.now_ms();
        if at > now {
            crate::metrics::quota_wait(Duration::from_millis(at - now));
            tokio::time::sleep_until(self.origin + Duration::from_millis(at)).await;
        }
        Ok(())
    }

    /// Reserves through Redis, bounded by the conservative window while in that mode; falls
    /// back to [`QuotaLimiter::reserve_locally`] when Redis fails. Returns the local ms to go at.
    async fn reserve_in_cluster(
        &self,
        cluster: &Cluster,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<u64, QuotaRejection> {
        let rpm = u64::from(self.rpm);
        let weight = cluster.replicas;
        for _ in 0..RESERVE_ATTEMPTS {
            let unpublished = cluster.state.lock().unpublished;
            if unpublished && self.republish(cluster).await.is_err() {
                return self.reserve_locally(Some(cluster), input_tokens, deadline);
            }
            let now = self.now_ms();
            // In the conservative mode the local window must allow the call too; its slot is
            // held (and Redis asked for no earlier) so the two agree on when the call goes.
            let (held, snapshot, conservative) = {
                let mut state = cluster.state.lock();
                let snapshot = rpm > 0
                    && state
                        .snapshot_at
                        .is_none_or(|at| now >= at + SNAPSHOT_EVERY_MS);
                let held = match state.conservative.as_mut().filter(|_| rpm > 0) {
                    Some(conservative) => {
                        let at = conservative.window.earliest(weight, now);
                        if at > now && at > self.deadline_ms(deadline) {
                            return Err(QuotaRejection {
                                retry_after: Duration::from_millis(at - now),
                            });
                        }
                        conservative.window.record(weight, at);
                        Some(at)
                    }
                    None => None,
                };
                let fresh = state.conservative.as_ref().map(|c| {
                    c.back_at
                        .map_or(FRESH_MS, |back| now.saturating_sub(back).min(FRESH_MS))
                });
                (held, snapshot, fresh)
            };
            let request = ReserveRequest {
                member: cluster.redis.new_member(),
                input_tokens,
                max_wait: deadline.saturating_duration_since(Instant::now()),
                not_before: Duration::from_millis(held.map_or(0, |at| at.saturating_sub(now))),
                snapshot,
                // At least 1 ms, so this server's own reservation counts and the count comes back.
                fresh: conservative.map_or(Duration::ZERO, |ms| Duration::from_millis(ms.max(1))),
            };
            let member = request.member.clone();
            let reply = cluster.redis.reserve(request).await;
            let now = self.now_ms();
            let mut state = cluster.state.lock();
            let release_held = |state: &mut ClusterState| {
                if let (Some(at), Some(c)) = (held, state.conservative.as_mut()) {
                    c.window.remove(weight, at);
                }
            };
            match reply {
                Ok(reply) => match reply.reservation {
                    Reservation::Granted(wait) => {
                        // Counted from after the answer: no earlier than Redis' own time.
                        let at = (now + wait.as_millis() as u64).max(held.unwrap_or(0));
                        state.own.push_back(OwnEntry {
                            at,
                            member,
                            tokens: u64::from(input_tokens).min(self.input_tpm),
                        });
                        state.learn_others(&reply, now, self.window_ms);
                        if let Some(c) = state.conservative.as_mut().filter(|_| rpm > 0) {
                            match held {
                                Some(held_at) if held_at == at => {}
                                Some(held_at) => {
                                    c.window.remove(weight, held_at);
                                    c.window.record(weight, at);
                                }
                                // The mode began while this call was in flight: the others
                                // may not know it, so it counts like a call made since.
                                None => c.window.record(weight, at),
                            }
                        }
                        self.maybe_trust_redis(cluster, &mut state, &reply, now);
                        return Ok(at);
                    }
                    Reservation::Refused(retry_after) => {
                        release_held(&mut state);
                        return Err(QuotaRejection { retry_after });
                    }
                    Reservation::Unsynced => {
                        // Redis lost this server's calls (it restarted empty): the others may
                        // not have written theirs back yet either, so count conservatively.
                        // (A server just started has lost nothing and trusts Redis at once.)
                        release_held(&mut state);
                        if state.ever_synced && rpm > 0 {
                            state.enter_conservative(rpm, now, self.window_ms);
                        }
                        state.unpublished = true;
                    }
                },
                Err(_) => {
                    release_held(&mut state);
                    drop(state);
                    return self.reserve_locally(Some(cluster), input_tokens, deadline);
                }
            }
        }
        self.reserve_locally(Some(cluster), input_tokens, deadline)
    }

    /// Leaves the conservative mode once Redis is trustworthy again: every replica has written
    /// its calls back and reserved recently, or a whole window passed since this server did.
    fn maybe_trust_redis(
        &self,
        cluster: &Cluster,
        state: &mut ClusterState,
        reply: &ReserveReply,
        now: u64,
    ) {
        let Some(conservative) = &state.conservative else {
            return;
        };
        if state.unpublished {
            return;
        }
        let everyone_back = reply.fresh_servers >= cluster.replicas;
        let window_passed = conservative.until.is_some_and(|until| now >= until);
        if everyone_back || window_passed {
            state.conservative = None;
            crate::metrics::quota_conservative(false);
            tracing::info!(
                everyone_back,
                "quota: Redis trusted again for the cluster quota"
            );
        }
    }

    /// Writes this server's calls of the window back into Redis.
    async fn republish(
        &self,
        cluster: &Cluster,
    ) -> Result<(), crate::redis_link::RedisUnavailable> {
        let _one_at_a_time = cluster.republishing.lock().await;
        let calls = {
            let mut state = cluster.state.lock();
            if !state.unpublished {
                return Ok(());
            }
            state.unpublished = false;
            let now = self.now_ms();
            state.prune(now, self.window_ms);
            state
                .own
                .iter()
                .map(|e| OwnCall {
                    age_ms: now as i64 - e.at as i64,
                    member: e.member.clone(),
                    tokens: e.tokens,
                })
                .collect::<Vec<_>>()
        };
        match cluster.redis.republish(calls).await {
            Ok(added) => {
                crate::metrics::quota_republished(added);
                let now = self.now_ms();
                let mut state = cluster.state.lock();
                state.ever_synced = true;
                if let Some(conservative) = state.conservative.as_mut() {
                    conservative.until.get_or_insert(now + self.window_ms);
                    conservative.back_at = Some(now);
                }
                Ok(())
            }
            Err(e) => {
                cluster.state.lock().unpublished = true;
                Err(e)
            }
        }
    }

    /// Decides in this process: alone (no Redis) on the whole quota, or clustered (Redis
    /// unavailable) in the conservative window. Returns the local ms to go at.
    fn reserve_locally(
        &self,
        cluster: Option<&Cluster>,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<u64, QuotaRejection> {
        let now = self.now_ms();
        let deadline_ms = self.deadline_ms(deadline);
        let mut windows = self.windows.lock();
        let Windows { requests, tokens } = &mut *windows;
        let mut state = cluster.map(|c| c.state.lock());
        let rpm = u64::from(self.rpm);
        let weight = cluster.map_or(1, |c| c.replicas);
        let mut at = now;
        if let Some(w) = requests.as_mut() {
            at = at.max(w.earliest(1, now));
        }
        if let Some(state) = state.as_mut().filter(|_| rpm > 0) {
            let conservative = state.enter_conservative(rpm, now, self.window_ms);
            at = at.max(conservative.window.earliest(weight, now));
        }
        if let Some(w) = tokens.as_mut() {
            at = at.max(w.earliest(input_tokens.into(), now));
        }
        // Only a wait can make the call too late; refusing a free slot would turn an idle
        // quota into 503s whenever calls run long.
        if at > now && at > deadline_ms {
            return Err(QuotaRejection {
                retry_after: Duration::from_millis(at - now),
            });
        }
        if let Some(w) = requests.as_mut() {
            w.record(1, at);
        }
        if let Some(w) = tokens.as_mut() {
            w.record(input_tokens.into(), at);
        }
        if let (Some(state), Some(cluster)) = (state.as_mut(), cluster) {
            if let Some(conservative) = state.conservative.as_mut() {
                conservative.window.record(weight, at);
            }
            state.own.push_back(OwnEntry {
                at,
                member: cluster.redis.new_member(),
                tokens: u64::from(input_tokens).min(self.input_tpm),
            });
            state.unpublished = true;
            crate::metrics::quota_local_decision();
        }
        Ok(at)
    }

    /// Requests counted in the current window: cluster-wide when Redis answers, else this
    /// server's (the quota-usage gauge's numerator).
    pub async fn requests_in_window(&self) -> u64 {
        if let Some(cluster) = &self.cluster {
            if let Ok(used) = cluster.redis.used().await {
                return used;
            }
        }
        self.local_requests_in_window()
    }

    /// Requests counted in this server's own window.
    pub fn local_requests_in_window(&self) -> u64 {
        let now = self.now_ms();
        if let Some(cluster) = &self.cluster {
            let mut state = cluster.state.lock();
            state.prune(now, self.window_ms);
            return state.own.iter().filter(|e| e.at <= now).count() as u64;
        }
        self.windows
            .lock()
            .requests
            .as_mut()
            .map_or(0, |w| w.used(now))
    }

    /// The window length, margin included.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn over_quota_requests_wait_for_their_slot_or_are_refused() {
        let quota = QuotaLimiter::new(2, 0, Duration::ZERO);
        let far = Instant::now() + Duration::from_secs(300);
        quota.acquire(10, far).await.unwrap();
        quota.acquire(10, far).await.unwrap();
        let start = Instant::now();
        quota.acquire(10, far).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // The third took the first free slot at 60 s; one more fits now, the next only at 120 s.
        let near = Instant::now() + Duration::from_secs(5);
        quota.acquire(10, near).await.unwrap();
        let refused = quota.acquire(10, near).await.unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(5), "{refused:?}");
    }

    #[test]
    fn while_redis_is_away_a_server_takes_its_share_of_what_the_cluster_left() {
        // 12 RPM over 3 servers; 6 calls known in the window (2 own, 4 of the others).
        let mut state = ClusterState {
            others: vec![(0, 4)],
            ..ClusterState::default()
        };
        for i in 0..2 {
            state.own.push_back(OwnEntry {
                at: 0,
                member: format!("m{i}"),
                tokens: 0,
            });
        }
        let conservative = state.enter_conservative(12, 1_000, 60_000);
        let granted: Vec<u64> = (0..6)
            .map(|_| {
                let at = conservative.window.earliest(3, 1_000);
                conservative.window.record(3, at);
                at
            })
            .collect();
        // A third of the 6 left now; the rest only when the known calls leave the window.
        assert_eq!(granted[..2], [1_000, 1_000]);
        assert!(granted[2..].iter().all(|&at| at >= 60_000), "{granted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let quota = QuotaLimiter::new(0, 0, Duration::ZERO);
        let deadline = Instant::now();
        for _ in 0..1000 {
            quota.acquire(1_000_000, deadline).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_is_granted_even_when_the_latest_start_has_passed() {
        let quota = QuotaLimiter::new(2, 0, Duration::ZERO);
        // A caller whose calls run long asks with a latest start already behind it.
        let passed = Instant::now() - Duration::from_secs(1);
        quota.acquire(10, passed).await.unwrap();
        quota.acquire(10, passed).await.unwrap();
        // The next slot is 60 s away: that one is refused, at once, with the wait as the hint.
        let refused = quota.acquire(10, passed).await.unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        // A refusal reserves nothing: once the window moves on, two slots are free again.
        tokio::time::advance(Duration::from_secs(60)).await;
        quota.acquire(10, Instant::now()).await.unwrap();
        quota.acquire(10, Instant::now()).await.unwrap();
    }
}
