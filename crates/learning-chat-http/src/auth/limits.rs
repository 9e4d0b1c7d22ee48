//! Per-key (and per-learner) limits, cluster-wide: requests per minute, model tokens per day
//! and requests in progress (the key's own `concurrency`), as sliding windows of the one limiter the model-call quota uses
//! ([`WindowLimiter`]), decided by one Redis script per request so every server draws from the
//! same budgets. A window lets at most its limit through in ANY minute (or day), counted back
//! from now. While Redis is down (or not configured) the windows are kept in process; with
//! Redis configured but down each server takes a `1 / redis.replicas` share of what is left,
//! the limiter's one fallback.

use super::keys::KeyLimits;
use learning_chat_engine::admission::window::{
    Change, Options, Ticket, Window, WindowLimiter, WindowOps,
};
use learning_chat_engine::config::AdmissionSettings;
use learning_chat_engine::redis_link::RedisLink;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
/// The hint after a refusal for requests in progress: they usually end within seconds, long
/// before their lease would.
const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The names the limits' Redis calls are measured under.
const OPS: WindowOps = WindowOps {
    reserve: "key_limit",
    record: "key_limit",
    used: "key_limit",
};
/// Many keys and day-long windows: nothing is remembered to write back, and Redis is trusted
/// again as soon as it answers.
const OPTIONS: Options = Options {
    remember: false,
    quota_metrics: false,
};

/// The limit a request ran into; its error code and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The key's requests per minute.
    KeyRpm,
    /// The key's tokens per day.
    KeyTokens,
    /// The key's requests in progress.
    KeyConcurrency,
    /// The learner's requests per minute.
    LearnerRpm,
    /// The learner's tokens per day.
    LearnerTokens,
}

impl LimitKind {
    /// The error code of the 429 answer.
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::KeyRpm => "key_rate_limited",
            LimitKind::KeyTokens => "key_token_budget_exhausted",
            LimitKind::KeyConcurrency => "key_concurrency_limited",
            LimitKind::LearnerRpm => "learner_rate_limited",
            LimitKind::LearnerTokens => "learner_token_budget_exhausted",
        }
    }

    /// The message of the 429 answer.
    pub fn message(self) -> &'static str {
        match self {
            LimitKind::KeyRpm => "this API key has used its requests for this minute",
            LimitKind::KeyTokens => "this API key has used its model tokens for today",
            LimitKind::KeyConcurrency => "this API key has too many requests in progress",
            LimitKind::LearnerRpm => "this learner has used their requests for this minute",
            LimitKind::LearnerTokens => "this learner has used their model tokens for today",
        }
    }
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// `None` when granted, else the limit that refused.
    pub refused: Option<LimitKind>,
    /// Requests counted against the key's minute (this one included when granted).
    pub rpm_used: u64,
    /// Until the oldest request of the key's minute leaves it.
    pub reset: Duration,
    /// When to retry, when refused.
    pub retry_after: Duration,
    /// True when decided in process (Redis down or not configured).
    pub local: bool,
    /// Where a granted request was recorded, to be settled by [`KeyLimiter::finish`].
    ticket: Option<Ticket>,
}

/// Names the Redis state of one request.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The key id.
    pub key_id: String,
    /// The hashed learner id, when the client sent one.
    pub learner: Option<String>,
    /// A unique id of this request (its entries in the windows).
    pub member: String,
}

/// How long a block of a key's requests taken from Redis at once may be spent here. Its units
/// count from the end of that time, so the requests spent from it are never counted early.
const BLOCK_FOR: Duration = Duration::from_secs(1);
/// A server takes at most this share of a key's minute (divided among the servers) in one
/// block, so a block left unspent cannot starve the others for long.
const BLOCK_SHARE: u64 = 4;
/// Blocks kept at once; past this, the spent and expired ones are dropped.
const MAX_BLOCKS: usize = 10_000;
/// The smallest share worth a block: below it (a key of fewer than 64 requests a minute on one
/// server) every request is decided alone, and the key's minute is exact to the request.
const MIN_BLOCK: u64 = 16;

/// A block of one key's requests taken from Redis in one round trip and spent here, one per
/// request, until it is spent or [`BLOCK_FOR`] has passed. The next block is sized from how
/// fast this one went: twice as large when it ran out early, else twice what was spent.
#[derive(Debug, Clone)]
struct Block {
    /// The limits it was taken under: a change of limits ends it.
    limits: KeyLimits,
    /// Where its units were recorded (the requests spent from it settle there); `None` for
    /// the mark of a block Redis refused, which holds further blocks off until `until`.
    ticket: Option<Ticket>,
    /// Its entry in the windows (to give back what was not spent).
    member: String,
    /// Requests it holds, and requests spent.
    taken: u64,
    spent: u64,
    until: Instant,
    /// The key's minute as Redis counted it when the block was taken, the block included.
    rpm_held: u64,
    reset: Duration,
}

