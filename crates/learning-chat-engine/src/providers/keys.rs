//! Several Gemini API keys, one quota each: every key has its own requests- and tokens-per-minute
//! window per model (in Redis for the cluster, through the same limiter as the global quota), a
//! call goes to a key with room, and a key the provider refuses (403, or an invalid key) or whose
//! per-day quota is used up is taken out of rotation: for good, or until midnight Pacific time,
//! when Gemini resets per-day quotas. Keys are logged only masked (`AIza…1234`).

use super::{Completion, CompletionStream, GeminiClient, ModelRequest, Provider, ProviderError};
use crate::admission::QuotaLimiter;
use crate::config::Secret;
use crate::redis_link::RedisLink;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Per-key quota settings shared by every key.
#[derive(Debug, Clone)]
pub struct KeyQuota {
    /// Requests per minute per key and model (0 = none of its own).
    pub rpm: u32,
    /// Input tokens per minute per key and model (0 = none).
    pub input_tpm: u64,
    /// Added to the 60 s window, as for the global quota.
    pub margin: Duration,
    /// Servers sharing the keys (for the conservative share while Redis is away).
    pub replicas: NonZeroU32,
    /// The cluster's Redis, when configured: the windows are then cluster-wide.
    pub redis: Option<RedisLink>,
}

/// Why a key is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Refused as invalid or forbidden: out until restart (or until the key is replaced).
    Refused,
}

#[derive(Debug, Default)]
struct KeyState {
    out: Option<Out>,
    /// Models whose per-day quota this key used up, with when it resets.
    daily_out: HashMap<String, Instant>,
    quotas: HashMap<String, Arc<QuotaLimiter>>,
}

#[derive(Debug)]
struct PoolKey {
    provider: Provider,
    /// Hash prefix: names the key in Redis without revealing it.
    id: String,
    /// `AIza…1234`, for logs.
    masked: String,
    state: Mutex<KeyState>,
}

/// The Gemini keys and their quotas.
#[derive(Debug)]
pub struct KeyPool {
    keys: Vec<PoolKey>,
    next: AtomicUsize,
    quota: KeyQuota,
}

/// `AIza…1234`: enough to tell keys apart in logs, too little to use one.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 12 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    } else {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        format!("…{tail}")
    }
}

