//! Metrics of the model calls: attempts, retries, tokens, fallbacks, circuits, Gemini keys: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use std::time::Duration;

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

/// Estimated model cost from the configured token prices, in micro-USD.
pub const UPSTREAM_COST: &str = "learning_chat_upstream_cost_microusd_total";

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

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
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
    describe_counter!(UPSTREAM_REQUESTS, "Model call attempts by outcome.");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Model call latency.");
    describe_counter!(UPSTREAM_RETRIES, "Model call retries by cause.");
    describe_counter!(UPSTREAM_TOKENS, "Model tokens by kind.");
    describe_counter!(UPSTREAM_COST, "Estimated model cost in micro-USD.");
}
