//! The simulator's settings: one serde struct so the binary's flags, `GET/POST /config` and the
//! library's [`SimServer::update_config`](crate::SimServer::update_config) all speak the same shape.

use gemini_wire::respond::AnswerSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Models known by default: the Gemini API's current text models.
pub const DEFAULT_MODELS: &[&str] = &[
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
];

/// Reference model-call time: 2.8 s per request, the latency the capacity plan assumes.
pub const SEED_LATENCY_MS: u64 = 2800;

/// Everything the simulator can be told. Every field has a default, so a partial JSON object
/// (as `POST /config` takes) deserializes into a whole config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Model ids accepted in `/v1beta/models/{model}:...`; others get 404 NOT_FOUND.
    pub models: Vec<String>,
    /// Accepted API keys. Empty: any non-empty key is accepted (quotas are still counted per key).
    pub api_keys: Vec<String>,
    /// How long a whole answer takes (for streams: the time to the first chunk, unless
    /// [`StreamConfig::first_chunk_ms`] is set).
    pub latency: Latency,
    /// Chunking and pacing of `streamGenerateContent`.
    pub stream: StreamConfig,
    /// Per-key quotas (counted per key and model, as Gemini counts per project and model);
    /// 0 means unlimited.
    pub quota: QuotaConfig,
    /// Quotas of particular keys, replacing `quota` for them (e.g. one key with a small
    /// per-day quota while the others have none).
    pub key_quotas: BTreeMap<String, QuotaConfig>,
    /// Keys that exist but are refused with 403 PERMISSION_DENIED (a revoked or leaked key),
    /// unlike unknown keys, which get Gemini's 400 API_KEY_INVALID.
    pub revoked_keys: Vec<String>,
    /// Fault injection rates.
    pub faults: FaultConfig,
    /// Fault rates of particular models, replacing `faults` for them (e.g. 503 at 100% for the
    /// primary model of a fallback chain while the fallback answers).
    pub model_faults: BTreeMap<String, FaultConfig>,
    /// The OpenAI-compatible mode (`POST /v1/chat/completions`).
    pub openai: OpenAiConfig,
    /// Length of a generated answer, in tokens (a token is 4 characters, rounded up).
    pub answer_tokens: u32,
    /// Thinking tokens reported in `usageMetadata.thoughtsTokenCount` by thinking models (2.5 and
    /// 3 families) unless the request sets `thinkingBudget: 0`. 0 (the default) reports none.
    /// They are billed in `totalTokenCount` but do not eat into `maxOutputTokens`.
    pub thinking_tokens: u32,
    /// A prompt containing this text is blocked (`promptFeedback.blockReason`). Empty: never.
    pub block_trigger: String,
    /// The `blockReason` given to blocked prompts.
    pub block_reason: String,
    /// A prompt containing this text gets its answer filtered: one candidate with no text,
    /// `finishReason: SAFETY` and the safety ratings, as Gemini does when the model's output (not
    /// the prompt) trips a filter. Empty: never.
    pub safety_trigger: String,
    /// A prompt containing this text is answered but rated `HARM_CATEGORY_DANGEROUS_CONTENT`
    /// `HIGH` (in `promptFeedback.safetyRatings` and the candidate's `safetyRatings`). Empty:
    /// never.
    pub harm_trigger: String,
    /// A `/v1/moderations` input containing this text is flagged `self-harm`. Empty: never.
    pub self_harm_trigger: String,
    /// Upper bound of the "hang" fault: after this long the request gets a 504, so a client that
    /// never times out does not pin a task forever.
    pub hang_max_ms: u64,
    /// `usageMetadata.serviceTier`; `None` leaves the field out (as gemini-3-pro-preview does).
    pub service_tier: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            api_keys: Vec::new(),
            latency: Latency::None,
            stream: StreamConfig::default(),
            quota: QuotaConfig::default(),
            key_quotas: BTreeMap::new(),
            revoked_keys: Vec::new(),
            faults: FaultConfig::default(),
            model_faults: BTreeMap::new(),
            openai: OpenAiConfig::default(),
            answer_tokens: ANSWER.answer_tokens,
            thinking_tokens: ANSWER.thinking_tokens,
            block_trigger: ANSWER.block_trigger.to_owned(),
            block_reason: ANSWER.block_reason.to_owned(),
            safety_trigger: ANSWER.safety_trigger.to_owned(),
            harm_trigger: ANSWER.harm_trigger.to_owned(),
            self_harm_trigger: String::new(),
            hang_max_ms: 600_000,
            service_tier: ANSWER.service_tier.map(str::to_owned),
        }
    }
}

