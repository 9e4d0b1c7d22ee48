//! Metrics of safety: flags raised, their webhook deliveries, moderation checks.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Flags raised, by category (short, bounded) and source.
pub const FLAGS: &str = "learning_chat_flags_total";

/// Flags that could not be stored (the records database down or absent).
pub const FLAGS_LOST: &str = "learning_chat_flags_unstored_total";

/// Seconds from a flag being raised to its webhook delivery being acknowledged.
pub const WEBHOOK_LAG: &str = "learning_chat_webhook_delivery_lag_seconds";

/// Webhook delivery attempts, by outcome (`delivered`, `failed`).
pub const WEBHOOK_ATTEMPTS: &str = "learning_chat_webhook_attempts_total";

/// Flags waiting for delivery.
pub const WEBHOOK_PENDING: &str = "learning_chat_webhook_pending";

/// Age in seconds of the oldest flag waiting for delivery (0 when none waits).
pub const WEBHOOK_OLDEST: &str = "learning_chat_webhook_oldest_pending_seconds";

/// Learner messages with personal data replaced (`privacy.redact`).
pub const REDACTED: &str = "learning_chat_messages_redacted_total";

/// Answers given with the crisis text.
pub const CRISIS_ANSWERS: &str = "learning_chat_crisis_answers_total";

/// Moderation checks, by outcome (`passed`, `flagged`, `skipped`, `refused`).
pub const MODERATION: &str = "learning_chat_moderation_checks_total";

/// The metric label of a flag category: Gemini's four harm categories, moderation's, or
/// `blocked`; anything else is `other`, so the label set stays small.
pub fn category_label(category: &str) -> &'static str {
    match category {
        "HARM_CATEGORY_HARASSMENT" | "harassment" => "harassment",
        "HARM_CATEGORY_HATE_SPEECH" | "hate" => "hate_speech",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT" | "sexual" | "sexual/minors" => "sexually_explicit",
        "HARM_CATEGORY_DANGEROUS_CONTENT" => "dangerous_content",
        "violence" | "violence/graphic" => "violence",
        "self-harm" | "self-harm/intent" | "self-harm/instructions" => "self_harm",
        "blocked" => "blocked",
        _ => "other",
    }
}

/// Counts one flag.
pub fn flag_raised(category: &str, source: &'static str) {
    counter!(FLAGS, "category" => category_label(category), "source" => source).increment(1);
}

/// Counts flags that could not be stored.
pub fn flags_unstored(count: usize) {
    counter!(FLAGS_LOST).increment(count as u64);
}

/// Records one delivery attempt; `lag` is set when it was acknowledged.
pub fn webhook_attempt(delivered: bool, lag_seconds: Option<f64>) {
    let outcome = if delivered { "delivered" } else { "failed" };
    counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
    if let Some(lag) = lag_seconds {
        histogram!(WEBHOOK_LAG).record(lag);
    }
}

/// Sets the outbox gauges.
pub fn webhook_pending(count: i64, oldest_seconds: f64) {
    gauge!(WEBHOOK_PENDING).set(count as f64);
    gauge!(WEBHOOK_OLDEST).set(oldest_seconds);
}

/// Counts a learner message with personal data replaced.
pub fn redacted() {
    counter!(REDACTED).increment(1);
}

/// Counts an answer given with the crisis text.
pub fn crisis_answer() {
    counter!(CRISIS_ANSWERS).increment(1);
}

/// Counts one moderation check.
pub fn moderation(outcome: &'static str) {
    counter!(MODERATION, "outcome" => outcome).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(FLAGS, "Safety flags raised, by category and source.");
    describe_counter!(
        FLAGS_LOST,
        "Safety flags that could not be stored (records database down or not configured)."
    );
    describe_histogram!(
        WEBHOOK_LAG,
        metrics::Unit::Seconds,
        "Time from a flag being raised to its webhook delivery being acknowledged."
    );
    describe_counter!(WEBHOOK_ATTEMPTS, "Webhook delivery attempts, by outcome.");
    describe_gauge!(WEBHOOK_PENDING, "Flags waiting for webhook delivery.");
    describe_gauge!(
        WEBHOOK_OLDEST,
        metrics::Unit::Seconds,
        "Age of the oldest flag waiting for webhook delivery."
    );
    describe_counter!(
        REDACTED,
        "Learner messages with personal data replaced by placeholders (privacy.redact)."
    );
    describe_counter!(CRISIS_ANSWERS, "Answers given with the crisis text.");
    describe_counter!(
        MODERATION,
        "Moderation checks of learner messages, by outcome."
    );
}
