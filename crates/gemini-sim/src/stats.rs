//! Request accounting: lock-free counters on the hot path, a per-minute histogram, per-key
//! counts and a bounded ring of (arrival time, status) for exact window analysis.
//!
//! Every request that reaches a model route ends in exactly one outcome, so
//! `requests == ok + blocked + rate_limited + errors + stream_cut + cancelled + in_flight`
//! (until a reset lands while requests are in flight).

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Entries kept by the timeline ring.
pub const TIMELINE_CAPACITY: usize = 200_000;
/// Minutes kept by the per-minute histogram.
const MINUTE_SLOTS: usize = 64;
/// Distinct API keys counted separately; more are lumped under [`OTHER_KEYS`], so a client
/// sending random keys cannot grow memory without bound.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// The per-key entry for keys beyond [`MAX_TRACKED_KEYS`].
pub const OTHER_KEYS: &str = "(other)";
/// Timeline status of a request whose client went away before it was answered (nginx's code).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// A snapshot of the counters, as `GET /stats` returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls that reached the model routes (generate, stream, countTokens), whatever their fate.
    pub requests: u64,
    /// Complete 2xx answers (countTokens included).
    pub ok: u64,
    /// 429 RESOURCE_EXHAUSTED.
    pub rate_limited: u64,
    /// Every other non-2xx (auth, 404, 400, injected 500/503/504).
    pub errors: u64,
    /// 200s without an answer: the prompt was blocked (`promptFeedback.blockReason`) or the
    /// answer filtered (`finishReason: SAFETY`). Not counted in `ok`.
    pub blocked: u64,
    /// Streams deliberately cut mid-way (status 200, no finish reason), not counted in `ok`.
    pub stream_cut: u64,
    /// Requests whose client went away before the answer was complete (hangs end this way).
    pub cancelled: u64,
    /// Requests being handled now (sleeping, streaming or hanging).
    pub in_flight: u64,
    /// Most requests in flight at once since start or the last reset.
    pub in_flight_peak: u64,
    /// `streamGenerateContent` calls (any outcome).
    pub streams: u64,
    /// `countTokens` calls (any outcome).
    pub count_tokens: u64,
    /// Input tokens of answered (ok, blocked or cut) generate requests.
    pub prompt_tokens: u64,
    /// Answer tokens sent.
    pub output_tokens: u64,
    /// Injected faults by kind.
    pub faults: FaultCounts,
    /// Requests by arrival minute, oldest first (the last hour at most).
    pub per_minute: Vec<MinuteCount>,
    /// Counts per accepted API key.
    pub per_key: BTreeMap<String, KeyStats>,
    /// Counts per model asked for (known models only), so a test can see which model of a
    /// fallback chain was called how often.
    #[serde(default)]
    pub per_model: BTreeMap<String, KeyStats>,
    /// Milliseconds since start or the last reset.
    pub since_reset_ms: u64,
    /// Generate requests that carried `safetySettings`.
    #[serde(default)]
    pub with_safety_settings: u64,
    /// The `safetySettings` of the last generate request that carried any, as received.
    #[serde(default)]
    pub last_safety_settings: Option<Vec<serde_json::Value>>,
    /// The last user turn of the most recent generate requests (at most
    /// [`RECENT_PROMPTS`]), oldest first: what reached the model, for tests of what may not.
    #[serde(default)]
    pub recent_prompts: Vec<String>,
    /// The `systemInstruction` of the most recent generate requests (at most
    /// [`RECENT_PROMPTS`]), oldest first, `""` for a request without one: what the model was
    /// told to be, for tests of prompts and answer policies.
    #[serde(default)]
    pub recent_system_instructions: Vec<String>,
    /// `POST /v1/moderations` calls.
    #[serde(default)]
    pub moderations: u64,
}

/// How many recent prompts `/stats` shows.
pub const RECENT_PROMPTS: usize = 32;