/// The per-key limiter. A key without limits of its own never reaches it (the per-server
/// `admission.default_key_concurrency` is a counter on the held key, see `auth::InFlight`).
pub struct KeyLimiter {
    limiter: Arc<WindowLimiter>,
    /// A request's concurrency lease; past it a crashed server's leases expire.
    lease: Duration,
    /// Servers sharing the windows through Redis; `None` when no block is taken: without
    /// Redis (deciding here costs no round trip) or with `admission.key_request_blocks` off.
    replicas: Option<u64>,
    /// Each key's current block of requests, by key id (see [`Block`]).
    blocks: Arc<Blocks>,
}

type Blocks = parking_lot::Mutex<std::collections::HashMap<String, Block>>;

impl KeyLimiter {
    /// A limiter in Redis (when given), otherwise in process; the windows kept in process stay
    /// within `admission.limit_windows_max_bytes`.
    pub fn new(
        redis: Option<RedisLink>,
        replicas: NonZeroU32,
        lease: Duration,
        admission: &AdmissionSettings,
    ) -> KeyLimiter {
        let blocks = redis.is_some() && admission.key_request_blocks;
        let limiter = match redis {
            Some(link) => WindowLimiter::clustered(link, "limit", OPS, replicas, OPTIONS),
            None => WindowLimiter::local(OPTIONS),
        };
        let max_bytes = usize::try_from(admission.limit_windows_max_bytes).unwrap_or(usize::MAX);
        KeyLimiter {
            limiter: Arc::new(limiter.with_max_bytes(max_bytes)),
            lease,
            replicas: blocks.then_some(u64::from(replicas.get())),
            blocks: Arc::new(parking_lot::Mutex::new(std::collections::HashMap::new())),
        }
        .sweeping()
    }

