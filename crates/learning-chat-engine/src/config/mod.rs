//! Settings: built-in defaults < optional TOML file < environment, validated once at start-up.
//!
//! Each section (`[server]`, `[upstream]`, ...) lives in its own module with its struct, defaults
//! and checks; this module layers the sources, handles the deprecated keys and prints the result.
//! Durations are [`Duration`]s (read as milliseconds or humantime strings, see [`duration`]) and
//! counts that must be positive are `NonZero*`, so a zero is refused here, naming its key.
//!
//! Every key is documented in `docs/configuration.md`; keep the two in step. Environment variables
//! use the `LEARNING_CHAT_` prefix with `__` between section and key
//! (`LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=50`); the older plain names (`GEMINI_API_KEY`,
//! `GEMINI_BASE_URL`, `REDIS_URL`, `REDIS_HOST`, `REDIS_PORT`, `SENTRY_DSN`) keep working.

mod admission;
mod agents;
mod auth;
mod cache;
mod conversation;
mod database;
pub mod duration;
mod experiments;
mod gemini;
mod metrics;
mod models;
mod offline;
mod openai;
pub mod placeholders;
mod records;
mod redis;
mod routing;
mod safety;
mod server;
mod stream;
mod telemetry;
#[cfg(test)]
mod tests;
mod upstream;

pub use admission::AdmissionSettings;
pub use agents::AgentSettings;
pub use auth::{AuthMode, AuthSettings};
pub use cache::{CacheScope, CacheSettings};
pub use conversation::ConversationSettings;
pub use database::{DatabaseSettings, DatabaseUrl};
pub use experiments::{
    unix_ms as experiment_time, ExperimentSettings, ExperimentUnit, VariantSettings,
};
pub use gemini::GeminiSettings;
pub use metrics::MetricsSettings;
pub use models::{quota_of, ModelQuota, ModelQuotaSettings, ModelSettings};
pub use offline::OfflineSettings;
pub use openai::OpenAiSettings;
pub use records::RecordsSettings;
pub use redis::RedisSettings;
pub use routing::RoutingSettings;
pub use safety::{
    check_thresholds, CrisisMode, KeySafety, ModerationKind, PrivacySettings, SafetySettings,
    HARM_CATEGORIES, PROBABILITIES,
};
pub use server::ServerSettings;
pub use stream::StreamSettings;
pub use telemetry::{LogFormat, TelemetrySettings};
pub use upstream::UpstreamSettings;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming an optional TOML config file.
pub const CONFIG_FILE_ENV: &str = "LEARNING_CHAT_CONFIG";

/// A secret that never prints: Debug, Display and Serialize all show a mask.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    fn masked(&self) -> &'static str {
        if self.is_empty() {
            ""
        } else {
            "********"
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.masked())
    }
}

