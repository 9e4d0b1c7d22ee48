//! Metrics of admission: model-call concurrency, the queue and the quota: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use std::time::Duration;

/// Model calls in flight now.
pub const UPSTREAM_IN_FLIGHT: &str = "learning_chat_upstream_in_flight";

/// The model-call concurrency limit in force (derived from quota and latency, under the ceiling).
pub const UPSTREAM_LIMIT: &str = "learning_chat_upstream_concurrency_limit";

/// The recent typical model-call latency the concurrency limit is derived from.
pub const UPSTREAM_LATENCY_ESTIMATE: &str = "learning_chat_upstream_latency_estimate_seconds";

/// Questions waiting for a model slot.
pub const QUEUE_DEPTH: &str = "learning_chat_queue_depth";

/// Queued questions refused because a key holding fewer queue places took their place.
pub const QUEUE_DISPLACED: &str = "learning_chat_queue_displaced_total";

/// Time spent waiting for a model slot.
pub const QUEUE_WAIT: &str = "learning_chat_queue_wait_seconds";

/// Requests refused with 503 before reaching the model, by reason.
pub const SHED: &str = "learning_chat_requests_shed_total";

/// How long a refused question waited before it heard so, by reason.
pub const SHED_WAIT: &str = "learning_chat_shed_wait_seconds";

/// Model calls counted in the quota's sliding window right now.
pub const QUOTA_WINDOW_USED: &str = "learning_chat_quota_window_requests";

/// The configured requests-per-minute quota (0 = unlimited).
pub const QUOTA_RPM: &str = "learning_chat_quota_rpm";

/// Time spent waiting for a quota slot.
pub const QUOTA_WAIT: &str = "learning_chat_quota_wait_seconds";

/// The configured limit on questions waiting for a model slot.
pub const QUEUE_LIMIT: &str = "learning_chat_queue_limit";

/// Quota decisions taken by this server alone (Redis unavailable), on its share of what is left.
pub const QUOTA_LOCAL_DECISIONS: &str = "learning_chat_quota_local_decisions_total";

/// 1 while the quota is in its conservative mode (Redis down, or back but not yet trusted).
pub const QUOTA_CONSERVATIVE: &str = "learning_chat_quota_conservative";

/// This server's own calls written back into a Redis quota window that lacked them.
pub const QUOTA_REPUBLISHED: &str = "learning_chat_quota_republished_total";

/// Bytes the per-key limit windows hold in this process (Redis down or not configured).
pub const LIMIT_WINDOWS_BYTES: &str = "learning_chat_limit_windows_bytes";

/// Times the per-key limit windows went over their byte budget and the least recently used were
/// forgotten.
pub const LIMIT_WINDOWS_FORGOTTEN: &str = "learning_chat_limit_windows_forgotten_total";

/// Each model's configured quota, by `model` and `window` (`minute`: requests per minute,
/// `day`: requests per Pacific day; 0 = unlimited).
pub const MODEL_QUOTA_LIMIT: &str = "learning_chat_model_quota_limit";

/// Requests counted in each model's quota window now, by `model` and `window`.
pub const MODEL_QUOTA_USED: &str = "learning_chat_model_quota_used";

/// Requests each model's quota window still allows now, by `model` and `window` (only for a
/// window with a limit).
pub const MODEL_QUOTA_REMAINING: &str = "learning_chat_model_quota_remaining";

/// Questions answered by the next model of their chain because the previous one's quota had
/// no room before their deadline, by the model that had no room.
pub const SPILL_OVER: &str = "learning_chat_model_spill_over_total";

/// Sets a model's configured quota gauges.
pub fn model_quota_limits(model: &str, rpm: u32, rpd: u32) {
    gauge!(MODEL_QUOTA_LIMIT, "model" => model.to_owned(), "window" => "minute")
        .set(f64::from(rpm));
    gauge!(MODEL_QUOTA_LIMIT, "model" => model.to_owned(), "window" => "day").set(f64::from(rpd));
}

