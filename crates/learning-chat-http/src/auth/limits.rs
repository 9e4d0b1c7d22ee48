//! Per-key (and per-learner) limits, cluster-wide: requests per minute, model tokens per UTC
//! day and requests in progress, decided by one Redis script per request so every server draws
//! from the same budgets. While Redis is down (or not configured) the same windows are kept in
//! process; with Redis configured but down each server takes `1 / redis.replicas` of every
//! limit, the conservative share the model-call quota uses too.

use super::keys::KeyLimits;
use learning_chat_engine::redis_link::RedisLink;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// KEYS: key rpm, key tokens, key concurrency, learner rpm, learner tokens (hashes {s, n} and
/// a zset). ARGV: rpm, tokens_per_day, concurrency, learner_rpm, learner_tokens_per_day,
/// member, lease_ms. Counts only what it grants. Returns {code, requests used this minute,
/// ms to the minute's end, retry_after_ms}; code 0 granted, else the limit that refused
/// (1 key rpm, 2 key tokens, 3 key concurrency, 4 learner rpm, 5 learner tokens).
const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function used(key, span)
  local start = now - (now % span)
  local s = tonumber(redis.call('HGET', key, 's') or '-1')
  if s ~= start then return start, 0 end
  return start, tonumber(redis.call('HGET', key, 'n') or '0')
end
local minute_start, rpm_used = used(KEYS[1], 60000)
local reset = minute_start + 60000 - now
local rpm = tonumber(ARGV[1])
if rpm > 0 and rpm_used >= rpm then return {1, rpm_used, reset, reset} end
local tpd = tonumber(ARGV[2])
if tpd > 0 then
  local day_start, tokens = used(KEYS[2], 86400000)
  if tokens >= tpd then return {2, rpm_used, reset, day_start + 86400000 - now} end
end
local conc = tonumber(ARGV[3])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {3, rpm_used, reset, 1000} end
end
local lrpm = tonumber(ARGV[4])
local lrpm_start, lrpm_used = 0, 0
if lrpm > 0 then
  lrpm_start, lrpm_used = used(KEYS[4], 60000)
  if lrpm_used >= lrpm then return {4, rpm_used, reset, lrpm_start + 60000 - now} end
end
local ltpd = tonumber(ARGV[5])
if ltpd > 0 then
  local lday, ltokens = used(KEYS[5], 86400000)
  if ltokens >= ltpd then return {5, rpm_used, reset, lday + 86400000 - now} end
end
local function count(key, start, n, span)
  redis.call('HSET', key, 's', start, 'n', n + 1)
  redis.call('PEXPIRE', key, span * 2)
end
count(KEYS[1], minute_start, rpm_used, 60000)
if lrpm > 0 then count(KEYS[4], lrpm_start, lrpm_used, 60000) end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]) * 2)
end
return {0, rpm_used + 1, reset, 0}
";

/// KEYS: key tokens, learner tokens (or the same key twice), key concurrency. ARGV: tokens,
/// member, learner (0/1). Adds the tokens to today's counts and ends the request's lease.
const RECORD_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - (now % 86400000)
local tokens = tonumber(ARGV[1])
local function add(key)
  if tonumber(redis.call('HGET', key, 's') or '-1') ~= start then
    redis.call('HSET', key, 's', start, 'n', 0)
  end
  redis.call('HINCRBY', key, 'n', tokens)
  redis.call('PEXPIRE', key, 172800000)
end
if tokens > 0 then
  add(KEYS[1])
  if ARGV[3] == '1' then add(KEYS[2]) end
end
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
";

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
    fn from_code(code: i64) -> Option<LimitKind> {
        Some(match code {
            1 => LimitKind::KeyRpm,
            2 => LimitKind::KeyTokens,
            3 => LimitKind::KeyConcurrency,
            4 => LimitKind::LearnerRpm,
            5 => LimitKind::LearnerTokens,
            _ => return None,
        })
    }

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
    /// Requests counted against the key this minute (this one included when granted).
    pub rpm_used: u64,
    /// Until the key's request window resets.
    pub reset: Duration,
    /// When to retry, when refused.
    pub retry_after: Duration,
    /// True when decided in process (Redis down or not configured).
    pub local: bool,
}

/// Names the Redis state of one request.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The key id.
    pub key_id: String,
    /// The hashed learner id, when the client sent one.
    pub learner: Option<String>,
    /// A unique id of this request (its concurrency lease).
    pub member: String,
}

