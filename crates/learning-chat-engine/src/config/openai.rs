//! `[openai]`: the default OpenAI-compatible endpoint.

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};

/// The default OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp server, OpenRouter, OpenAI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// Base URL; `/v1/chat/completions` is appended. An agent's `base_url` overrides it.
    pub base_url: String,
    /// Bearer token (also `OPENAI_API_KEY`); empty sends none, as local servers need none. An
    /// agent's `api_key_env` names another variable to read instead.
    pub api_key: Secret,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "https://api.openai.com".to_owned(),
            api_key: Secret::default(),
        }
    }
}

impl OpenAiSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let base = self.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return invalid("openai.base_url must start with http:// or https://");
        }
        Ok(())
    }
}