    /// Starts the task that gives back what blocks left unspent once they end, so a key that
    /// stops asking does not keep part of its minute out of use for the rest of it.
    fn sweeping(self) -> KeyLimiter {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self;
        };
        if self.replicas.is_none() {
            return self;
        }
        let blocks = Arc::downgrade(&self.blocks);
        let limiter = Arc::downgrade(&self.limiter);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(BLOCK_FOR);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The limiter is gone with the server's state: so is this task.
                let (Some(blocks), Some(limiter)) = (blocks.upgrade(), limiter.upgrade()) else {
                    return;
                };
                let now = Instant::now();
                let ended: Vec<(String, Block)> = {
                    let mut blocks = blocks.lock();
                    let ended: Vec<String> = blocks
                        .iter()
                        .filter(|(_, b)| now >= b.until && b.spent < b.taken)
                        .map(|(key, _)| key.clone())
                        .collect();
                    ended
                        .into_iter()
                        .filter_map(|key| {
                            let block = blocks.get_mut(&key)?;
                            // Kept (spent in full) so the next block is sized from it.
                            let unspent = block.clone();
                            block.taken = block.spent;
                            Some((key, unspent))
                        })
                        .collect()
                };
                for (key_id, block) in ended {
                    give_back(&limiter, &key_id, &block).await;
                }
            }
        });
        self
    }

    /// The largest block of requests a key with `limits` may take at once, when blocks apply:
    /// Redis decides, the key's only request-counted limit is its minute (a concurrency lease
    /// or a learner's windows are per request), and a share of that minute is worth one.
    fn block_limit(&self, limits: &KeyLimits, subject: &Subject) -> Option<u64> {
        let replicas = self.replicas?;
        if limits.rpm == 0 || limits.concurrency > 0 || subject.learner.is_some() {
            return None;
        }
        let most = u64::from(limits.rpm) / (BLOCK_SHARE * replicas);
        (most >= MIN_BLOCK).then_some(most)
    }

    /// A request granted from the key's current block, if it has one left.
    fn spend_from_block(&self, limits: &KeyLimits, key_id: &str) -> Option<Decision> {
        let mut blocks = self.blocks.lock();
        let block = blocks.get_mut(key_id)?;
        if block.limits != *limits || block.spent >= block.taken || Instant::now() >= block.until {
            return None;
        }
        block.spent += 1;
        Some(Decision {
            refused: None,
            // The unspent rest of the block is not the key's use.
            rpm_used: block.rpm_held.saturating_sub(block.taken - block.spent),
            reset: block.reset,
            retry_after: Duration::ZERO,
            local: false,
            ticket: block.ticket,
        })
    }

    /// Takes a new block for the key of `subject` (one round trip), sized from its last one,
    /// and spends its first request on this one. `None` when Redis could not grant a block
    /// (refused, or deciding locally): the request is then decided alone.
    async fn take_block(
        &self,
        limits: &KeyLimits,
        subject: &Subject,
        most: u64,
    ) -> Option<Decision> {
        let size = {
            let blocks = self.blocks.lock();
            match blocks.get(&subject.key_id) {
                // A block was refused a moment ago: the key is at its limit, and each request
                // is decided alone (one round trip, as without blocks) until the mark ends.
                Some(last) if last.ticket.is_none() && Instant::now() < last.until => return None,
                Some(last) if last.spent >= last.taken => last.taken.saturating_mul(2),
                Some(last) => last.spent.saturating_mul(2),
                None => 2,
            }
        }
        .clamp(2, most);
        let (windows, rpm) = block_windows(limits, size);
        let member = uuid::Uuid::new_v4().to_string();
        let granted = self
            .limiter
            .reserve_from(
                &subject.key_id,
                &member,
                &windows,
                BLOCK_FOR,
                Instant::now() + 2 * BLOCK_FOR,
            )
            .await;
        let granted = match granted {
            Ok(granted) => granted,
            Err(_) => {
                let mark = Block {
                    limits: *limits,
                    ticket: None,
                    member: String::new(),
                    taken: 0,
                    spent: 0,
                    until: Instant::now() + BLOCK_FOR,
                    rpm_held: 0,
                    reset: Duration::ZERO,
                };
                self.blocks.lock().insert(subject.key_id.clone(), mark);
                return None;
            }
        };
        if granted.ticket.local() {
            // Redis failed meanwhile: give the block back and decide the request alone.
            let changes = [Change::Release { window: rpm }];
            self.limiter
                .settle(&subject.key_id, &member, &windows, granted.ticket, &changes)
                .await;
            return None;
        }
        let (rpm_held, reset) = granted
            .windows
            .get(rpm)
            .map_or((0, Duration::ZERO), |w| (w.held, w.reset));
        let block = Block {
            limits: *limits,
            ticket: Some(granted.ticket),
            member,
            taken: size,
            spent: 1,
            until: Instant::now() + BLOCK_FOR,
            rpm_held,
            reset,
        };
        let decision = Decision {
            refused: None,
            rpm_used: rpm_held.saturating_sub(size - 1),
            reset,
            retry_after: Duration::ZERO,
            local: false,
            ticket: Some(granted.ticket),
        };
        let replaced = {
            let mut blocks = self.blocks.lock();
            if blocks.len() >= MAX_BLOCKS {
                let now = Instant::now();
                blocks.retain(|_, b| b.spent < b.taken && now < b.until);
            }
            blocks.insert(subject.key_id.clone(), block)
        };
        if let Some(old) = replaced.filter(|old| old.spent < old.taken) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (limiter, key_id) = (self.limiter.clone(), subject.key_id.clone());
                runtime.spawn(crate::telemetry::in_current_context(async move {
                    give_back(&limiter, &key_id, &old).await;
                }));
            }
        }
        Some(decision)
    }

    /// True when a request of a key with `limits` has windows to check: a key without limits
    /// costs no limiter work (no allocation, no Redis round trip).
    pub fn applies(limits: &KeyLimits, subject_has_learner: bool) -> bool {
        limits.rpm > 0
            || limits.tokens_per_day > 0
            || limits.concurrency > 0
            || (subject_has_learner
                && (limits.learner_rpm > 0 || limits.learner_tokens_per_day > 0))
    }

    /// True when ending a granted request that cost `tokens` changes a window: a token budget
    /// to charge or a concurrency lease to end. A cached answer under rpm limits alone does
    /// not, so it costs one round trip (the grant), not two.
    pub fn needs_settling(limits: &KeyLimits, has_learner: bool, tokens: u64) -> bool {
        limits.concurrency > 0
            || (tokens > 0
                && (limits.tokens_per_day > 0
                    || (has_learner && limits.learner_tokens_per_day > 0)))
    }

    /// The windows of one request, in the order they are checked (the first that refuses is
    /// the one named), each with its kind. All live under the key id's hash tag.
    fn windows(&self, limits: &KeyLimits, subject: &Subject) -> (Vec<Window>, Vec<LimitKind>) {
        let mut windows = Vec::with_capacity(5);
        let mut kinds = Vec::with_capacity(5);
        let mut add = |window: Window, kind: LimitKind| {
            windows.push(window);
            kinds.push(kind);
        };
        if limits.rpm > 0 {
            add(
                Window::counting("rpm", u64::from(limits.rpm), MINUTE_MS, 1),
                LimitKind::KeyRpm,
            );
        }
        if limits.tokens_per_day > 0 {
            add(
                Window::charged("tokens", limits.tokens_per_day, DAY_MS),
                LimitKind::KeyTokens,
            );
        }
        let concurrency = limits.concurrency;
        if concurrency > 0 {
            let lease = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
            add(
                Window::counting("inflight", u64::from(concurrency), lease.max(1), 1),
                LimitKind::KeyConcurrency,
            );
        }
        if let Some(learner) = &subject.learner {
            if limits.learner_rpm > 0 {
                add(
                    Window::counting(
                        format!("learner:{learner}:rpm"),
                        u64::from(limits.learner_rpm),
                        MINUTE_MS,
                        1,
                    ),
                    LimitKind::LearnerRpm,
                );
            }
            if limits.learner_tokens_per_day > 0 {
                add(
                    Window::charged(
                        format!("learner:{learner}:tokens"),
                        limits.learner_tokens_per_day,
                        DAY_MS,
                    ),
                    LimitKind::LearnerTokens,
                );
            }
        }
        (windows, kinds)
    }

    /// Decides one request; a granted request must be ended with [`KeyLimiter::finish`].
    pub async fn acquire(&self, limits: &KeyLimits, subject: &Subject) -> Decision {
        let (windows, kinds) = self.windows(limits, subject);
        let rpm = kinds.iter().position(|k| *k == LimitKind::KeyRpm);
        let minute = |seen: &[learning_chat_engine::admission::window::Seen]| {
            rpm.and_then(|i| seen.get(i))
                .map_or((0, Duration::ZERO), |w| (w.held, w.reset))
        };
        if windows.is_empty() {
            return Decision {
                refused: None,
                rpm_used: 0,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
                local: false,
                ticket: None,
            };
        }
        if let Some(most) = self.block_limit(limits, subject) {
            if let Some(decision) = self.spend_from_block(limits, &subject.key_id) {
                return decision;
            }
            if let Some(decision) = self.take_block(limits, subject, most).await {
                return decision;
            }
        }
        // No waiting: a request that does not fit now is refused with the wait as its hint.
        let reserved = self
            .limiter
            .reserve(&subject.key_id, &subject.member, &windows, Instant::now())
            .await;
        match reserved {
            Ok(granted) => {
                let (rpm_used, reset) = minute(&granted.windows);
                Decision {
                    refused: None,
                    rpm_used,
                    reset,
                    retry_after: Duration::ZERO,
                    local: granted.ticket.local(),
                    ticket: Some(granted.ticket),
                }
            }
            Err(refused) => {
                let (rpm_used, reset) = minute(&refused.windows);
                let kind = kinds
                    .get(refused.window)
                    .copied()
                    .unwrap_or(LimitKind::KeyRpm);
                let retry_after = match kind {
                    LimitKind::KeyConcurrency => CONCURRENCY_RETRY_AFTER,
                    _ => refused
                        .windows
                        .get(refused.window)
                        .map_or(refused.wait, |w| w.wait),
                };
                Decision {
                    refused: Some(kind),
                    rpm_used,
                    reset,
                    retry_after,
                    local: refused.local,
                    ticket: None,
                }
            }
        }
    }

    /// Ends a granted request: charges the model tokens it cost to the day's budgets and ends
    /// its concurrency lease, where it was decided.
    pub async fn finish(
        &self,
        limits: &KeyLimits,
        subject: &Subject,
        decision: &Decision,
        tokens: u64,
    ) {
        let Some(ticket) = decision.ticket else {
            return;
        };
        if !Self::needs_settling(limits, subject.learner.is_some(), tokens) {
            return;
        }
        let (windows, kinds) = self.windows(limits, subject);
        let changes: Vec<Change> = kinds
            .iter()
            .enumerate()
            .filter_map(|(window, kind)| match kind {
                LimitKind::KeyTokens | LimitKind::LearnerTokens if tokens > 0 => {
                    Some(Change::Charge {
                        window,
                        units: tokens,
                    })
                }
                LimitKind::KeyConcurrency => Some(Change::Release { window }),
                _ => None,
            })
            .collect();
        self.limiter
            .settle(&subject.key_id, &subject.member, &windows, ticket, &changes)
            .await;
    }
}