/// Window counters kept in process.
#[derive(Default)]
struct LocalState {
    /// (window start ms, count) per counter name.
    windows: HashMap<String, (u64, u64)>,
    /// Requests in progress per key id.
    in_progress: HashMap<String, u32>,
}

/// The per-key limiter.
pub struct KeyLimiter {
    redis: Option<RedisLink>,
    /// Each server's share of a limit while Redis is down.
    replicas: u32,
    /// A request's concurrency lease; past it a crashed server's leases expire.
    lease: Duration,
    local: Mutex<LocalState>,
    acquire: ::redis::Script,
    record: ::redis::Script,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KeyLimiter {
    /// A limiter in Redis (when given), otherwise in process.
    pub fn new(redis: Option<RedisLink>, replicas: NonZeroU32, lease: Duration) -> KeyLimiter {
        KeyLimiter {
            redis,
            replicas: replicas.get(),
            lease,
            local: Mutex::new(LocalState::default()),
            acquire: ::redis::Script::new(ACQUIRE_SCRIPT),
            record: ::redis::Script::new(RECORD_SCRIPT),
        }
    }

    fn redis_keys(link: &RedisLink, subject: &Subject) -> [String; 5] {
        let learner = subject.learner.as_deref().unwrap_or("-");
        [
            link.key("limit", &format!("{}:rpm", subject.key_id)),
            link.key("limit", &format!("{}:tokens", subject.key_id)),
            link.key("limit", &format!("{}:inflight", subject.key_id)),
            link.key(
                "limit",
                &format!("{}:learner:{learner}:rpm", subject.key_id),
            ),
            link.key(
                "limit",
                &format!("{}:learner:{learner}:tokens", subject.key_id),
            ),
        ]
    }