/// Sets a model's used and remaining quota gauges.
pub fn model_quota_used(model: &str, status: &super::QuotaStatus) {
    let windows = [
        (
            "minute",
            Some(status.requests_in_window),
            status.remaining_in_window,
        ),
        ("day", status.requests_today, status.remaining_today),
    ];
    for (window, used, remaining) in windows {
        if let Some(used) = used {
            gauge!(MODEL_QUOTA_USED, "model" => model.to_owned(), "window" => window)
                .set(used as f64);
        }
        if let Some(remaining) = remaining {
            gauge!(MODEL_QUOTA_REMAINING, "model" => model.to_owned(), "window" => window)
                .set(remaining as f64);
        }
    }
}

/// Exports the spill-over counter of `model` at 0, so dashboards see it before the first one.
pub fn spill_over_init(model: &str) {
    counter!(SPILL_OVER, "model" => model.to_owned()).increment(0);
}

/// Records a question spilled over from `model` to the next of its chain.
pub fn spill_over(model: &str) {
    counter!(SPILL_OVER, "model" => model.to_owned()).increment(1);
}

/// Sets the bytes the per-key limit windows hold in this process.
pub fn limit_windows_bytes(bytes: usize) {
    gauge!(LIMIT_WINDOWS_BYTES).set(bytes as f64);
}

/// Records one round of forgetting the least recently used limit windows.
pub fn limit_windows_forgotten() {
    counter!(LIMIT_WINDOWS_FORGOTTEN).increment(1);
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

/// Records a queued question displaced by another key's newcomer.
pub fn queue_displaced() {
    counter!(QUEUE_DISPLACED).increment(1);
}

/// Records a wait for a model slot.
pub fn queue_wait(waited: Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

/// Records a request refused after waiting `waited` since its trip to the model began.
pub fn shed(reason: &'static str, waited: Duration) {
    counter!(SHED, "reason" => reason).increment(1);
    histogram!(SHED_WAIT, "reason" => reason).record(waited.as_secs_f64());
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

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
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
        QUEUE_DISPLACED,
        "Queued questions refused because a key holding fewer queue places took their place."
    );
    describe_counter!(
        SHED,
        "Requests refused with 503 before the model, by reason."
    );
    describe_histogram!(
        SHED_WAIT,
        Unit::Seconds,
        "How long a refused question waited before it was refused, by reason."
    );
    describe_gauge!(
        QUOTA_WINDOW_USED,
        "Model calls in the quota's sliding window."
    );
    describe_gauge!(
        QUOTA_RPM,
        "Configured requests-per-minute quota (0 = unlimited)."
    );
    describe_histogram!(QUOTA_WAIT, Unit::Seconds, "Wait for a quota slot.");
    describe_gauge!(
        QUEUE_LIMIT,
        "Configured limit on questions waiting for a model slot."
    );
    describe_counter!(
        QUOTA_LOCAL_DECISIONS,
        "Quota decisions taken locally because Redis was unavailable."
    );
    describe_gauge!(
        QUOTA_CONSERVATIVE,
        "1 while the quota counts conservatively after Redis trouble."
    );
    describe_gauge!(
        LIMIT_WINDOWS_BYTES,
        Unit::Bytes,
        "Bytes the per-key limit windows hold in this process (admission.limit_windows_max_bytes)."
    );
    describe_counter!(
        LIMIT_WINDOWS_FORGOTTEN,
        "Rounds in which the least recently used per-key limit windows were forgotten to stay within their byte budget."
    );
    describe_gauge!(
        MODEL_QUOTA_LIMIT,
        "Each model's configured quota: requests per minute (window=minute) or per Pacific day (window=day); 0 = unlimited."
    );
    describe_gauge!(
        MODEL_QUOTA_USED,
        "Requests counted in each model's quota window (cluster-wide when Redis answers)."
    );
    describe_gauge!(
        MODEL_QUOTA_REMAINING,
        "Requests each model's quota window still allows."
    );
    describe_counter!(
        SPILL_OVER,
        "Questions answered by the next model of the chain because this model's quota had no room before their deadline."
    );
    describe_counter!(
        QUOTA_REPUBLISHED,
        "Own calls written back into the Redis quota window."
    );
}
