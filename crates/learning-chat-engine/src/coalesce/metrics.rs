//! Metrics of one call per question (coalescing and stream fan-out): each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

/// Requests that waited for an identical question already in flight, by scope (local/cluster).
pub const COALESCED: &str = "learning_chat_coalesced_requests_total";

/// Questions answered with another server's shared outcome (a failure or an uncacheable
/// answer) instead of a model call of their own, by outcome kind.
pub const SHARED_OUTCOMES: &str = "learning_chat_shared_outcomes_total";

/// Waiters that asked again after the shared call ran out of its first asker's deadline.
pub const COALESCED_RETRIES: &str = "learning_chat_coalesced_retries_total";

/// Streams cut short, by who: `client` (disconnected before the end), `upstream` (the model
/// stream was cancelled because no one was left to read it).
pub const STREAM_CANCELLATIONS: &str = "learning_chat_stream_cancellations_total";

/// Bytes the calls in flight on this server hold (their entries and the text streamed so far).
pub const COALESCE_BYTES: &str = "learning_chat_coalesce_bytes";

/// Sets the bytes the calls in flight hold.
pub fn coalesce_bytes(bytes: usize) {
    gauge!(COALESCE_BYTES).set(bytes as f64);
}

/// Records a request that joined an identical in-flight question.
pub fn coalesced(scope: &'static str) {
    counter!(COALESCED, "scope" => scope).increment(1);
}

/// Counts a question answered with another server's shared outcome.
pub fn shared_outcome(kind: &'static str) {
    counter!(SHARED_OUTCOMES, "kind" => kind).increment(1);
}

/// Counts a waiter asking again after the shared call hit its first asker's deadline.
pub fn coalesced_retry() {
    counter!(COALESCED_RETRIES).increment(1);
}

/// Counts a stream cut short (`client` or `upstream`).
pub fn stream_cancelled(by: &'static str) {
    counter!(STREAM_CANCELLATIONS, "by" => by).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_gauge!(
        COALESCE_BYTES,
        Unit::Bytes,
        "Bytes the calls in flight on this server hold (entries and text streamed so far)."
    );
    describe_counter!(STREAM_CANCELLATIONS, "Streams cut short, by who.");
    describe_counter!(
        COALESCED,
        "Requests that shared an identical in-flight question."
    );
    describe_counter!(
        SHARED_OUTCOMES,
        "Questions answered with another server's shared outcome, by kind."
    );
    describe_counter!(
        COALESCED_RETRIES,
        "Waiters that asked again after the shared call hit its first asker's deadline."
    );
}
