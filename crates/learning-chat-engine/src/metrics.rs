//! The engine's metrics: names, labels and descriptions of everything the request path measures.
//!
//! Labels are low-cardinality by construction (cache tiers, error kinds, reasons), never raw
//! messages. The HTTP crate installs the recorder and adds the HTTP metrics; the dashboard and
//! alert rules in `deploy/` use these names, and a test scrapes a running instance to keep them
//! in step.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Unit,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Cache lookups by tier (memory/redis) and result (hit/miss).
pub const CACHE_LOOKUPS: &str = "learning_chat_cache_lookups_total";

/// Answers held in the in-process cache.
pub const CACHE_ENTRIES: &str = "learning_chat_cache_entries";

/// Requests that waited for an identical question already in flight, by scope (local/cluster).
pub const COALESCED: &str = "learning_chat_coalesced_requests_total";

/// Model calls in flight now.
pub const UPSTREAM_IN_FLIGHT: &str = "learning_chat_upstream_in_flight";

/// The model-call concurrency limit in force (derived from quota and latency, under the ceiling).
pub const UPSTREAM_LIMIT: &str = "learning_chat_upstream_concurrency_limit";

/// The recent typical model-call latency the concurrency limit is derived from.
pub const UPSTREAM_LATENCY_ESTIMATE: &str = "learning_chat_upstream_latency_estimate_seconds";

/// Questions waiting for a model slot.
pub const QUEUE_DEPTH: &str = "learning_chat_queue_depth";

/// Time spent waiting for a model slot.
pub const QUEUE_WAIT: &str = "learning_chat_queue_wait_seconds";

/// Requests refused with 503 before reaching the model, by reason.
pub const SHED: &str = "learning_chat_requests_shed_total";

/// Answers from the model by the model that answered and its place in the agent's chain
/// (primary/fallback).
pub const MODEL_ANSWERS: &str = "learning_chat_model_answers_total";

/// Times a model of a chain gave up (or was skipped by its open circuit) and the next one was
/// asked, by the model given up on.
pub const MODEL_FALLBACKS: &str = "learning_chat_model_fallbacks_total";

/// Each model's circuit: 0 closed, 1 open, 2 half-open (probing).
pub const MODEL_CIRCUIT: &str = "learning_chat_model_circuit_state";

/// Gemini API keys usable now (not refused, not out of their per-day quota).
pub const API_KEYS_IN_ROTATION: &str = "learning_chat_api_keys_in_rotation";

/// Gemini API keys taken out of rotation, by reason (refused/daily_quota).
pub const API_KEYS_OUT: &str = "learning_chat_api_keys_out_total";

/// Model call attempts by outcome (ok, rate_limited, unavailable, ...).
pub const UPSTREAM_REQUESTS: &str = "learning_chat_upstream_requests_total";

/// Model call latency by outcome.
pub const UPSTREAM_DURATION: &str = "learning_chat_upstream_request_duration_seconds";

/// Retries of model calls, by the error kind that caused them.
pub const UPSTREAM_RETRIES: &str = "learning_chat_upstream_retries_total";

/// Tokens used, by kind (prompt/output).
pub const UPSTREAM_TOKENS: &str = "learning_chat_upstream_tokens_total";

/// Model calls started in the current minute (the count the per-minute log line reports).
pub const UPSTREAM_CURRENT_MINUTE: &str = "learning_chat_upstream_requests_current_minute";

/// Model calls counted in the quota's sliding window right now.
pub const QUOTA_WINDOW_USED: &str = "learning_chat_quota_window_requests";

/// The configured requests-per-minute quota (0 = unlimited).
pub const QUOTA_RPM: &str = "learning_chat_quota_rpm";

/// Time spent waiting for a quota slot.
pub const QUOTA_WAIT: &str = "learning_chat_quota_wait_seconds";

/// Estimated model cost from the configured token prices, in micro-USD.
pub const UPSTREAM_COST: &str = "learning_chat_upstream_cost_microusd_total";

/// 1 when Redis is reachable, 0 when the service runs on its local fallbacks.
pub const REDIS_UP: &str = "learning_chat_redis_up";

/// The configured limit on questions waiting for a model slot.
pub const QUEUE_LIMIT: &str = "learning_chat_queue_limit";

/// Redis call latency by operation.
pub const REDIS_DURATION: &str = "learning_chat_redis_command_duration_seconds";