/// Injected faults by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// 500 INTERNAL.
    pub error_500: u64,
    /// 503 UNAVAILABLE.
    pub error_503: u64,
    /// 504 DEADLINE_EXCEEDED.
    pub error_504: u64,
    /// Hangs.
    pub hang: u64,
    /// Cut streams.
    pub stream_cut: u64,
    /// Injected 429s (also counted in `rate_limited`).
    pub error_429: u64,
}

/// Requests that arrived in one minute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCount {
    /// Start of the minute, in unix seconds.
    pub minute: u64,
    /// Requests that arrived during it.
    pub requests: u64,
}

/// Counts for one API key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStats {
    /// Requests made with the key (after it was accepted).
    pub requests: u64,
    /// Complete 2xx answers.
    pub ok: u64,
    /// 429s.
    pub rate_limited: u64,
    /// Other non-2xx.
    pub errors: u64,
}

/// The most recent requests' arrival times and statuses (`GET /stats/timeline`), oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Size of the ring; older requests are forgotten.
    pub capacity: usize,
    /// Requests recorded since start or the last reset (may exceed `capacity`).
    pub total: u64,
    /// Arrival times in unix milliseconds, ascending.
    pub arrival_ms: Vec<u64>,
    /// HTTP status of each request (499: the client went away first).
    pub status: Vec<u16>,
}