    /// Decides one request; a granted request must be ended with [`KeyLimiter::finish`].
    pub async fn acquire(&self, limits: &KeyLimits, subject: &Subject) -> Decision {
        let learner_limits = subject.learner.is_some();
        if let Some(link) = &self.redis {
            let keys = Self::redis_keys(link, subject);
            let script = &self.acquire;
            let mut invocation = script.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation
                .arg(limits.rpm)
                .arg(limits.tokens_per_day)
                .arg(limits.concurrency)
                .arg(if learner_limits {
                    limits.learner_rpm
                } else {
                    0
                })
                .arg(if learner_limits {
                    limits.learner_tokens_per_day
                } else {
                    0
                })
                .arg(&subject.member)
                .arg(self.lease.as_millis() as u64);
            let reply: Result<Vec<i64>, _> = link
                .run("key_limit", |mut conn| async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await;
            if let Ok(reply) = reply {
                if let [code, used, reset, retry] = reply[..] {
                    return Decision {
                        refused: LimitKind::from_code(code),
                        rpm_used: used.max(0) as u64,
                        reset: Duration::from_millis(reset.max(0) as u64),
                        retry_after: Duration::from_millis(retry.max(0) as u64),
                        local: false,
                    };
                }
            }
        }
        // Redis configured but unavailable: this server's conservative share of each limit.
        let share = if self.redis.is_some() {
            self.replicas
        } else {
            1
        };
        self.acquire_local(limits, subject, share)
    }

    fn acquire_local(&self, limits: &KeyLimits, subject: &Subject, share: u32) -> Decision {
        let part = |limit: u64| {
            if limit == 0 {
                0
            } else {
                (limit / u64::from(share)).max(1)
            }
        };
        let now = now_ms();
        let minute = now - now % MINUTE_MS;
        let day = now - now % DAY_MS;
        let reset = Duration::from_millis(minute + MINUTE_MS - now);
        let mut state = self.local.lock();
        let used = |state: &LocalState, name: &str, start: u64| match state.windows.get(name) {
            Some((s, n)) if *s == start => *n,
            _ => 0,
        };
        let id = &subject.key_id;
        let learner = subject.learner.as_deref();
        let rpm_name = format!("{id}:rpm");
        let rpm_used = used(&state, &rpm_name, minute);
        let refuse = |kind, retry: u64| Decision {
            refused: Some(kind),
            rpm_used,
            reset,
            retry_after: Duration::from_millis(retry),
            local: true,
        };
        let rpm = part(u64::from(limits.rpm));
        if rpm > 0 && rpm_used >= rpm {
            return refuse(LimitKind::KeyRpm, minute + MINUTE_MS - now);
        }
        let tpd = part(limits.tokens_per_day);
        if tpd > 0 && used(&state, &format!("{id}:tokens"), day) >= tpd {
            return refuse(LimitKind::KeyTokens, day + DAY_MS - now);
        }
        let conc = part(u64::from(limits.concurrency));
        if conc > 0 && u64::from(state.in_progress.get(id).copied().unwrap_or(0)) >= conc {
            return refuse(LimitKind::KeyConcurrency, 1000);
        }
        let mut learner_rpm = None;
        if let Some(learner) = learner {
            let lrpm = part(u64::from(limits.learner_rpm));
            let name = format!("{id}:learner:{learner}:rpm");
            if lrpm > 0 {
                if used(&state, &name, minute) >= lrpm {
                    return refuse(LimitKind::LearnerRpm, minute + MINUTE_MS - now);
                }
                learner_rpm = Some(name);
            }
            let ltpd = part(limits.learner_tokens_per_day);
            if ltpd > 0 && used(&state, &format!("{id}:learner:{learner}:tokens"), day) >= ltpd {
                return refuse(LimitKind::LearnerTokens, day + DAY_MS - now);
            }
        }
        let count = |state: &mut LocalState, name: String| {
            let entry = state.windows.entry(name).or_insert((minute, 0));
            if entry.0 != minute {
                *entry = (minute, 0);
            }
            entry.1 += 1;
        };
        count(&mut state, rpm_name);
        if let Some(name) = learner_rpm {
            count(&mut state, name);
        }
        if conc > 0 {
            *state.in_progress.entry(id.clone()).or_insert(0) += 1;
        }
        // Old windows go, so the map holds only the keys and learners active today.
        if state.windows.len() > 100_000 {
            state.windows.retain(|_, (s, _)| *s >= day);
        }
        Decision {
            refused: None,
            rpm_used: rpm_used + 1,
            reset,
            retry_after: Duration::ZERO,
            local: true,
        }
    }

    /// Ends a granted request: adds the model tokens it cost to today's budgets and ends its
    /// concurrency lease, where it was decided.
    pub async fn finish(
        &self,
        limits: &KeyLimits,
        subject: &Subject,
        decision: &Decision,
        tokens: u64,
    ) {
        if !decision.local {
            if let Some(link) = &self.redis {
                let [_, key_tokens, inflight, _, learner_tokens] = Self::redis_keys(link, subject);
                let mut invocation = self.record.prepare_invoke();
                invocation
                    .key(&key_tokens)
                    .key(&learner_tokens)
                    .key(&inflight)
                    .arg(tokens)
                    .arg(&subject.member)
                    .arg(if subject.learner.is_some() { "1" } else { "0" });
                let recorded: Result<i64, _> = link
                    .run("key_limit", |mut conn| async move {
                        invocation.invoke_async(&mut conn).await
                    })
                    .await;
                if recorded.is_ok() {
                    return;
                }
                // The lease in Redis expires on its own; the tokens count here instead.
                self.record_local(subject, tokens, false);
                return;
            }
        }
        self.record_local(subject, tokens, limits.concurrency > 0);
    }

    fn record_local(&self, subject: &Subject, tokens: u64, release: bool) {
        let now = now_ms();
        let day = now - now % DAY_MS;
        let mut state = self.local.lock();
        let id = &subject.key_id;
        let mut add = |name: String| {
            let entry = state.windows.entry(name).or_insert((day, 0));
            if entry.0 != day {
                *entry = (day, 0);
            }
            entry.1 += tokens;
        };
        if tokens > 0 {
            add(format!("{id}:tokens"));
            if let Some(learner) = &subject.learner {
                add(format!("{id}:learner:{learner}:tokens"));
            }
        }
        if release {
            if let Some(n) = state.in_progress.get_mut(id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.in_progress.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(learner: Option<&str>, member: &str) -> Subject {
        Subject {
            key_id: "key_test".into(),
            learner: learner.map(str::to_owned),
            member: member.into(),
        }
    }

    #[tokio::test]
    async fn local_limits_refuse_with_the_limit_named() {
        let limiter = KeyLimiter::new(None, NonZeroU32::MIN, Duration::from_secs(60));
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
}
