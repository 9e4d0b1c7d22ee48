//! Metrics of the chat flow: the per-minute model-call counter and remembered refusals: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{counter, describe_counter, describe_gauge, gauge};

/// Model calls started in the current minute (the count the per-minute log line reports).
pub const UPSTREAM_CURRENT_MINUTE: &str = "learning_chat_upstream_requests_current_minute";

/// Questions answered with a remembered refusal (blocked prompt) without a model call.
pub const REFUSALS_REMEMBERED: &str = "learning_chat_refusals_remembered_total";

/// Bytes the remembered refusals take (`cache.refusal_max_bytes`).
pub const REFUSALS_BYTES: &str = "learning_chat_refusals_bytes";

/// Sets the bytes the remembered refusals take.
pub fn refusals_bytes(bytes: u64) {
    gauge!(REFUSALS_BYTES).set(bytes as f64);
}

/// Sets the model calls started in the current minute.
pub fn upstream_current_minute(count: u64) {
    gauge!(UPSTREAM_CURRENT_MINUTE).set(count as f64);
}

/// Counts a question answered with a remembered refusal.
pub fn refusal_remembered() {
    counter!(REFUSALS_REMEMBERED).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_gauge!(UPSTREAM_CURRENT_MINUTE, "Model calls started this minute.");
    describe_gauge!(
        REFUSALS_BYTES,
        metrics::Unit::Bytes,
        "Bytes the remembered refusals take (cache.refusal_max_bytes)."
    );
    describe_counter!(
        REFUSALS_REMEMBERED,
        "Questions answered with a remembered refusal, without a model call."
    );
}