/// Times a local fallback was used because Redis failed, by operation.
pub const REDIS_FALLBACKS: &str = "learning_chat_redis_fallbacks_total";

/// Unreadable, oversized or never-expiring values found in Redis and deleted, by kind.
pub const REDIS_CORRUPT: &str = "learning_chat_redis_corrupt_values_total";

/// Questions answered with another server's shared outcome (a failure or an uncacheable
/// answer) instead of a model call of their own, by outcome kind.
pub const SHARED_OUTCOMES: &str = "learning_chat_shared_outcomes_total";

/// Questions answered with a remembered refusal (blocked prompt) without a model call.
pub const REFUSALS_REMEMBERED: &str = "learning_chat_refusals_remembered_total";

/// Waiters that asked again after the shared call ran out of its first asker's deadline.
pub const COALESCED_RETRIES: &str = "learning_chat_coalesced_retries_total";

/// Redis calls that failed or timed out, by operation (whether or not Redis was marked down).
pub const REDIS_FAILURES: &str = "learning_chat_redis_failures_total";

/// Times Redis was marked up or down, by the new state.
pub const REDIS_STATE_CHANGES: &str = "learning_chat_redis_state_changes_total";

/// Quota decisions taken by this server alone (Redis unavailable), on its share of what is left.
pub const QUOTA_LOCAL_DECISIONS: &str = "learning_chat_quota_local_decisions_total";

/// 1 while the quota is in its conservative mode (Redis down, or back but not yet trusted).
pub const QUOTA_CONSERVATIVE: &str = "learning_chat_quota_conservative";

/// This server's own calls written back into a Redis quota window that lacked them.
pub const QUOTA_REPUBLISHED: &str = "learning_chat_quota_republished_total";

/// Conversations alive now (used within `conversation.ttl_ms`; cluster-wide with Redis).
pub const CONVERSATIONS_ACTIVE: &str = "learning_chat_conversations_active";

/// Conversations started (stored).
pub const CONVERSATIONS_CREATED: &str = "learning_chat_conversations_created_total";

/// Conversations erased by `DELETE /api/v1/conversations/{id}`.
pub const CONVERSATIONS_ERASED: &str = "learning_chat_conversations_erased_total";

/// Conversations evicted from process memory at `conversation.max_conversations`.
pub const CONVERSATIONS_EVICTED: &str = "learning_chat_conversations_evicted_total";

/// Turns a conversation holds after each exchange is written.
pub const CONVERSATION_TURNS: &str = "learning_chat_conversation_turns";

/// Tokens of earlier turns sent with each follow-up.
pub const CONVERSATION_HISTORY_TOKENS: &str = "learning_chat_conversation_history_tokens";

/// Follow-ups whose older turns were left out to fit `conversation.max_history_tokens`.
pub const CONVERSATION_TRUNCATIONS: &str = "learning_chat_conversation_history_truncations_total";

/// Conversation messages refused or not stored, by reason.
pub const CONVERSATION_REFUSALS: &str = "learning_chat_conversation_refusals_total";

/// Streams cut short, by who: `client` (disconnected before the end), `upstream` (the model
/// stream was cancelled because no one was left to read it).
pub const STREAM_CANCELLATIONS: &str = "learning_chat_stream_cancellations_total";

/// Which tier answered a lookup; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    /// In-process memory.
    Memory,
    /// Redis.
    Redis,
}

impl CacheTier {
    /// Its position among the tiers (for arrays of per-tier metric handles).
    pub fn index(self) -> usize {
        match self {
            CacheTier::Memory => 0,
            CacheTier::Redis => 1,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Redis => "redis",
        }
    }
}

/// Handles of the cache-lookup counters, by tier then hit: every request looks the cache up, and a
/// lookup through the macros hashes the name and labels each time. Made only once a recorder is
/// installed ([`recorder_installed`]), so no handle can be a no-op one.
static CACHE_LOOKUP_HANDLES: [[OnceLock<Counter>; 2]; 2] = [
    [OnceLock::new(), OnceLock::new()],
    [OnceLock::new(), OnceLock::new()],
];
static RECORDER_READY: AtomicBool = AtomicBool::new(false);

/// Tells the engine the process's metrics recorder is installed: from now on its hot counters
/// keep their handles.
pub fn recorder_installed() {
    RECORDER_READY.store(true, Ordering::Release);
}

