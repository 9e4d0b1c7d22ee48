//! Metrics of API keys: requests, tokens and cost per key, limits and refusals: each declared once, next to the code it measures;
//! `crate::metrics::install` describes them with the rest.

use metrics::{counter, describe_counter};

/// Chat requests by API key id (bounded by `metrics.max_key_labels`, the rest as `other`) and
/// outcome (`ok`, `cached`, `error`).
pub const KEY_REQUESTS: &str = "learning_chat_key_requests_total";

/// Model tokens charged to an API key, by key id and kind (prompt/output).
pub const KEY_TOKENS: &str = "learning_chat_key_tokens_total";

/// Estimated model cost charged to an API key, in micro-USD, by key id.
pub const KEY_COST: &str = "learning_chat_key_cost_microusd_total";

/// Requests refused 429 by a per-key or per-learner limit, by key id and limit.
pub const KEY_LIMITED: &str = "learning_chat_key_limited_total";

/// Requests refused 401/403 by the key check, by reason.
pub const AUTH_FAILURES: &str = "learning_chat_auth_failures_total";

/// Counts a chat request of key label `key` with `outcome`.
pub fn key_request(key: &str, outcome: &'static str) {
    counter!(KEY_REQUESTS, "key" => key.to_owned(), "outcome" => outcome).increment(1);
}

/// Charges model tokens and their estimated cost to key label `key`.
pub fn key_tokens(key: &str, prompt: u32, output: u32, price_in_per_m: f64, price_out_per_m: f64) {
    counter!(KEY_TOKENS, "key" => key.to_owned(), "kind" => "prompt").increment(prompt.into());
    counter!(KEY_TOKENS, "key" => key.to_owned(), "kind" => "output").increment(output.into());
    let micro_usd = f64::from(prompt) * price_in_per_m + f64::from(output) * price_out_per_m;
    counter!(KEY_COST, "key" => key.to_owned()).increment(micro_usd.round() as u64);
}

/// Counts a 429 of key label `key` by `limit`.
pub fn key_limited(key: &str, limit: &'static str) {
    counter!(KEY_LIMITED, "key" => key.to_owned(), "limit" => limit).increment(1);
}

/// Counts a request refused by the key check.
pub fn auth_failure(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(KEY_REQUESTS, "Chat requests by API key and outcome.");
    describe_counter!(KEY_TOKENS, "Model tokens charged to an API key, by kind.");
    describe_counter!(KEY_COST, "Estimated model cost per API key in micro-USD.");
    describe_counter!(KEY_LIMITED, "429s by API key and the limit hit.");
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused by the key check, by reason."
    );
}