fn key_id(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil year of a day count.
fn year_of_days(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// The day count of the `nth` Sunday of a month (1-based).
fn nth_sunday(year: i64, month: i64, nth: i64) -> i64 {
    let first = days_from_civil(year, month, 1);
    // 1970-01-01 was a Thursday: weekday 0 = Sunday.
    let weekday = (first + 4).rem_euclid(7);
    first + (7 - weekday) % 7 + 7 * (nth - 1)
}

/// True when US daylight time is in force in Pacific time at `unix` seconds: from 2:00 PST on
/// the second Sunday of March (10:00 UTC) to 2:00 PDT on the first Sunday of November (09:00
/// UTC), the rule since 2007. No tz database is needed for one zone with a fixed rule.
fn pacific_dst(unix: i64) -> bool {
    let year = year_of_days(unix.div_euclid(86_400));
    let start = nth_sunday(year, 3, 2) * 86_400 + 10 * 3600;
    let end = nth_sunday(year, 11, 1) * 86_400 + 9 * 3600;
    (start..end).contains(&unix)
}

/// The next midnight in America/Los_Angeles after `unix` seconds, as unix seconds: when Gemini
/// resets per-day quotas.
pub fn next_pacific_midnight(unix: i64) -> i64 {
    let offset = |dst: bool| if dst { 7 * 3600 } else { 8 * 3600 };
    let local = unix - offset(pacific_dst(unix));
    let next_local_midnight = (local.div_euclid(86_400) + 1) * 86_400;
    // The offset at that midnight may differ from now's (a transition in between): ask at the
    // instant now's offset puts it, which is within an hour of it and on the same side of the
    // 2:00 transition.
    let guess = next_local_midnight + offset(pacific_dst(unix));
    next_local_midnight + offset(pacific_dst(guess))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// True for the answers that say the key itself is bad, not the request.
fn key_refused(error: &ProviderError) -> bool {
    match error {
        ProviderError::Rejected { status, message } => {
            *status == 403
                || *status == 401
                || (*status == 400
                    && (message.contains("API key not valid") || message.contains("API_KEY")))
        }
        _ => false,
    }
}

impl KeyPool {
    /// A pool over `keys` (at least one), each served by a client like `template` with its key.
    pub fn new(template: &GeminiClient, keys: &[Secret], quota: KeyQuota) -> KeyPool {
        let keys: Vec<PoolKey> = keys
            .iter()
            .map(|key| PoolKey {
                provider: Provider::Gemini(template.with_key(key.clone())),
                id: key_id(key.expose()),
                masked: mask(key.expose()),
                state: Mutex::new(KeyState::default()),
            })
            .collect();
        crate::providers::metrics::api_keys_in_rotation(keys.len());
        KeyPool {
            keys,
            next: AtomicUsize::new(0),
            quota,
        }
    }

    /// How many keys there are, and how many are in rotation for every model now.
    pub fn counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let usable = self
            .keys
            .iter()
            .filter(|k| {
                let state = k.state.lock();
                state.out.is_none() && state.daily_out.values().all(|until| *until <= now)
            })
            .count();
        (self.keys.len(), usable)
    }

    fn limiter(&self, index: usize, model: &str) -> Arc<QuotaLimiter> {
        let key = &self.keys[index];
        let mut state = key.state.lock();
        if let Some(limiter) = state.quotas.get(model) {
            return limiter.clone();
        }
        let q = &self.quota;
        let limiter = Arc::new(match &q.redis {
            Some(link) => QuotaLimiter::clustered_scoped(
                q.rpm,
                q.input_tpm,
                q.margin,
                q.replicas,
                link.clone(),
                &format!("key-{}-{model}", key.id),
            ),
            None => QuotaLimiter::scoped(q.rpm, q.input_tpm, q.margin),
        });
        state.quotas.insert(model.to_owned(), limiter.clone());
        limiter
    }

    fn usable(&self, index: usize, model: &str, now: Instant) -> bool {
        let mut state = self.keys[index].state.lock();
        if state.out.is_some() {
            return false;
        }
        match state.daily_out.get(model) {
            Some(until) if *until > now => false,
            Some(_) => {
                state.daily_out.remove(model);
                drop(state);
                self.report_rotation();
                true
            }
            None => true,
        }
    }

    fn report_rotation(&self) {
        crate::providers::metrics::api_keys_in_rotation(self.counts().1);
    }

    /// Picks a key for `model`: one with room now, taken round-robin; else the one whose slot
    /// comes first, waited for if it comes before `deadline`.
    async fn choose(
        &self,
        model: &str,
        input_tokens: u32,
        deadline: Instant,
    ) -> Result<usize, ProviderError> {
        let n = self.keys.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let candidates: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| self.usable(i, model, now))
            .collect();
        if candidates.is_empty() {
            return Err(self.all_out(model));
        }
        let mut soonest: Option<(usize, Duration)> = None;
        for &index in &candidates {
            // A deadline of now: granted only if a slot is free now, never waited for.
            match self
                .limiter(index, model)
                .acquire(input_tokens, Instant::now())
                .await
            {
                Ok(()) => return Ok(index),
                Err(refused) => {
                    if soonest.is_none_or(|(_, wait)| refused.retry_after < wait) {
                        soonest = Some((index, refused.retry_after));
                    }
                }
            }
        }
        let Some((index, _)) = soonest else {
            return Err(self.all_out(model));
        };
        self.limiter(index, model)
            .acquire(input_tokens, deadline)
            .await
            .map_err(|refused| ProviderError::RateLimited {
                retry_after: Some(refused.retry_after),
                daily: false,
            })?;
        Ok(index)
    }

    /// The error when no key may be used for `model`.
    fn all_out(&self, model: &str) -> ProviderError {
        let now = Instant::now();
        let back = self
            .keys
            .iter()
            .filter_map(|k| {
                let state = k.state.lock();
                if state.out.is_some() {
                    return None;
                }
                state.daily_out.get(model).copied()
            })
            .min();
        match back {
            Some(until) => ProviderError::RateLimited {
                retry_after: Some(until.saturating_duration_since(now)),
                daily: true,
            },
            None => ProviderError::Rejected {
                status: 403,
                message: "every Gemini API key was refused".to_owned(),
            },
        }
    }

    /// Takes the key out of rotation when `error` says it is bad or out for the day; true when
    /// the call should be made again with another key.
    fn after(&self, index: usize, model: &str, error: &ProviderError) -> bool {
        // A single key stays in: there is nothing to rotate to, and a fixed key works at once.
        if self.keys.len() < 2 {
            return false;
        }
        let key = &self.keys[index];
        if key_refused(error) {
            let first = key.state.lock().out.replace(Out::Refused).is_none();
            if first {
                tracing::error!(
                    key = %key.masked,
                    "Gemini API key refused ({error}); taken out of rotation"
                );
                crate::providers::metrics::api_key_out("refused");
                self.report_rotation();
            }
            return true;
        }
        if matches!(error, ProviderError::RateLimited { daily: true, .. }) {
            let now_unix = unix_now();
            let wait = next_pacific_midnight(now_unix) - now_unix;
            let until = Instant::now() + Duration::from_secs(u64::try_from(wait).unwrap_or(0));
            let first = key
                .state
                .lock()
                .daily_out
                .insert(model.to_owned(), until)
                .is_none_or(|before| before <= Instant::now());
            if first {
                tracing::warn!(
                    key = %key.masked,
                    model,
                    back_in_secs = wait,
                    "Gemini API key used up its per-day quota; out of rotation for this model \
                     until midnight Pacific time"
                );
                crate::providers::metrics::api_key_out("daily_quota");
                self.report_rotation();
            }
            return true;
        }
        false
    }

    /// One attempt with a key that has room; another key when the first is refused or out for
    /// the day.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let tokens = request_tokens(request);
        let mut last = None;
        for _ in 0..self.keys.len() {
            let index = self.choose(&request.model, tokens, deadline).await?;
            match self.keys[index].provider.generate(request, deadline).await {
                Err(error) if self.after(index, &request.model, &error) => last = Some(error),
                result => return result,
            }
        }
        Err(last.unwrap_or_else(|| self.all_out(&request.model)))
    }

    /// The streamed attempt, with the same key choice.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let tokens = request_tokens(request);
        let mut last = None;
        for _ in 0..self.keys.len() {
            let index = self.choose(&request.model, tokens, deadline).await?;
            match self.keys[index]
                .provider
                .generate_stream(request, deadline)
                .await
            {
                Err(error) if self.after(index, &request.model, &error) => last = Some(error),
                result => return result,
            }
        }
        Err(last.unwrap_or_else(|| self.all_out(&request.model)))
    }
}

