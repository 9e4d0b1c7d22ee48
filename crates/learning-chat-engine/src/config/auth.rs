//! `[auth]`: API keys, per-key limits and fair sharing.

use super::{invalid, ConfigError, DatabaseSettings, Secret};
use serde::{Deserialize, Serialize};
use std::num::{NonZero, NonZeroUsize};
use std::path::PathBuf;

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

/// API keys, per-key limits and fair sharing. The keys themselves live in the records database
/// (`[database]`); every server holds all of them in memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `off` (no keys) or `required`.
    pub mode: AuthMode,
    /// Server-side secret mixed into every key hash (`LEARNING_CHAT_AUTH__PEPPER`); required with
    /// `mode = "required"`. Changing it invalidates every key.
    pub pepper: Secret,
    /// Most keys one server holds in memory: keys beyond it are not loaded (they get 401) and
    /// counted by `learning_chat_auth_keys_skipped_total`, so a runaway table cannot exhaust
    /// memory.
    pub max_keys: NonZeroUsize,
    /// Deprecated: the old file key store. Read only by `learning-chat migrate-keys` (its
    /// default `--from-file`); the server ignores it (warned about at start-up).
    #[serde(skip_serializing)]
    pub keys_file: Option<PathBuf>,
    /// Deprecated and ignored: the old per-lookup cache of the key store.
    #[serde(rename = "cache_ttl_ms", skip_serializing)]
    pub deprecated_cache_ttl_ms: Option<u64>,
    /// Deprecated and ignored: the old fallback to stale keys while Redis was down.
    #[serde(rename = "stale_ttl_ms", skip_serializing)]
    pub deprecated_stale_ttl_ms: Option<u64>,
    /// Deprecated and ignored: `stale_ttl_ms` in seconds.
    #[serde(rename = "stale_ttl_secs", skip_serializing)]
    pub deprecated_stale_ttl_secs: Option<u64>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Off,
            pepper: Secret::default(),
            max_keys: const { NonZero::new(100_000).unwrap() },
            keys_file: None,
            deprecated_cache_ttl_ms: None,
            deprecated_stale_ttl_ms: None,
            deprecated_stale_ttl_secs: None,
        }
    }
}

impl AuthSettings {
    /// Checks values that parse but cannot work; keys need the records database.
    pub fn validate(&self, database: &DatabaseSettings) -> Result<(), ConfigError> {
        if self.mode == AuthMode::Required && self.pepper.expose().len() < 16 {
            return invalid(
                "auth.pepper (LEARNING_CHAT_AUTH__PEPPER) must be at least 16 characters with auth.mode = \"required\"",
            );
        }
        if self.mode == AuthMode::Required && database.url().is_none() {
            return invalid(
                "auth.mode = \"required\" needs the records database, where API keys live: set database.url (sqlite://<file> or postgres://...), not none",
            );
        }
        Ok(())
    }

    /// One start-up warning for each key of the old key stores found in the settings.
    pub fn deprecations(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.keys_file.is_some() {
            found.push(
                "auth.keys_file is deprecated: API keys live in the records database \
                 (database.url); the server ignores the file. Move its keys once with \
                 `learning-chat migrate-keys --from-file <path>`, then remove the setting"
                    .to_owned(),
            );
        }
        for (key, set) in [
            ("auth.cache_ttl_ms", self.deprecated_cache_ttl_ms.is_some()),
            ("auth.stale_ttl_ms", self.deprecated_stale_ttl_ms.is_some()),
            (
                "auth.stale_ttl_secs",
                self.deprecated_stale_ttl_secs.is_some(),
            ),
        ] {
            if set {
                found.push(format!(
                    "{key} is deprecated and ignored: every server holds every API key in \
                     memory and reads changes every database.key_refresh_ms; remove it"
                ));
            }
        }
        found
    }
}
