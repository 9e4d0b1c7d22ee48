//! Per-API-key quotas over sliding windows (60 s for requests and input tokens, 24 h for daily
//! requests), with the exact time until a slot frees for `RetryInfo.retryDelay`.

use crate::config::QuotaConfig;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Which quota a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// Requests per minute.
    RequestsPerMinute,
    /// Input tokens per minute.
    InputTokensPerMinute,
    /// Requests per day.
    RequestsPerDay,
}

impl QuotaKind {
    /// The `quotaId` Gemini reports for this quota.
    pub fn quota_id(self) -> &'static str {
        match self {
            QuotaKind::RequestsPerMinute => "GenerateRequestsPerMinutePerProjectPerModel",
            QuotaKind::InputTokensPerMinute => "GenerateContentInputTokensPerModelPerMinute",
            QuotaKind::RequestsPerDay => "GenerateRequestsPerDayPerProjectPerModel",
        }
    }

    /// The `quotaMetric` Gemini reports for this quota, by tier.
    pub fn quota_metric(self, free_tier: bool) -> &'static str {
        match (self, free_tier) {
            (QuotaKind::InputTokensPerMinute, true) => {
                "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
            }
            (QuotaKind::InputTokensPerMinute, false) => {
                "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count"
            }
            (_, true) => "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            (_, false) => "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
        }
    }
}

/// One exceeded quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which quota.
    pub kind: QuotaKind,
    /// Its configured limit.
    pub limit: u64,
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within every quota; the request has been counted.
    Admitted,
    /// Over at least one quota; nothing was counted.
    Limited {
        /// Every quota the request would exceed.
        violations: Vec<Violation>,
        /// Real time until the request would be admitted.
        retry_after: Duration,
    },
}

/// The sliding windows of one key. A window is only fed while its limit is set, so an
/// unlimited simulator keeps no per-request history.
#[derive(Default)]
struct Windows {
    minute: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u32)>,
    token_sum: u64,
    day: VecDeque<Instant>,
}

impl Windows {
    fn prune(&mut self, now: Instant, minute: Duration) {
        while self.minute.front().is_some_and(|t| *t + minute <= now) {
            self.minute.pop_front();
        }
        while let Some((t, n)) = self.tokens.front().copied() {
            if t + minute > now {
                break;
            }
            self.tokens.pop_front();
            self.token_sum -= u64::from(n);
        }
        while self.day.front().is_some_and(|t| *t + DAY <= now) {
            self.day.pop_front();
        }
    }

    /// Time until a request window of `period` holding `entries` admits one more under `limit`.
    fn request_wait(
        entries: &VecDeque<Instant>,
        limit: u64,
        period: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let count = entries.len() as u64;
        if count < limit {
            return None;
        }
        // The (count - limit)th oldest entry must expire for one slot to free (more than one
        // when the limit was lowered at run time).
        let index = usize::try_from(count - limit).unwrap_or(usize::MAX);
        Some(
            entries
                .get(index)
                .map_or(period, |t| (*t + period).saturating_duration_since(now)),
        )
    }

    fn token_wait(
        &self,
        tokens: u32,
        limit: u64,
        now: Instant,
        minute: Duration,
    ) -> Option<Duration> {
        let needed = self.token_sum + u64::from(tokens);
        if needed <= limit {
            return None;
        }
        if u64::from(tokens) > limit {
            // Never fits; tell the client to wait a whole window, as Gemini does.
            return Some(minute);
        }
        let mut excess = needed - limit;
        for (t, n) in &self.tokens {
            excess = excess.saturating_sub(u64::from(*n));
            if excess == 0 {
                return Some((*t + minute).saturating_duration_since(now));
            }
        }
        Some(minute)
    }
}

/// Quota windows of every key.
#[derive(Default)]
pub struct QuotaBook {
    keys: Mutex<HashMap<Box<str>, Windows>>,
}

impl QuotaBook {
    /// Admits (and counts) a request of `tokens` input tokens for `key`, or says which quotas it
    /// exceeds and for how long. Refused requests consume nothing.
    pub fn admit(&self, key: &str, tokens: u32, limits: &QuotaConfig, now: Instant) -> Admission {
        if !limits.any() {
            return Admission::Admitted;
        }
        let mut keys = self.keys.lock();
        let windows = match keys.get_mut(key) {
            Some(w) => w,
            None => keys.entry(Box::from(key)).or_default(),
        };
        let minute = limits.minute();
        windows.prune(now, minute);
        let mut violations = Vec::new();
        let mut retry_after = Duration::ZERO;
        let checks = [
            (
                QuotaKind::RequestsPerMinute,
                limits.rpm,
                (limits.rpm > 0)
                    .then(|| Windows::request_wait(&windows.minute, limits.rpm, minute, now))
                    .flatten(),
            ),
            (
                QuotaKind::InputTokensPerMinute,
                limits.tpm,
                (limits.tpm > 0)
                    .then(|| windows.token_wait(tokens, limits.tpm, now, minute))
                    .flatten(),
            ),
            (
                QuotaKind::RequestsPerDay,
                limits.rpd,
                (limits.rpd > 0)
                    .then(|| Windows::request_wait(&windows.day, limits.rpd, DAY, now))
                    .flatten(),
            ),
        ];
        for (kind, limit, wait) in checks {
            if let Some(wait) = wait {
                violations.push(Violation { kind, limit });
                retry_after = retry_after.max(wait);
            }
        }
        if !violations.is_empty() {
            return Admission::Limited {
                violations,
                retry_after,
            };
        }
        if limits.rpm > 0 {
            windows.minute.push_back(now);
        }
        if limits.tpm > 0 {
            windows.tokens.push_back((now, tokens));
            windows.token_sum += u64::from(tokens);
        }
        if limits.rpd > 0 {
            windows.day.push_back(now);
        }
        Admission::Admitted
    }

    /// Forgets every window of every key.
    pub fn reset(&self) {
        self.keys.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_window_slides_and_reports_wait() {
        let book = QuotaBook::default();
        let limits = QuotaConfig {
            rpm: 2,
            ..QuotaConfig::default()
        };
        let t0 = Instant::now();
        assert_eq!(book.admit("k", 1, &limits, t0), Admission::Admitted);
        assert_eq!(
            book.admit("k", 1, &limits, t0 + Duration::from_secs(10)),
            Admission::Admitted
        );
        match book.admit("k", 1, &limits, t0 + Duration::from_secs(15)) {
            Admission::Limited {
                violations,
                retry_after,
            } => {
                assert_eq!(violations[0].kind, QuotaKind::RequestsPerMinute);
                assert_eq!(retry_after, Duration::from_secs(45));
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own window.
        assert_eq!(book.admit("other", 1, &limits, t0), Admission::Admitted);
        // The first slot frees at t0 + 60 s.
        assert_eq!(
            book.admit("k", 1, &limits, t0 + Duration::from_secs(60)),
            Admission::Admitted
        );
    }

    #[test]
    fn tpm_counts_tokens_and_waits_for_enough_to_expire() {
        let book = QuotaBook::default();
        let limits = QuotaConfig {
            tpm: 100,
            ..QuotaConfig::default()
        };
        let t0 = Instant::now();
        assert_eq!(book.admit("k", 40, &limits, t0), Admission::Admitted);
        assert_eq!(
            book.admit("k", 40, &limits, t0 + Duration::from_secs(20)),
            Admission::Admitted
        );
        match book.admit("k", 50, &limits, t0 + Duration::from_secs(30)) {
            Admission::Limited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            book.admit("k", 20, &limits, t0 + Duration::from_secs(30)),
            Admission::Admitted
        );
    }
}