fn request_tokens(request: &ModelRequest) -> u32 {
    super::input_token_estimate(request.system.text(), &request.history, &request.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(year: i64, month: i64, day: i64, hour: i64, minute: i64) -> i64 {
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60
    }

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask("AIzaSyD-abcdefghijklmnop1234"), "AIza…1234");
        assert_eq!(mask("short"), "…rt");
    }

    #[test]
    fn per_day_quotas_come_back_at_midnight_pacific() {
        // Winter (PST, UTC-8): 2026-01-15 20:00 UTC is 12:00 PST; back at 2026-01-16 08:00 UTC.
        assert_eq!(
            next_pacific_midnight(unix(2026, 1, 15, 20, 0)),
            unix(2026, 1, 16, 8, 0)
        );
        // Summer (PDT, UTC-7): 2026-07-01 06:30 UTC is 23:30 PDT on June 30 -> 07:00 UTC.
        assert_eq!(
            next_pacific_midnight(unix(2026, 7, 1, 6, 30)),
            unix(2026, 7, 1, 7, 0)
        );
        // The night DST starts (2026-03-08): midnight of the 8th is still PST, of the 9th PDT.
        assert_eq!(
            next_pacific_midnight(unix(2026, 3, 8, 12, 0)),
            unix(2026, 3, 9, 7, 0)
        );
        // The night DST ends (2026-11-01): midnight of Nov 2 is PST again.
        assert_eq!(
            next_pacific_midnight(unix(2026, 11, 1, 12, 0)),
            unix(2026, 11, 2, 8, 0)
        );
        assert_eq!(year_of_days(days_from_civil(2026, 12, 1)), 2026);
        assert_eq!(year_of_days(days_from_civil(2024, 2, 29)), 2024);
    }

    #[test]
    fn refusals_of_the_key_are_told_from_other_rejections() {
        let rejected = |status, message: &str| ProviderError::Rejected {
            status,
            message: message.to_owned(),
        };
        assert!(key_refused(&rejected(403, "PERMISSION_DENIED leaked")));
        assert!(key_refused(&rejected(
            400,
            "INVALID_ARGUMENT API key not valid. Please pass a valid API key."
        )));
        assert!(!key_refused(&rejected(400, "INVALID_ARGUMENT bad body")));
        assert!(!key_refused(&rejected(404, "NOT_FOUND")));
    }
}