/// Records a cache lookup.
pub fn cache_lookup(tier: CacheTier, hit: bool) {
    let make = || counter!(CACHE_LOOKUPS, "tier" => tier.as_str(), "result" => if hit { "hit" } else { "miss" });
    if RECORDER_READY.load(Ordering::Acquire) {
        CACHE_LOOKUP_HANDLES[tier.index()][usize::from(hit)]
            .get_or_init(make)
            .increment(1);
    } else {
        make().increment(1);
    }
}

/// Sets the in-process cache size.
pub fn cache_entries(entries: u64) {
    gauge!(CACHE_ENTRIES, "tier" => "memory").set(entries as f64);
}

/// Records a request that joined an identical in-flight question.
pub fn coalesced(scope: &'static str) {
    counter!(COALESCED, "scope" => scope).increment(1);
}

/// Sets the concurrency limit in force.
pub fn upstream_limit(limit: usize) {
    gauge!(UPSTREAM_LIMIT).set(limit as f64);
}

/// Sets the latency estimate the concurrency limit is derived from.
pub fn upstream_latency_estimate(estimate: Duration) {
    gauge!(UPSTREAM_LATENCY_ESTIMATE).set(estimate.as_secs_f64());
}

/// Sets the model calls in flight.
pub fn upstream_in_flight(in_flight: usize) {
    gauge!(UPSTREAM_IN_FLIGHT).set(in_flight as f64);
}

/// Sets the queue depth.
pub fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

/// Sets the configured queue limit.
pub fn queue_limit(limit: usize) {
    gauge!(QUEUE_LIMIT).set(limit as f64);
}