/// All settings of the service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener and request limits.
    pub server: ServerSettings,
    /// The Gemini API (or any Gemini-compatible endpoint).
    pub gemini: GeminiSettings,
    /// Bounds on calls to the model: concurrency, queue, quota, retries.
    pub upstream: UpstreamSettings,
    /// The response cache.
    pub cache: CacheSettings,
    /// Redis shared state; disabled unless a URL or host is given.
    pub redis: RedisSettings,
    /// The tutor agents.
    pub agents: AgentSettings,
    /// The offline model used when no API key is set.
    pub offline: OfflineSettings,
    /// Logs, metrics and error tracking.
    pub telemetry: TelemetrySettings,
    /// Multi-turn conversations: storage, lifetime and bounds.
    pub conversation: ConversationSettings,
    /// API keys, per-key limits and fair sharing.
    pub auth: AuthSettings,
    /// How keys share the server.
    pub admission: AdmissionSettings,
    /// Where Prometheus metrics are served, and bounds on the metrics themselves.
    pub metrics: MetricsSettings,
    /// Deprecated keys found while loading, one start-up warning each (never serialized).
    #[serde(skip)]
    pub deprecations: Vec<String>,
    /// Streamed answers (`POST /api/v1/agents/{agent_id}/stream`).
    pub stream: StreamSettings,
    /// Model routing: the circuit breaker of each model of a fallback chain.
    pub routing: RoutingSettings,
    /// The default OpenAI-compatible endpoint for agents or models with `provider = "openai"`.
    pub openai: OpenAiSettings,
    /// The records database: what must last (keys, conversations, usage, audit log).
    pub database: DatabaseSettings,
    /// Each model's own quota (`[models."gemini-2.5-flash"]`); others take `[upstream]`'s.
    pub models: ModelSettings,
    /// Safety for young learners: safety settings, flags, webhook, crisis answers, moderation.
    pub safety: SafetySettings,
    /// Personal data kept from the model (`privacy.redact`).
    pub privacy: PrivacySettings,
    /// A/B tests of answer policies and prompt versions (`[[experiments]]`).
    pub experiments: Vec<ExperimentSettings>,
    /// How long conversations, flags and usage are kept (the retention sweep).
    pub records: RecordsSettings,
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or variable could not be read or has the wrong type or an unknown key.
    #[error("invalid configuration: {0}")]
    Load(Box<figment::Error>),
    /// The values were read but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads settings from defaults, the file named by `file` (or `LEARNING_CHAT_CONFIG`), and the
    /// process environment, then validates them.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        Self::from_figment(Self::figment(file.as_deref()))
    }

    /// The layered sources, exposed so tests can add their own on top.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("LEARNING_CHAT_")
                    .ignore(&["CONFIG", "BIND"])
                    .split("__"),
            )
            .merge(
                Env::raw()
                    .only(&["LEARNING_CHAT_BIND"])
                    .map(|_| "server.bind".into()),
            )
            .merge(
                Env::raw()
                    .only(&["GEMINI_API_KEY"])
                    .map(|_| "gemini.api_key".into()),
            )
            .merge(
                Env::raw()
                    .only(&["GEMINI_BASE_URL"])
                    .map(|_| "gemini.base_url".into()),
            )
            .merge(
                Env::raw()
                    .only(&["SENTRY_DSN"])
                    .map(|_| "telemetry.sentry_dsn".into()),
            )
            .merge(Env::raw().only(&["REDIS_URL"]).map(|_| "redis.url".into()))
            .merge(
                Env::raw()
                    .only(&["OPENAI_API_KEY"])
                    .map(|_| "openai.api_key".into()),
            )
    }

    /// Extracts and validates settings from a figment; also resolves `REDIS_HOST`/`REDIS_PORT`.
    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        settings.apply_deprecated_keys(&figment)?;
        // REDIS_HOST names one Redis; it must not turn a cluster setup into an invalid mix.
        if settings.redis.url.is_empty()
            && settings.redis.cluster_nodes.is_empty()
            && settings.redis.sentinels.is_empty()
        {
            if let Ok(host) = std::env::var("REDIS_HOST") {
                let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6379".to_owned());
                if !host.trim().is_empty() {
                    settings.redis.url =
                        Secret::new(format!("redis://{}:{}", host.trim(), port.trim()));
                }
            }
        }
        // GEMINI_API_KEY_1, _2, ...: numbered, so a deployment adds a key without editing a
        // list; read up to the first gap.
        for n in 1.. {
            match std::env::var(format!("GEMINI_API_KEY_{n}")) {
                Ok(key) if !key.trim().is_empty() => {
                    let key = Secret::new(key.trim());
                    if !settings.gemini.api_keys.contains(&key) {
                        settings.gemini.api_keys.push(key);
                    }
                }
                _ => break,
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Moves each deprecated `_secs` key into its `_ms` key and notes a warning; setting both
    /// spellings of one key is an error, since either choice would surprise.
    fn apply_deprecated_keys(&mut self, figment: &Figment) -> Result<(), ConfigError> {
        // A key whose value comes from anything but the built-in defaults was set explicitly.
        let defaults = Figment::from(Serialized::defaults(Settings::default()))
            .find_metadata("server.bind")
            .map(|m| m.name.clone());
        let explicit = |key: &str| {
            figment.find_metadata(key).map(|m| m.name.clone()) != defaults
                && figment.find_value(key).is_ok()
        };
        let s = self;
        let renamed: [(&str, &str, &mut Option<u64>, &mut Duration); 7] = [
            (
                "server.request_timeout_secs",
                "server.request_timeout_ms",
                &mut s.server.deprecated_request_timeout_secs,
                &mut s.server.request_timeout,
            ),
            (
                "server.shutdown_grace_secs",
                "server.shutdown_grace_ms",
                &mut s.server.deprecated_shutdown_grace_secs,
                &mut s.server.shutdown_grace,
            ),
            (
                "upstream.latency_half_life_secs",
                "upstream.latency_half_life_ms",
                &mut s.upstream.deprecated_latency_half_life_secs,
                &mut s.upstream.latency_half_life,
            ),
            (
                "cache.ttl_secs",
                "cache.ttl_ms",
                &mut s.cache.deprecated_ttl_secs,
                &mut s.cache.ttl,
            ),
            (
                "cache.l1_ttl_secs",
                "cache.l1_ttl_ms",
                &mut s.cache.deprecated_l1_ttl_secs,
                &mut s.cache.l1_ttl,
            ),
            (
                "cache.refusal_ttl_secs",
                "cache.refusal_ttl_ms",
                &mut s.cache.deprecated_refusal_ttl_secs,
                &mut s.cache.refusal_ttl,
            ),
            (
                "conversation.ttl_secs",
                "conversation.ttl_ms",
                &mut s.conversation.deprecated_ttl_secs,
                &mut s.conversation.ttl,
            ),
        ];
        let mut deprecations = Vec::new();
        for (old, new, seconds, duration) in renamed {
            let Some(value) = seconds.take() else {
                continue;
            };
            if explicit(new) {
                return Err(ConfigError::Invalid(format!(
                    "{old} (deprecated) and {new} are both set; keep only {new}"
                )));
            }
            *duration = Duration::from_secs(value);
            deprecations.push(format!(
                "{old} is deprecated: read as {new} = {}; rename it (environment: {})",
                duration.as_millis(),
                env_name(new)
            ));
        }
        deprecations.extend(s.auth.deprecations());
        s.deprecations = deprecations;
        Ok(())
    }

    /// Checks values that parse but cannot work, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.gemini.validate()?;
        self.upstream.validate()?;
        self.cache.validate()?;
        self.redis.validate()?;
        self.telemetry.validate()?;
        self.metrics.validate()?;
        self.conversation.validate()?;
        self.auth.validate(&self.database)?;
        self.admission.validate()?;
        self.refuse_shipped_placeholders()?;
        self.stream.validate()?;
        self.routing.validate()?;
        self.database.validate()?;
        models::validate(&self.models)?;
        self.safety.validate()?;
        self.privacy.validate()?;
        experiments::validate(&self.experiments)?;
        self.records.validate()?;
        self.openai.validate()
    }

    /// True when a Gemini API key is configured; otherwise the offline model answers.
    pub fn uses_gemini(&self) -> bool {
        !self.gemini_keys().is_empty()
    }

    /// Every configured Gemini key, `api_key` first, without blanks or repeats.
    pub fn gemini_keys(&self) -> Vec<Secret> {
        self.gemini.keys()
    }

    /// True when Redis shared state is configured.
    pub fn uses_redis(&self) -> bool {
        self.redis.enabled()
    }

    /// The quota of `model`: its `[models]` table, else `[upstream]`'s budget.
    pub fn model_quota(&self, model: &str) -> ModelQuota {
        quota_of(&self.models, &self.upstream, model)
    }

    /// The whole-request deadline.
    pub fn request_timeout(&self) -> Duration {
        self.server.request_timeout
    }

    /// The effective settings as TOML, secrets masked (what `check-config` prints).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// A failed check of one section.
fn invalid(message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(message.to_owned()))
}

/// Refuses a zero duration for `key`: every caller needs a real interval there.
fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Invalid(format!("{key} must be at least 1 ms")));
    }
    Ok(())
}

/// The `LEARNING_CHAT_` environment variable of a `section.key`.
fn env_name(key: &str) -> String {
    format!("LEARNING_CHAT_{}", key.replace('.', "__").to_uppercase())
}