/// The answer defaults are defined once, next to the builders that use them.
const ANSWER: AnswerSettings<'static> = AnswerSettings::DEFAULT;

impl SimConfig {
    /// The settings that shape an answer, borrowed from this configuration.
    pub fn answer_settings(&self) -> AnswerSettings<'_> {
        AnswerSettings {
            answer_tokens: self.answer_tokens,
            thinking_tokens: self.thinking_tokens,
            block_trigger: &self.block_trigger,
            block_reason: &self.block_reason,
            safety_trigger: &self.safety_trigger,
            harm_trigger: &self.harm_trigger,
            service_tier: self.service_tier.as_deref(),
            chunk_tokens: self.stream.chunk_tokens,
        }
    }

    /// The fault rates that apply to `model`.
    pub fn faults_for(&self, model: &str) -> &FaultConfig {
        self.model_faults.get(model).unwrap_or(&self.faults)
    }

    /// The quotas that apply to `key`.
    pub fn quota_for(&self, key: &str) -> &QuotaConfig {
        self.key_quotas.get(key).unwrap_or(&self.quota)
    }

    /// `--preset seed`: every request takes a fixed 2.8 s, like a full model answer; no quotas,
    /// no faults.
    pub fn seed_preset() -> Self {
        SimConfig {
            latency: Latency::Fixed {
                ms: SEED_LATENCY_MS,
            },
            ..SimConfig::default()
        }
    }

    /// Checks values the simulator cannot act on sensibly (rates outside 0..=1, inverted
    /// ranges). The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("faults.error_500", self.faults.error_500),
            ("faults.error_503", self.faults.error_503),
            ("faults.error_504", self.faults.error_504),
            ("faults.stream_cut", self.faults.stream_cut),
            ("faults.hang", self.faults.hang),
            ("faults.error_429", self.faults.error_429),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..=1, got {rate}"));
            }
        }
        for (model, faults) in &self.model_faults {
            for rate in [
                faults.error_500,
                faults.error_503,
                faults.error_504,
                faults.stream_cut,
                faults.hang,
                faults.error_429,
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "model_faults.{model}: rates must be within 0..=1, got {rate}"
                    ));
                }
            }
        }
        match self.latency {
            Latency::Uniform { min_ms, max_ms } if min_ms > max_ms => {
                return Err(format!(
                    "latency.min_ms ({min_ms}) is greater than latency.max_ms ({max_ms})"
                ));
            }
            Latency::LogNormal { median_ms, p99_ms } if median_ms == 0 || p99_ms < median_ms => {
                return Err(format!(
                    "latency.median_ms ({median_ms}) must be > 0 and <= latency.p99_ms ({p99_ms})"
                ));
            }
            _ => {}
        }
        if self.stream.chunk_tokens == 0 {
            return Err("stream.chunk_tokens must be at least 1".to_owned());
        }
        if self.models.is_empty() {
            return Err("models must list at least one model".to_owned());
        }
        Ok(())
    }

    /// Returns this config with `patch` merged over it (objects merge key by key, everything else
    /// replaces), as `POST /config` does.
    pub fn merged(&self, patch: &Value) -> Result<SimConfig, String> {
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_json(&mut current, patch);
        let merged: SimConfig = serde_json::from_value(current).map_err(|e| e.to_string())?;
        merged.validate()?;
        Ok(merged)
    }
}

/// Deep merge: objects merge recursively; any other patch value replaces the target.
fn merge_json(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(slot) => merge_json(slot, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Latency of a whole answer. JSON: `{"kind":"fixed","ms":2800}`, `{"kind":"uniform",
/// "min_ms":..,"max_ms":..}`, `{"kind":"log_normal","median_ms":..,"p99_ms":..}` or
/// `{"kind":"none"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Latency {
    /// Answer at once, without ever touching the timer.
    #[default]
    None,
    /// Always the same delay.
    Fixed {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Uniformly distributed between the bounds (inclusive).
    Uniform {
        /// Lower bound in milliseconds.
        min_ms: u64,
        /// Upper bound in milliseconds.
        max_ms: u64,
    },
    /// Log-normal with the given median and 99th percentile: the long right tail real LLM
    /// latencies have.
    LogNormal {
        /// Median in milliseconds.
        median_ms: u64,
        /// 99th percentile in milliseconds.
        p99_ms: u64,
    },
}

/// Pacing of `streamGenerateContent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// Time to the first chunk; `None` uses a sample of [`SimConfig::latency`].
    pub first_chunk_ms: Option<u64>,
    /// Delay between consecutive chunks.
    pub chunk_delay_ms: u64,
    /// Answer tokens per chunk (Gemini sends a few dozen per event).
    pub chunk_tokens: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            first_chunk_ms: None,
            chunk_delay_ms: 0,
            chunk_tokens: ANSWER.chunk_tokens,
        }
    }
}

