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

/// The per-key limiter. A key without limits of its own never reaches it (the per-server
/// `admission.default_key_concurrency` is a counter on the held key, see `auth::InFlight`).
pub struct KeyLimiter {
    limiter: WindowLimiter,
    /// A request's concurrency lease; past it a crashed server's leases expire.
    lease: Duration,
}

impl KeyLimiter {
    /// A limiter in Redis (when given), otherwise in process; the windows kept in process stay
    /// within `admission.limit_windows_max_bytes`.
    pub fn new(
        redis: Option<RedisLink>,
        replicas: NonZeroU32,
        lease: Duration,
        admission: &AdmissionSettings,
    ) -> KeyLimiter {
        let limiter = match redis {
            Some(link) => WindowLimiter::clustered(link, "limit", OPS, replicas, OPTIONS),
            None => WindowLimiter::local(OPTIONS),
        };
        let max_bytes = usize::try_from(admission.limit_windows_max_bytes).unwrap_or(usize::MAX);
        KeyLimiter {
            limiter: limiter.with_max_bytes(max_bytes),
            lease,
        }
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