/// The windows a block of `size` requests of a key with `limits` was taken in, and the index
/// of its minute among them (the one window whose units a block multiplies).
fn block_windows(limits: &KeyLimits, size: u64) -> (Vec<Window>, usize) {
    let mut windows = vec![Window::counting(
        "rpm",
        u64::from(limits.rpm),
        MINUTE_MS,
        size,
    )];
    if limits.tokens_per_day > 0 {
        windows.push(Window::charged("tokens", limits.tokens_per_day, DAY_MS));
    }
    (windows, 0)
}

/// Gives the unspent requests of an ended block back to its key's minute: its entry is
/// replaced by one of the requests spent, counted from now (after every one of them).
async fn give_back(limiter: &WindowLimiter, key_id: &str, block: &Block) {
    let Some(ticket) = block.ticket else {
        return;
    };
    let (windows, rpm) = block_windows(&block.limits, block.taken);
    let mut changes = vec![Change::Release { window: rpm }];
    if block.spent > 0 {
        changes.push(Change::Charge {
            window: rpm,
            units: block.spent,
        });
    }
    limiter
        .settle(key_id, &block.member, &windows, ticket, &changes)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_default() -> AdmissionSettings {
        AdmissionSettings::default()
    }

    fn subject(learner: Option<&str>, member: &str) -> Subject {
        Subject {
            key_id: "key_test".into(),
            learner: learner.map(str::to_owned),
            member: member.into(),
        }
    }

    #[tokio::test]
    async fn local_limits_refuse_with_the_limit_named() {
        let limiter = KeyLimiter::new(
            None,
            NonZeroU32::MIN,
            Duration::from_secs(60),
            &no_default(),
        );
        let limits = KeyLimits {
            rpm: 3,
            tokens_per_day: 100,
            concurrency: 2,
            learner_rpm: 1,
            learner_tokens_per_day: 0,
        };
        let a = limiter.acquire(&limits, &subject(Some("l1"), "1")).await;
        assert_eq!(a.refused, None);
        let again = limiter.acquire(&limits, &subject(Some("l1"), "2")).await;
        assert_eq!(again.refused, Some(LimitKind::LearnerRpm));
        let b = limiter.acquire(&limits, &subject(None, "3")).await;
        assert_eq!(b.refused, None);
        let c = limiter.acquire(&limits, &subject(None, "4")).await;
        assert_eq!(c.refused, Some(LimitKind::KeyConcurrency));
        limiter.finish(&limits, &subject(None, "3"), &b, 150).await;
        let d = limiter.acquire(&limits, &subject(None, "5")).await;
        assert_eq!(d.refused, Some(LimitKind::KeyTokens));
        assert!(d.retry_after > Duration::ZERO);
    }

    #[tokio::test]
    async fn learner_windows_stay_within_their_byte_budget_whatever_ids_are_sent() {
        let budget = AdmissionSettings {
            limit_windows_max_bytes: 256 * 1024,
            ..AdmissionSettings::default()
        };
        let limiter = KeyLimiter::new(None, NonZeroU32::MIN, Duration::from_secs(60), &budget);
        let limits = KeyLimits {
            learner_rpm: 10,
            learner_tokens_per_day: 1_000_000,
            ..KeyLimits::default()
        };
        // A new learner id with every request: two day-long windows each, never idle.
        let mut peak = 0;
        for i in 0..20_000 {
            let learner = format!("{i:032x}");
            let s = subject(Some(&learner), &format!("m{i}"));
            let decision = limiter.acquire(&limits, &s).await;
            assert_eq!(decision.refused, None);
            limiter.finish(&limits, &s, &decision, 100).await;
            peak = peak.max(limiter.limiter.local_bytes());
        }
        assert!(peak <= 256 * 1024, "peak {peak} bytes");
        assert!(peak > 128 * 1024, "the budget was used: {peak} bytes");
        // A learner seen just now is still limited: the recent windows are the ones kept.
        let recent = format!("{:032x}", 19_999);
        for n in 0..9 {
            let s = subject(Some(&recent), &format!("again{n}"));
            assert_eq!(limiter.acquire(&limits, &s).await.refused, None, "{n}");
        }
        let s = subject(Some(&recent), "over");
        assert_eq!(
            limiter.acquire(&limits, &s).await.refused,
            Some(LimitKind::LearnerRpm)
        );
    }
}
