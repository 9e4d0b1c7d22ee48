//! Metrics of the Redis link: health, latency, fallbacks and repaired values: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use std::time::Duration;

/// 1 when Redis is reachable, 0 when the service runs on its local fallbacks.
pub const REDIS_UP: &str = "learning_chat_redis_up";

/// Redis call latency by operation.
pub const REDIS_DURATION: &str = "learning_chat_redis_command_duration_seconds";

/// Times a local fallback was used because Redis failed, by operation.
pub const REDIS_FALLBACKS: &str = "learning_chat_redis_fallbacks_total";

/// Unreadable, oversized or never-expiring values found in Redis and deleted, by kind.
pub const REDIS_CORRUPT: &str = "learning_chat_redis_corrupt_values_total";

/// Redis calls that failed or timed out, by operation (whether or not Redis was marked down).
pub const REDIS_FAILURES: &str = "learning_chat_redis_failures_total";

/// Times Redis was marked up or down, by the new state.
pub const REDIS_STATE_CHANGES: &str = "learning_chat_redis_state_changes_total";

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

/// Records a failed or timed-out Redis call.
pub fn redis_failure(operation: &'static str) {
    counter!(REDIS_FAILURES, "operation" => operation).increment(1);
}

/// Records Redis being marked up or down.
pub fn redis_state_change(up: bool) {
    counter!(REDIS_STATE_CHANGES, "to" => if up { "up" } else { "down" }).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
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
        REDIS_FAILURES,
        "Redis calls that failed or timed out, by operation."
    );
    describe_counter!(
        REDIS_STATE_CHANGES,
        "Times Redis was marked up or down, by new state."
    );
}