/// Per-API-key quotas, each over a sliding window; 0 means unlimited. Windows are only recorded
/// while their limit is set, so a limit switched on at run time starts from an empty window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaConfig {
    /// Requests per 60 s.
    pub rpm: u64,
    /// Input (prompt) tokens per 60 s.
    pub tpm: u64,
    /// Requests per 24 h.
    pub rpd: u64,
    /// Word the 429 like the free tier does (`-FreeTier` quota ids, `free_tier` metrics)
    /// instead of the paid tier.
    pub free_tier: bool,
    /// Length of the "per minute" windows in ms: 60000 as Gemini counts. Shorter windows only
    /// compress time, so a test can see a 429's `retryDelay` run out in seconds.
    pub minute_ms: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            rpm: 0,
            tpm: 0,
            rpd: 0,
            free_tier: false,
            minute_ms: 60_000,
        }
    }
}

impl QuotaConfig {
    /// The per-minute window.
    pub fn minute(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.minute_ms.max(1))
    }

    /// True when any quota is set, i.e. the quota book must be consulted.
    pub fn any(&self) -> bool {
        self.rpm > 0 || self.tpm > 0 || self.rpd > 0
    }
}

/// The OpenAI-compatible mode: `POST /v1/chat/completions` answers in the Chat Completions
/// format (as vLLM, Ollama, llama.cpp server and OpenAI do), with the same answer generator,
/// latency and per-model faults as the Gemini routes, and its own request quota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiConfig {
    /// Requests per minute over all keys; 0 = unlimited. Over it: 429 with `retry-after` and
    /// `x-ratelimit-*` headers.
    pub rpm: u64,
    /// Accepted bearer tokens. Empty: any request is accepted (as a local server is).
    pub api_keys: Vec<String>,
    /// Accepted model names. Empty: any.
    pub models: Vec<String>,
}

/// Probabilities (0..=1) of each injected fault, rolled once per generate request (and the
/// injected 429's retry delay). If they add up to more than 1, the ones listed later are
/// squeezed out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// 500 INTERNAL.
    pub error_500: f64,
    /// 503 UNAVAILABLE "The model is overloaded".
    pub error_503: f64,
    /// 504 DEADLINE_EXCEEDED.
    pub error_504: f64,
    /// The response never comes (until the client leaves or `hang_max_ms` passes).
    pub hang: f64,
    /// A stream is cut mid-way: some chunks, then the connection closes without `finishReason`.
    /// Applies to `streamGenerateContent` only.
    pub stream_cut: f64,
    /// 429 RESOURCE_EXHAUSTED with the recorded body's QuotaFailure, Help and RetryInfo, as when
    /// the project's quota is used up by someone else (another service on the same key). It is
    /// answered at once, before any latency, like a real quota refusal, and consumes no quota.
    pub error_429: f64,
    /// `RetryInfo.retryDelay` of the injected 429, in ms (the recorded body says 26 s).
    pub error_429_retry_delay_ms: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_500: 0.0,
            error_503: 0.0,
            error_504: 0.0,
            hang: 0.0,
            stream_cut: 0.0,
            error_429: 0.0,
            error_429_retry_delay_ms: 26_000,
        }
    }
}

impl FaultConfig {
    /// True when some fault can happen, i.e. a random roll is needed.
    pub fn any(&self) -> bool {
        self.error_500 > 0.0
            || self.error_503 > 0.0
            || self.error_504 > 0.0
            || self.hang > 0.0
            || self.stream_cut > 0.0
            || self.error_429 > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_patch_merges_over_current() {
        let base = SimConfig::seed_preset();
        let patched = base
            .merged(&serde_json::json!({"quota": {"rpm": 5}, "faults": {"error_503": 0.5}}))
            .unwrap();
        assert_eq!(patched.quota.rpm, 5);
        assert_eq!(patched.faults.error_503, 0.5);
        assert_eq!(patched.latency, Latency::Fixed { ms: 2800 });
        assert_eq!(patched.answer_tokens, 120);
        let switched = patched
            .merged(&serde_json::json!({"latency": {"kind": "uniform", "min_ms": 1, "max_ms": 3}}))
            .unwrap();
        assert_eq!(
            switched.latency,
            Latency::Uniform {
                min_ms: 1,
                max_ms: 3
            }
        );
        assert!(patched
            .merged(&serde_json::json!({"faults": {"hang": 2.0}}))
            .is_err());
    }
}
