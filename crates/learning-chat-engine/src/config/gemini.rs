//! `[gemini]`: the Gemini API (or any Gemini-compatible endpoint).

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The Gemini API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeminiSettings {
    /// API key; when empty the service answers from the offline model.
    pub api_key: Secret,
    /// Base URL of a Gemini-compatible endpoint (`/v1beta/models/...` is appended).
    pub base_url: String,
    /// TCP connect timeout to the endpoint (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "super::duration")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// More API keys, each with its own quota (also `GEMINI_API_KEY_1`, `GEMINI_API_KEY_2`, ...);
    /// requests go to a key with room. `api_key`, when set, is one of them.
    pub api_keys: Vec<Secret>,
    /// Requests per minute allowed per key and model (the provider's per-key quota); 0 = no
    /// limit of its own (only `upstream.rpm` applies).
    pub key_rpm: u32,
    /// Input tokens per minute allowed per key and model; 0 = no limit.
    pub key_input_tpm: u64,
}

impl Default for GeminiSettings {
    fn default() -> Self {
        GeminiSettings {
            api_keys: Vec::new(),
            key_rpm: 0,
            key_input_tpm: 0,
            api_key: Secret::default(),
            base_url: "https://generativelanguage.googleapis.com".to_owned(),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 256,
        }
    }
}

impl GeminiSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let base = self.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return invalid("gemini.base_url must start with http:// or https://");
        }
        Ok(())
    }

    /// Every configured key, `api_key` first, without blanks or repeats.
    pub fn keys(&self) -> Vec<Secret> {
        let mut keys: Vec<Secret> = Vec::new();
        for key in std::iter::once(&self.api_key).chain(&self.api_keys) {
            if !key.is_empty() && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        keys
    }
}
