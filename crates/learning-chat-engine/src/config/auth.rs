//! `[auth]`: API keys, per-key limits and fair sharing.

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Whether requests need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No keys: anyone who reaches the port may ask (the offline default, logged loudly).
    #[default]
    Off,
    /// Every `/api/` request needs a valid key.
    Required,
}

/// API keys, per-key limits and fair sharing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `off` (no keys) or `required`.
    pub mode: AuthMode,
    /// Server-side secret mixed into every key hash (`LEARNING_CHAT_AUTH__PEPPER`); required with
    /// `mode = "required"`. Changing it invalidates every key.
    pub pepper: Secret,
    /// Key store file used when Redis is not configured.
    pub keys_file: PathBuf,
    /// How long a key looked up in the store is trusted before it is read again
    /// (`cache_ttl_ms`); a new or revoked key takes effect within this.
    #[serde(rename = "cache_ttl_ms", with = "super::duration")]
    pub cache_ttl: Duration,
    /// While Redis is down, how long a key last seen valid keeps working (`stale_ttl_ms`).
    #[serde(rename = "stale_ttl_ms", with = "super::duration")]
    pub stale_ttl: Duration,
    /// Deprecated: `stale_ttl_secs` in seconds, read as `stale_ttl_ms` (warned about at start-up).
    #[serde(rename = "stale_ttl_secs", skip_serializing)]
    pub deprecated_stale_ttl_secs: Option<u64>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Off,
            pepper: Secret::default(),
            keys_file: PathBuf::from("api-keys.toml"),
            cache_ttl: Duration::from_secs(1),
            stale_ttl: Duration::from_secs(600),
            deprecated_stale_ttl_secs: None,
        }
    }
}

impl AuthSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == AuthMode::Required && self.pepper.expose().len() < 16 {
            return invalid(
                "auth.pepper (LEARNING_CHAT_AUTH__PEPPER) must be at least 16 characters with auth.mode = \"required\"",
            );
        }
        super::positive("auth.cache_ttl_ms", self.cache_ttl)
    }
}