/// Records a wait for a model slot.
pub fn queue_wait(waited: Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

/// Records a refused request.
pub fn shed(reason: &'static str) {
    counter!(SHED, "reason" => reason).increment(1);
}

/// Records one model call attempt.
pub fn upstream_request(outcome: &'static str, elapsed: Duration) {
    counter!(UPSTREAM_REQUESTS, "outcome" => outcome).increment(1);
    histogram!(UPSTREAM_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// Records a retry and its cause.
pub fn upstream_retry(cause: &'static str) {
    counter!(UPSTREAM_RETRIES, "cause" => cause).increment(1);
}

/// Records tokens used and their estimated cost.
pub fn upstream_tokens(prompt: u32, output: u32, price_in_per_m: f64, price_out_per_m: f64) {
    counter!(UPSTREAM_TOKENS, "kind" => "prompt").increment(prompt.into());
    counter!(UPSTREAM_TOKENS, "kind" => "output").increment(output.into());
    // USD per 1M tokens equals micro-USD per token.
    let micro_usd = f64::from(prompt) * price_in_per_m + f64::from(output) * price_out_per_m;
    counter!(UPSTREAM_COST).increment(micro_usd.round() as u64);
}

/// Sets the model calls started in the current minute.
pub fn upstream_current_minute(count: u64) {
    gauge!(UPSTREAM_CURRENT_MINUTE).set(count as f64);
}

/// Sets the quota gauges.
pub fn quota_rpm(rpm: u32) {
    gauge!(QUOTA_RPM).set(f64::from(rpm));
}

/// Sets the requests counted in the quota window.
pub fn quota_window_used(used: u64) {
    gauge!(QUOTA_WINDOW_USED).set(used as f64);
}

/// Records a wait for a quota slot.
pub fn quota_wait(waited: Duration) {
    histogram!(QUOTA_WAIT).record(waited.as_secs_f64());
}

/// Sets Redis reachability.
pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Records one Redis call.
pub fn redis_command(operation: &'static str, elapsed: Duration) {
    histogram!(REDIS_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
}

/// Records a local fallback taken because Redis failed.
pub fn redis_fallback(operation: &'static str) {
    counter!(REDIS_FALLBACKS, "operation" => operation).increment(1);
}

/// Counts a corrupt Redis value (`answer`, `outcome` or `lease`) that was deleted.
pub fn redis_corrupt(kind: &'static str, count: u64) {
    counter!(REDIS_CORRUPT, "kind" => kind).increment(count);
}

/// Counts an answer by the model that gave it (`fallback`: not the agent's primary).
pub fn model_answer(model: &str, fallback: bool) {
    let position = if fallback { "fallback" } else { "primary" };
    counter!(MODEL_ANSWERS, "model" => model.to_owned(), "position" => position).increment(1);
}

/// Counts a chain moving past `model`.
pub fn model_fallback(model: &str) {
    counter!(MODEL_FALLBACKS, "model" => model.to_owned()).increment(1);
}

/// Exports a model's fallback counter at 0, so a rate over it reads 0 rather than no data.
pub fn model_fallback_init(model: &str) {
    counter!(MODEL_FALLBACKS, "model" => model.to_owned()).increment(0);
}

/// Sets a model's circuit state (0 closed, 1 open, 2 half-open).
pub fn circuit_state(model: &str, state: u8) {
    gauge!(MODEL_CIRCUIT, "model" => model.to_owned()).set(f64::from(state));
}

/// Sets the number of Gemini keys in rotation.
pub fn api_keys_in_rotation(count: usize) {
    gauge!(API_KEYS_IN_ROTATION).set(count as f64);
}

/// Counts a key taken out of rotation.
pub fn api_key_out(reason: &'static str) {
    counter!(API_KEYS_OUT, "reason" => reason).increment(1);
}

/// Counts a question answered with another server's shared outcome.
pub fn shared_outcome(kind: &'static str) {
    counter!(SHARED_OUTCOMES, "kind" => kind).increment(1);
}

/// Counts a question answered with a remembered refusal.
pub fn refusal_remembered() {
    counter!(REFUSALS_REMEMBERED).increment(1);
}

/// Counts a waiter asking again after the shared call hit its first asker's deadline.
pub fn coalesced_retry() {
    counter!(COALESCED_RETRIES).increment(1);
}

/// Records a failed or timed-out Redis call.
pub fn redis_failure(operation: &'static str) {
    counter!(REDIS_FAILURES, "operation" => operation).increment(1);
}

/// Records Redis being marked up or down.
pub fn redis_state_change(up: bool) {
    counter!(REDIS_STATE_CHANGES, "to" => if up { "up" } else { "down" }).increment(1);
}

/// Records one quota decision taken locally.
pub fn quota_local_decision() {
    counter!(QUOTA_LOCAL_DECISIONS).increment(1);
}

/// Sets whether the quota is in its conservative mode.
pub fn quota_conservative(on: bool) {
    gauge!(QUOTA_CONSERVATIVE).set(if on { 1.0 } else { 0.0 });
}

/// Records own calls written back into the Redis quota window.
pub fn quota_republished(count: u64) {
    counter!(QUOTA_REPUBLISHED).increment(count);
}

/// Sets the conversations alive now.
pub fn conversations_active(count: u64) {
    gauge!(CONVERSATIONS_ACTIVE).set(count as f64);
}

/// Counts a conversation started.
pub fn conversation_created() {
    counter!(CONVERSATIONS_CREATED).increment(1);
}

/// Counts a conversation erased.
pub fn conversation_erased() {
    counter!(CONVERSATIONS_ERASED).increment(1);
}

/// Counts a conversation evicted from memory.
pub fn conversation_evicted() {
    counter!(CONVERSATIONS_EVICTED).increment(1);
}

/// Records the turns a conversation holds after an exchange.
pub fn conversation_turns(turns: usize) {
    histogram!(CONVERSATION_TURNS).record(turns as f64);
}

/// Records the history sent with a follow-up, and whether older turns were left out.
pub fn conversation_history(tokens: u32, truncated: bool) {
    histogram!(CONVERSATION_HISTORY_TOKENS).record(f64::from(tokens));
    if truncated {
        counter!(CONVERSATION_TRUNCATIONS).increment(1);
    }
}

/// Counts a conversation message refused or not stored (`busy`, `store_unavailable`,
/// `wrong_agent`, `turn_limit`, `too_large`, `not_stored`).
pub fn conversation_refused(reason: &'static str) {
    counter!(CONVERSATION_REFUSALS, "reason" => reason).increment(1);
}

/// Counts a stream cut short (`client` or `upstream`).
pub fn stream_cancelled(by: &'static str) {
    counter!(STREAM_CANCELLATIONS, "by" => by).increment(1);
}

/// Describes the engine's metrics (their help text) to the installed recorder.
pub fn describe() {
    describe_counter!(
        MODEL_ANSWERS,
        "Model answers by the model that answered and its place in the chain."
    );
    describe_counter!(
        MODEL_FALLBACKS,
        "Chains moved past a model (failed or circuit open), by that model."
    );
    describe_gauge!(
        MODEL_CIRCUIT,
        "Circuit of each model: 0 closed, 1 open, 2 half-open."
    );
    describe_gauge!(API_KEYS_IN_ROTATION, "Gemini API keys usable now.");
    describe_counter!(
        API_KEYS_OUT,
        "Gemini API keys taken out of rotation, by reason."
    );
    describe_counter!(STREAM_CANCELLATIONS, "Streams cut short, by who.");
    describe_counter!(CACHE_LOOKUPS, "Response cache lookups by tier and result.");
    describe_gauge!(CACHE_ENTRIES, "Answers held in the in-process cache.");
    describe_counter!(
        COALESCED,
        "Requests that shared an identical in-flight question."
    );
    describe_gauge!(UPSTREAM_IN_FLIGHT, "Model calls in flight.");
    describe_gauge!(UPSTREAM_LIMIT, "Model-call concurrency limit in force.");
    describe_gauge!(
        UPSTREAM_LATENCY_ESTIMATE,
        Unit::Seconds,
        "Recent typical model-call latency (sizes the concurrency limit)."
    );
    describe_gauge!(QUEUE_DEPTH, "Questions waiting for a model slot.");
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "Wait for a model slot.");
    describe_counter!(
        SHED,
        "Requests refused with 503 before the model, by reason."
    );
    describe_counter!(UPSTREAM_REQUESTS, "Model call attempts by outcome.");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Model call latency.");
    describe_counter!(UPSTREAM_RETRIES, "Model call retries by cause.");
    describe_counter!(UPSTREAM_TOKENS, "Model tokens by kind.");
    describe_gauge!(UPSTREAM_CURRENT_MINUTE, "Model calls started this minute.");
    describe_gauge!(
        QUOTA_WINDOW_USED,
        "Model calls in the quota's sliding window."
    );
    describe_gauge!(
        QUOTA_RPM,
        "Configured requests-per-minute quota (0 = unlimited)."
    );
    describe_histogram!(QUOTA_WAIT, Unit::Seconds, "Wait for a quota slot.");
    describe_counter!(UPSTREAM_COST, "Estimated model cost in micro-USD.");
    describe_gauge!(
        QUEUE_LIMIT,
        "Configured limit on questions waiting for a model slot."
    );
    describe_gauge!(REDIS_UP, "1 when Redis is reachable.");
    describe_histogram!(REDIS_DURATION, Unit::Seconds, "Redis call latency.");
    describe_counter!(
        REDIS_FALLBACKS,
        "Local fallbacks taken because Redis failed."
    );
    describe_counter!(
        REDIS_CORRUPT,
        "Corrupt or oversized Redis values deleted, by kind."
    );
    describe_counter!(
        SHARED_OUTCOMES,
        "Questions answered with another server's shared outcome, by kind."
    );
    describe_counter!(
        REFUSALS_REMEMBERED,
        "Questions answered with a remembered refusal, without a model call."
    );
    describe_gauge!(
        CONVERSATIONS_ACTIVE,
        "Conversations used within the TTL (cluster-wide with Redis)."
    );
    describe_counter!(CONVERSATIONS_CREATED, "Conversations started.");
    describe_counter!(CONVERSATIONS_ERASED, "Conversations erased on request.");
    describe_counter!(
        CONVERSATIONS_EVICTED,
        "Conversations evicted from memory at conversation.max_conversations."
    );
    describe_histogram!(
        CONVERSATION_TURNS,
        "Turns a conversation holds after each exchange."
    );
    describe_histogram!(
        CONVERSATION_HISTORY_TOKENS,
        "Tokens of earlier turns sent with each follow-up."
    );
    describe_counter!(
        CONVERSATION_TRUNCATIONS,
        "Follow-ups whose older turns were left out of the history."
    );
    describe_counter!(
        CONVERSATION_REFUSALS,
        "Conversation messages refused or not stored, by reason."
    );
    describe_counter!(
        COALESCED_RETRIES,
        "Waiters that asked again after the shared call hit its first asker's deadline."
    );
    describe_counter!(
        REDIS_FAILURES,
        "Redis calls that failed or timed out, by operation."
    );
    describe_counter!(
        REDIS_STATE_CHANGES,
        "Times Redis was marked up or down, by new state."
    );
    describe_counter!(
        QUOTA_LOCAL_DECISIONS,
        "Quota decisions taken locally because Redis was unavailable."
    );
    describe_gauge!(
        QUOTA_CONSERVATIVE,
        "1 while the quota counts conservatively after Redis trouble."
    );
    describe_counter!(
        QUOTA_REPUBLISHED,
        "Own calls written back into the Redis quota window."
    );
}