impl Timeline {
    /// The most requests whose status passes `keep` that arrived within any `window_ms`-long
    /// window (a half-open `[t, t + window_ms)` interval).
    pub fn max_in_window(&self, window_ms: u64, keep: impl Fn(u16) -> bool) -> usize {
        let times: Vec<u64> = self
            .arrival_ms
            .iter()
            .zip(&self.status)
            .filter(|(_, s)| keep(**s))
            .map(|(t, _)| *t)
            .collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= window_ms {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A complete 2xx answer.
    Ok,
    /// 200 without an answer: a blocked prompt or a filtered (SAFETY) answer.
    Blocked,
    /// 429.
    RateLimited,
    /// Another non-2xx, with its status code.
    Error(u16),
    /// A stream cut on purpose.
    StreamCut,
}

#[derive(Default)]
struct KeyCounters {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
}

/// The live counters behind [`Stats`].
pub struct StatsCollector {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
    blocked: AtomicU64,
    stream_cut: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    in_flight_peak: AtomicU64,
    streams: AtomicU64,
    count_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    output_tokens: AtomicU64,
    faults: [AtomicU64; 6],
    /// Each slot packs `(unix minute << 32) | count`, so a slot rolls over to a new minute and
    /// counts in one atomic update.
    minutes: [AtomicU64; MINUTE_SLOTS],
    keys: RwLock<HashMap<Arc<str>, Arc<KeyCounters>>>,
    models: RwLock<HashMap<Arc<str>, Arc<KeyCounters>>>,
    /// Each slot packs `(arrival unix ms << 16) | status`; 0 is empty.
    timeline: Box<[AtomicU64]>,
    timeline_next: AtomicU64,
    reset_at_ms: Mutex<u64>,
    with_safety_settings: AtomicU64,
    moderations: AtomicU64,
    last_safety_settings: Mutex<Option<Vec<serde_json::Value>>>,
    recent_prompts: Mutex<std::collections::VecDeque<String>>,
    recent_system_instructions: Mutex<std::collections::VecDeque<String>>,
}

impl Default for StatsCollector {
    fn default() -> Self {
        StatsCollector {
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            stream_cut: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            count_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            faults: Default::default(),
            minutes: std::array::from_fn(|_| AtomicU64::new(0)),
            keys: RwLock::new(HashMap::new()),
            models: RwLock::new(HashMap::new()),
            timeline: (0..TIMELINE_CAPACITY).map(|_| AtomicU64::new(0)).collect(),
            timeline_next: AtomicU64::new(0),
            reset_at_ms: Mutex::new(unix_ms()),
            with_safety_settings: AtomicU64::new(0),
            moderations: AtomicU64::new(0),
            last_safety_settings: Mutex::new(None),
            recent_prompts: Mutex::new(std::collections::VecDeque::new()),
            recent_system_instructions: Mutex::new(std::collections::VecDeque::new()),
        }
    }
}

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl StatsCollector {
    /// Counts an arriving request and returns the guard that records its outcome when dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        let arrival_ms = unix_ms();
        self.requests.fetch_add(1, Relaxed);
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.in_flight_peak.fetch_max(now, Relaxed);
        let minute = arrival_ms / 60_000;
        let slot = &self.minutes[(minute as usize) % MINUTE_SLOTS];
        let _ = slot.fetch_update(Relaxed, Relaxed, |packed| {
            Some(if packed >> 32 == minute {
                packed + 1
            } else {
                (minute << 32) | 1
            })
        });
        RequestGuard {
            stats: Arc::clone(self),
            arrival_ms,
            key: None,
            model: None,
            outcome: None,
        }
    }

    /// Counts a stream call.
    pub fn stream_started(&self) {
        self.streams.fetch_add(1, Relaxed);
    }

    /// Counts a countTokens call.
    pub fn count_tokens_call(&self) {
        self.count_tokens.fetch_add(1, Relaxed);
    }

    /// Counts an injected fault.
    pub fn fault(&self, fault: crate::faults::Fault) {
        use crate::faults::Fault;
        let index = match fault {
            Fault::Internal => 0,
            Fault::Unavailable => 1,
            Fault::DeadlineExceeded => 2,
            Fault::Hang => 3,
            Fault::StreamCut => 4,
            Fault::QuotaExhausted => 5,
        };
        self.faults[index].fetch_add(1, Relaxed);
    }

    /// Adds answered tokens.
    pub fn tokens(&self, prompt: u32, output: u32) {
        if prompt > 0 {
            self.prompt_tokens.fetch_add(u64::from(prompt), Relaxed);
        }
        if output > 0 {
            self.output_tokens.fetch_add(u64::from(output), Relaxed);
        }
    }

    fn key_counters(&self, key: &str) -> Arc<KeyCounters> {
        Self::counters_in(&self.keys, key)
    }

    fn counters_in(
        map: &RwLock<HashMap<Arc<str>, Arc<KeyCounters>>>,
        key: &str,
    ) -> Arc<KeyCounters> {
        if let Some(counters) = map.read().get(key) {
            return Arc::clone(counters);
        }
        let mut keys = map.write();
        let name = if keys.len() >= MAX_TRACKED_KEYS && !keys.contains_key(key) {
            OTHER_KEYS
        } else {
            key
        };
        Arc::clone(keys.entry(Arc::from(name)).or_default())
    }

    /// What a generate request carried that tests look at: its `safetySettings` and its last
    /// user turn.
    pub fn request_seen(&self, request: &gemini_wire::GenerateContentRequest) {
        if let Some(settings) = &request.safety_settings {
            self.with_safety_settings.fetch_add(1, Relaxed);
            *self.last_safety_settings.lock() = Some(settings.clone());
        }
        if let Some(last) = request.contents.last() {
            let mut recent = self.recent_prompts.lock();
            if recent.len() == RECENT_PROMPTS {
                recent.pop_front();
            }
            recent.push_back(last.joined_text());
        }
        let system = request
            .system_instruction
            .as_ref()
            .map(|s| s.joined_text())
            .unwrap_or_default();
        let mut recent = self.recent_system_instructions.lock();
        if recent.len() == RECENT_PROMPTS {
            recent.pop_front();
        }
        recent.push_back(system);
    }

    /// Counts a `/v1/moderations` call.
    pub fn moderation_call(&self) {
        self.moderations.fetch_add(1, Relaxed);
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> Stats {
        let now_ms = unix_ms();
        let current_minute = now_ms / 60_000;
        let mut per_minute: Vec<MinuteCount> = self
            .minutes
            .iter()
            .map(|slot| slot.load(Relaxed))
            .filter(|packed| *packed != 0)
            .map(|packed| MinuteCount {
                minute: (packed >> 32) * 60,
                requests: packed & 0xffff_ffff,
            })
            .filter(|m| m.minute / 60 + 60 > current_minute)
            .collect();
        per_minute.sort_by_key(|m| m.minute);
        let counts = |map: &RwLock<HashMap<Arc<str>, Arc<KeyCounters>>>| {
            map.read()
                .iter()
                .map(|(key, c)| {
                    (
                        key.to_string(),
                        KeyStats {
                            requests: c.requests.load(Relaxed),
                            ok: c.ok.load(Relaxed),
                            rate_limited: c.rate_limited.load(Relaxed),
                            errors: c.errors.load(Relaxed),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let per_key = counts(&self.keys);
        let per_model = counts(&self.models);
        Stats {
            requests: self.requests.load(Relaxed),
            ok: self.ok.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            errors: self.errors.load(Relaxed),
            blocked: self.blocked.load(Relaxed),
            stream_cut: self.stream_cut.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            in_flight_peak: self.in_flight_peak.load(Relaxed),
            streams: self.streams.load(Relaxed),
            count_tokens: self.count_tokens.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            output_tokens: self.output_tokens.load(Relaxed),
            faults: FaultCounts {
                error_500: self.faults[0].load(Relaxed),
                error_503: self.faults[1].load(Relaxed),
                error_504: self.faults[2].load(Relaxed),
                hang: self.faults[3].load(Relaxed),
                stream_cut: self.faults[4].load(Relaxed),
                error_429: self.faults[5].load(Relaxed),
            },
            per_minute,
            per_key,
            per_model,
            since_reset_ms: now_ms.saturating_sub(*self.reset_at_ms.lock()),
            with_safety_settings: self.with_safety_settings.load(Relaxed),
            last_safety_settings: self.last_safety_settings.lock().clone(),
            recent_prompts: self.recent_prompts.lock().iter().cloned().collect(),
            recent_system_instructions: self
                .recent_system_instructions
                .lock()
                .iter()
                .cloned()
                .collect(),
            moderations: self.moderations.load(Relaxed),
        }
    }

    /// The timeline ring, oldest arrival first. Only requests that have finished are in it.
    pub fn timeline(&self) -> Timeline {
        let total = self.timeline_next.load(Relaxed);
        let filled =
            usize::try_from(total).map_or(self.timeline.len(), |t| t.min(self.timeline.len()));
        let mut entries: Vec<u64> = self.timeline[..filled]
            .iter()
            .map(|slot| slot.load(Relaxed))
            .filter(|packed| *packed != 0)
            .collect();
        entries.sort_unstable();
        Timeline {
            capacity: self.timeline.len(),
            total,
            arrival_ms: entries.iter().map(|p| p >> 16).collect(),
            status: entries.iter().map(|p| (p & 0xffff) as u16).collect(),
        }
    }

    /// Zeroes every counter, the histogram, per-key counts and the timeline. `in_flight` is a
    /// live gauge and is kept; the peak restarts from it. Quota windows are not touched.
    pub fn reset(&self) {
        for counter in [
            &self.requests,
            &self.ok,
            &self.rate_limited,
            &self.errors,
            &self.blocked,
            &self.stream_cut,
            &self.cancelled,
            &self.streams,
            &self.count_tokens,
            &self.prompt_tokens,
            &self.output_tokens,
            &self.timeline_next,
            &self.with_safety_settings,
            &self.moderations,
        ] {
            counter.store(0, Relaxed);
        }
        for counter in self.faults.iter().chain(self.minutes.iter()) {
            counter.store(0, Relaxed);
        }
        for slot in self.timeline.iter() {
            slot.store(0, Relaxed);
        }
        self.in_flight_peak
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.keys.write().clear();
        self.models.write().clear();
        *self.last_safety_settings.lock() = None;
        self.recent_prompts.lock().clear();
        self.recent_system_instructions.lock().clear();
        *self.reset_at_ms.lock() = unix_ms();
    }

    fn finish(
        &self,
        arrival_ms: u64,
        counters: [Option<&KeyCounters>; 2],
        outcome: Option<Outcome>,
    ) {
        self.in_flight.fetch_sub(1, Relaxed);
        let each = |count: fn(&KeyCounters) -> &AtomicU64| {
            for c in counters.into_iter().flatten() {
                count(c).fetch_add(1, Relaxed);
            }
        };
        let status = match outcome {
            None => {
                self.cancelled.fetch_add(1, Relaxed);
                STATUS_CLIENT_CLOSED
            }
            Some(Outcome::Ok) => {
                self.ok.fetch_add(1, Relaxed);
                each(|c| &c.ok);
                200
            }
            Some(Outcome::Blocked) => {
                self.blocked.fetch_add(1, Relaxed);
                200
            }
            Some(Outcome::StreamCut) => {
                self.stream_cut.fetch_add(1, Relaxed);
                200
            }
            Some(Outcome::RateLimited) => {
                self.rate_limited.fetch_add(1, Relaxed);
                each(|c| &c.rate_limited);
                429
            }
            Some(Outcome::Error(code)) => {
                self.errors.fetch_add(1, Relaxed);
                each(|c| &c.errors);
                code
            }
        };
        let index = self.timeline_next.fetch_add(1, Relaxed);
        let slot = (index % self.timeline.len() as u64) as usize;
        self.timeline[slot].store((arrival_ms << 16) | u64::from(status), Relaxed);
    }
}

/// Tracks one request from arrival to outcome. Dropping it without an outcome (the client went
/// away and the handler future was dropped) records the request as cancelled.
pub struct RequestGuard {
    stats: Arc<StatsCollector>,
    arrival_ms: u64,
    key: Option<Arc<KeyCounters>>,
    model: Option<Arc<KeyCounters>>,
    outcome: Option<Outcome>,
}

impl RequestGuard {
    /// Attributes the request to a known model.
    pub fn set_model(&mut self, model: &str) {
        let counters = StatsCollector::counters_in(&self.stats.models, model);
        counters.requests.fetch_add(1, Relaxed);
        self.model = Some(counters);
    }

    /// Attributes the request to an accepted API key.
    pub fn set_key(&mut self, key: &str) {
        let counters = self.stats.key_counters(key);
        counters.requests.fetch_add(1, Relaxed);
        self.key = Some(counters);
    }

    /// Records how the request ended (the last call wins); counted when the guard drops.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// The collector this guard reports to.
    pub fn stats(&self) -> &StatsCollector {
        &self.stats
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.stats.finish(
            self.arrival_ms,
            [self.key.as_deref(), self.model.as_deref()],
            self.outcome,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_add_up() {
        let stats = Arc::new(StatsCollector::default());
        {
            let mut a = stats.begin();
            a.set_key("k1");
            a.set_outcome(Outcome::Ok);
            let mut b = stats.begin();
            b.set_key("k1");
            b.set_outcome(Outcome::RateLimited);
            let _c = stats.begin();
            let snap = stats.snapshot();
            assert_eq!(snap.in_flight, 3);
            assert_eq!(snap.in_flight_peak, 3);
        }
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.requests,
                snap.ok,
                snap.rate_limited,
                snap.cancelled,
                snap.in_flight
            ),
            (3, 1, 1, 1, 0)
        );
        assert_eq!(snap.per_key["k1"].requests, 2);
        assert_eq!(snap.per_minute.iter().map(|m| m.requests).sum::<u64>(), 3);
        let timeline = stats.timeline();
        assert_eq!(timeline.status.len(), 3);
        assert!(timeline.status.contains(&STATUS_CLIENT_CLOSED));
        assert_eq!(timeline.max_in_window(60_000, |s| s == 200), 1);
        stats.reset();
        assert_eq!(stats.snapshot().requests, 0);
        assert!(stats.timeline().arrival_ms.is_empty());
    }

    #[test]
    fn window_max_is_exact() {
        let timeline = Timeline {
            capacity: 10,
            total: 5,
            arrival_ms: vec![0, 10, 59_999, 60_000, 60_005],
            status: vec![200, 200, 200, 200, 429],
        };
        assert_eq!(timeline.max_in_window(60_000, |s| s == 200), 3);
        assert_eq!(timeline.max_in_window(60_000, |_| true), 4);
    }
}
