//! Metrics of API keys: requests, tokens and cost per key, limits and refusals: each declared once, next to the code it measures;
//! `crate::metrics::install` describes them with the rest.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::time::Duration;

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

/// API keys this server holds in memory.
pub const AUTH_KEYS: &str = "learning_chat_auth_keys";

/// Keys in the database this server did not load because it holds `auth.max_keys` already.
pub const AUTH_KEYS_SKIPPED: &str = "learning_chat_auth_keys_skipped_total";

/// Reads of the key table by this server, by kind (`full`: the whole table, `changes`: a poll).
/// Requests never read it: this moves with `database.key_refresh_ms`, not with traffic.
pub const AUTH_KEY_READS: &str = "learning_chat_auth_key_reads_total";

/// Seconds since this server's key set last matched the database (0 while refreshes succeed):
/// how long revocations may have gone unseen during a database outage or partition.
pub const AUTH_KEYS_AGE: &str = "learning_chat_auth_keys_age_seconds";

/// Sets the number of keys held.
pub fn keys_held(count: usize) {
    gauge!(AUTH_KEYS).set(count as f64);
}

/// Counts keys not loaded for want of room.
pub fn keys_skipped(count: u64) {
    counter!(AUTH_KEYS_SKIPPED).increment(count);
}

/// Counts one read of the key table.
pub fn key_read(kind: &'static str) {
    counter!(AUTH_KEY_READS, "kind" => kind).increment(1);
}

/// Sets how long ago the key set last matched the database.
pub fn keys_age(age: Duration) {
    gauge!(AUTH_KEYS_AGE).set(age.as_secs_f64());
}

/// A key's request counters, resolved once per key: counting a request is then an atomic add,
/// not a registry look-up with its label strings.
#[derive(Debug)]
pub struct KeyRequests {
    /// The key's metric label (its id, or `other` past `metrics.max_key_labels`).
    pub label: std::sync::Arc<str>,
    ok: metrics::Counter,
    cached: metrics::Counter,
    error: metrics::Counter,
}

impl KeyRequests {
    /// The counters of key label `label`.
    pub fn new(label: std::sync::Arc<str>) -> KeyRequests {
        let of = |outcome: &'static str| counter!(KEY_REQUESTS, "key" => label.to_string(), "outcome" => outcome);
        KeyRequests {
            ok: of("ok"),
            cached: of("cached"),
            error: of("error"),
            label,
        }
    }

    /// Counts a request answered by the model.
    pub fn ok(&self) {
        self.ok.increment(1);
    }

    /// Counts a request answered from the cache.
    pub fn cached(&self) {
        self.cached.increment(1);
    }

    /// Counts a request without an answer.
    pub fn error(&self) {
        self.error.increment(1);
    }
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
    describe_gauge!(AUTH_KEYS, "API keys this server holds in memory.");
    describe_counter!(
        AUTH_KEYS_SKIPPED,
        "API keys not loaded because this server holds auth.max_keys already."
    );
    describe_counter!(
        AUTH_KEY_READS,
        "Reads of the key table by this server (full loads and change polls)."
    );
    describe_gauge!(
        AUTH_KEYS_AGE,
        "Seconds since this server's key set last matched the records database."
    );
    learning_chat_records::ledger::describe();
}
