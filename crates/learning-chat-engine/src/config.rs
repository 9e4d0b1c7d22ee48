//! Settings: built-in defaults < optional TOML file < environment, validated once at start-up.
//!
//! Every key is documented in `docs/configuration.md`; keep the two in step. Environment variables
//! use the `LEARNING_CHAT_` prefix with `__` between section and key
//! (`LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=50`); the seed's names (`GEMINI_API_KEY`,
//! `GEMINI_BASE_URL`, `REDIS_URL`, `REDIS_HOST`, `REDIS_PORT`, `SENTRY_DSN`) keep working.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
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
    /// API keys, per-key limits and fair sharing (issue 12).
    pub auth: AuthSettings,
    /// Bounds on the metrics themselves.
    pub metrics: MetricsSettings,
    /// Deprecated keys found while loading, one start-up warning each (never serialized).
    #[serde(skip)]
    pub deprecations: Vec<String>,
    /// Streamed answers (`POST /api/v1/agents/{agent_id}/stream`).
    pub stream: StreamSettings,
    /// Model routing: the circuit breaker of each model of a fallback chain (issue 16).
    pub routing: RoutingSettings,
    /// The default OpenAI-compatible endpoint for agents or models with `provider = "openai"`.
    pub openai: OpenAiSettings,
}

/// Streamed answers: keep-alive, bounds, and the Redis Streams that carry them across servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Interval of `: ping` comments on an open stream, in milliseconds, so proxies do not close
    /// a stream that is quiet while the model thinks (0 disables them).
    pub keepalive_ms: u64,
    /// Most streams open at once on one server; beyond it 503 + Retry-After before the stream.
    pub max_open: usize,
    /// `Retry-After` sent with the 503 at `max_open`, in milliseconds (rounded up to seconds).
    pub retry_after_ms: u64,
    /// Most entries kept in one question's Redis Stream (`XADD MAXLEN ~`); readers of a longer
    /// answer get the rest with the final answer.
    pub redis_max_entries: u64,
    /// Lifetime of a question's Redis Stream after its last write, in milliseconds.
    pub redis_ttl_ms: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            keepalive_ms: 15_000,
            max_open: 2_000,
            retry_after_ms: 1_000,
            redis_max_entries: 10_000,
            redis_ttl_ms: 60_000,
        }
    }
}

/// The circuit breaker of each model of an agent's fallback chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Consecutive failed calls (5xx, connection errors, timeouts) that open a model's circuit:
    /// it is skipped, at no latency, until the cool-down ends; 0 turns the breaker off.
    pub breaker_failures: u32,
    /// How long an open circuit skips its model before one probe call may try it again, in ms.
    pub breaker_cooldown_ms: u64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
        }
    }
}

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
    /// How long a key looked up in the store is trusted before it is read again, in
    /// milliseconds; a new or revoked key takes effect within this.
    pub cache_ttl_ms: u64,
    /// While Redis is down, how long a key last seen valid keeps working, in milliseconds.
    pub stale_ttl_ms: u64,
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
            cache_ttl_ms: 1_000,
            stale_ttl_ms: 600_000,
            deprecated_stale_ttl_secs: None,
        }
    }
}

/// Bounds on the metrics themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Key ids given their own label on per-key metrics; later keys are counted as `other`.
    pub max_key_labels: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { max_key_labels: 50 }
    }
}

/// HTTP listener and request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Tokio worker threads; 0 means one per CPU core (the seed's `--workers`).
    pub worker_threads: usize,
    /// Deadline for a whole request, in milliseconds; past it the client gets 504.
    pub request_timeout_ms: u64,
    /// After SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Deprecated: `request_timeout_secs` in seconds, read as `request_timeout_ms` (warned about at start-up).
    #[serde(rename = "request_timeout_secs", skip_serializing)]
    pub deprecated_request_timeout_secs: Option<u64>,
    /// Deprecated: `shutdown_grace_secs` in seconds, read as `shutdown_grace_ms` (warned about at start-up).
    #[serde(rename = "shutdown_grace_secs", skip_serializing)]
    pub deprecated_shutdown_grace_secs: Option<u64>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest accepted message, in characters.
    pub max_message_chars: usize,
    /// Responses at least this large are gzip-compressed when the client accepts it.
    pub gzip_min_bytes: u16,
    /// Longest wait for a request's headers (from its first byte, or from accept for the
    /// first request), in milliseconds; past it the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Longest wait for a request's whole body, in milliseconds; past it the client gets 408.
    pub body_read_timeout_ms: u64,
    /// How long a keep-alive connection may sit idle between requests, in milliseconds.
    pub keep_alive_idle_timeout_ms: u64,
    /// Client connections open at once; further ones wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// PEM certificate chain; with `tls_key` the port speaks TLS (ALPN `h2`, `http/1.1`).
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// How often the certificate files are checked for changes, in milliseconds; 0 = SIGHUP only.
    pub tls_reload_check_ms: u64,
    /// Serve the learner's chat page at `/` and the API docs at `/docs` (issue 13).
    pub web_ui: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from(([0, 0, 0, 0], 8000)),
            worker_threads: 0,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 25_000,
            deprecated_request_timeout_secs: None,
            deprecated_shutdown_grace_secs: None,
            max_body_bytes: 64 * 1024,
            max_message_chars: 4000,
            gzip_min_bytes: 1000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            // Above nginx's upstream `keepalive_timeout 60s`, so nginx, not the server, closes
            // idle connections and never sends a request on one being closed.
            keep_alive_idle_timeout_ms: 75_000,
            max_connections: 10_000,
            // Above h2load's and nginx's usual stream counts per connection (100-256).
            http2_max_concurrent_streams: 256,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_reload_check_ms: 10_000,
            web_ui: true,
        }
    }
}

/// The Gemini API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeminiSettings {
    /// API key; when empty the service answers from the offline model.
    pub api_key: Secret,
    /// Base URL of a Gemini-compatible endpoint (`/v1beta/models/...` is appended).
    pub base_url: String,
    /// TCP connect timeout to the endpoint, in milliseconds.
    pub connect_timeout_ms: u64,
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
            connect_timeout_ms: 5_000,
            pool_max_idle_per_host: 256,
        }
    }
}

/// Bounds on calls to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Ceiling of model calls in flight at once; below it the limit follows `rpm` and latency.
    pub max_concurrency: usize,
    /// Floor of the derived concurrency limit (capped by `max_concurrency`).
    pub min_concurrency: usize,
    /// The concurrency limit is `rpm / 60 x typical call latency x` this (Little's law + room).
    pub concurrency_headroom: f64,
    /// Half-life of a model-call latency sample in the estimate behind the limit and quota gate,
    /// in milliseconds.
    pub latency_half_life_ms: u64,
    /// Deprecated: `latency_half_life_secs` in seconds, read as `latency_half_life_ms` (warned about at start-up).
    #[serde(rename = "latency_half_life_secs", skip_serializing)]
    pub deprecated_latency_half_life_secs: Option<u64>,
    /// Distinct questions allowed to wait for a free slot; beyond it requests get 503.
    pub max_queue: usize,
    /// Longest a question waits for a free slot before 503, in milliseconds.
    pub max_queue_wait_ms: u64,
    /// Requests per minute allowed to the model across the cluster; 0 = no limit.
    pub rpm: u32,
    /// Input tokens per minute allowed across the cluster; 0 = no limit.
    pub input_tpm: u64,
    /// Extra milliseconds added to the 60 s quota window so clock skew and network jitter never
    /// let the provider count one request too many in its own window.
    pub quota_window_margin_ms: u64,
    /// Retries after the first attempt for 429/500/503/504 and connection errors.
    pub max_retries: u32,
    /// First retry backoff, in milliseconds (doubles each time, with full jitter).
    pub retry_base_delay_ms: u64,
    /// Cap on one retry backoff, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// Longest wait honoured from a 429's `RetryInfo.retryDelay` (and passed on as
    /// `Retry-After`), in milliseconds: an absurd value from the wire clamps to this.
    pub max_retry_after_ms: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            max_concurrency: 1000,
            min_concurrency: 32,
            concurrency_headroom: 2.0,
            latency_half_life_ms: 30_000,
            deprecated_latency_half_life_secs: None,
            max_queue: 1000,
            max_queue_wait_ms: 20_000,
            rpm: 1000,
            input_tpm: 0,
            quota_window_margin_ms: 500,
            max_retries: 3,
            retry_base_delay_ms: 250,
            retry_max_delay_ms: 8_000,
            max_retry_after_ms: 60_000,
        }
    }
}

/// The response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Turn caching off entirely (every question goes to the model; coalescing still applies).
    pub enabled: bool,
    /// How long an answer is served from cache, in milliseconds (the seed's 1 hour).
    pub ttl_ms: u64,
    /// Most answers kept in process memory (the seed's 1000).
    pub capacity: u64,
    /// With Redis enabled, the in-process cache is a short-lived first tier: its TTL in
    /// milliseconds.
    pub l1_ttl_ms: u64,
    /// How long a prompt the model refused (blocked or filtered) is answered with the same
    /// refusal without asking again, in milliseconds; 0 = never remembered.
    pub refusal_ttl_ms: u64,
    /// Let a server without a Gemini key (answering from the offline model) write its
    /// answers into the shared Redis cache. Off: offline answers stay in that server's memory.
    pub share_offline_answers: bool,
    /// Deprecated: `ttl_secs` in seconds, read as `ttl_ms` (warned about at start-up).
    #[serde(rename = "ttl_secs", skip_serializing)]
    pub deprecated_ttl_secs: Option<u64>,
    /// Deprecated: `l1_ttl_secs` in seconds, read as `l1_ttl_ms` (warned about at start-up).
    #[serde(rename = "l1_ttl_secs", skip_serializing)]
    pub deprecated_l1_ttl_secs: Option<u64>,
    /// Deprecated: `refusal_ttl_secs` in seconds, read as `refusal_ttl_ms` (warned about at start-up).
    #[serde(rename = "refusal_ttl_secs", skip_serializing)]
    pub deprecated_refusal_ttl_secs: Option<u64>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            ttl_ms: 3_600_000,
            capacity: 1000,
            l1_ttl_ms: 60_000,
            refusal_ttl_ms: 60_000,
            share_offline_answers: false,
            deprecated_ttl_secs: None,
            deprecated_l1_ttl_secs: None,
            deprecated_refusal_ttl_secs: None,
        }
    }
}

/// Redis shared state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`; empty disables Redis. `REDIS_URL`, or `REDIS_HOST` + `REDIS_PORT`.
    pub url: Secret,
    /// Prefix of every key this service writes, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Timeout of each Redis call, in milliseconds; a slow Redis must never stall requests.
    pub command_timeout_ms: u64,
    /// How many replicas share the quota, used only while Redis is down (each takes rpm / replicas).
    pub replicas: u32,
    /// Lease on a question while one server asks the model (renewed while it works), in ms;
    /// a server that dies delays the others by at most this.
    pub lease_ms: u64,
    /// How long a lease holder's failure (429 after retries, 5xx, truncated answer) is shown to
    /// the servers waiting on it, in ms, so they answer with it instead of each asking in turn.
    pub failure_share_ms: u64,
    /// Largest value read back from Redis (a cached answer or a shared outcome), in bytes;
    /// larger ones are treated as corrupt: deleted and counted, never parsed.
    pub max_value_bytes: u64,
    /// Consecutive failed calls (errors or timeouts) before Redis is marked down; a single
    /// failure only sends that one call to its local fallback.
    pub down_after_failures: u32,
    /// Consecutive successful probes before a down Redis is used again.
    pub up_after_probes: u32,
    /// How often a down Redis is probed, in milliseconds.
    pub probe_interval_ms: u64,
    /// Redis Sentinel addresses (`host:port` or `redis://` URLs); set, the master is found
    /// through them and followed after a failover (`redis.url` then only lends db/credentials).
    /// Masked when printed, like `url`: they may hold passwords.
    pub sentinels: Vec<Secret>,
    /// Name of the master group the sentinels watch (`sentinel monitor <name> ...`).
    pub sentinel_master: String,
    /// Redis Cluster seed nodes (`host:port` or `redis://` URLs); set, Redis Cluster is used.
    pub cluster_nodes: Vec<Secret>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Secret::default(),
            key_prefix: "learning-chat".to_owned(),
            command_timeout_ms: 250,
            replicas: 1,
            lease_ms: 5_000,
            failure_share_ms: 3_000,
            max_value_bytes: 1_048_576,
            down_after_failures: 3,
            up_after_probes: 3,
            probe_interval_ms: 1_000,
            sentinels: Vec::new(),
            sentinel_master: "mymaster".to_owned(),
            cluster_nodes: Vec::new(),
        }
    }
}

/// The tutor agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Path of an agents TOML file; empty uses the agents shipped in `config/agents.toml`.
    pub path: Option<PathBuf>,
}

/// The offline model (settings of `[offline]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineSettings {
    /// Simulated time per answer, in milliseconds (0 answers at once).
    pub latency_ms: u64,
    /// Length of offline answers, in tokens.
    pub answer_tokens: u32,
}

impl Default for OfflineSettings {
    fn default() -> Self {
        OfflineSettings {
            latency_ms: 300,
            answer_tokens: 120,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs, metrics and error tracking.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log filter in `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Serve `/metrics` on the main listener.
    pub metrics_enabled: bool,
    /// Price per 1M input tokens in USD, for the estimated-cost metric.
    pub price_per_million_input_tokens: f64,
    /// Price per 1M output tokens in USD, for the estimated-cost metric.
    pub price_per_million_output_tokens: f64,
    /// Sentry DSN (`SENTRY_DSN`); empty disables error reporting.
    pub sentry_dsn: Secret,
    /// Environment name reported to Sentry.
    pub environment: String,
    /// OTLP/HTTP (protobuf) endpoint receiving traces, e.g. `http://otel-collector:4318`;
    /// empty disables tracing export.
    pub otlp_endpoint: String,
    /// Share of new traces sampled (0.0 to 1.0); a client's `traceparent` decision wins.
    pub trace_sample_ratio: f64,
    /// Put learners' message text and cache keys on spans; off by default.
    pub trace_content: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            metrics_enabled: true,
            price_per_million_input_tokens: 0.30,
            price_per_million_output_tokens: 2.50,
            sentry_dsn: Secret::default(),
            environment: "production".to_owned(),
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
            trace_content: false,
        }
    }
}

/// Multi-turn conversations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationSettings {
    /// How long a conversation lives after its last use, in milliseconds (refreshed on every
    /// use).
    pub ttl_ms: u64,
    /// Most conversations kept in process memory when Redis is not configured; beyond it the
    /// least recently used one is evicted.
    pub max_conversations: u64,
    /// Most tokens of history (system prompt, earlier turns and the new message) sent to the
    /// model; older turns beyond it are left out, the first exchange is always kept.
    pub max_history_tokens: u32,
    /// Most turns stored per conversation (a question and its answer are two turns); a message
    /// that would go beyond it is refused with 422 `conversation_turn_limit`.
    pub max_turns: u32,
    /// Most bytes of turn text stored per conversation; a message that would go beyond it is
    /// refused with 413 `conversation_too_large`.
    pub max_stored_bytes: u64,
    /// How long a message waits for an earlier message of the same conversation to finish, in
    /// milliseconds, before it is refused with 409 `conversation_busy` and `Retry-After`.
    pub busy_wait_ms: u64,
    /// Deprecated: `ttl_secs` in seconds, read as `ttl_ms` (warned about at start-up).
    #[serde(rename = "ttl_secs", skip_serializing)]
    pub deprecated_ttl_secs: Option<u64>,
}

impl Default for ConversationSettings {
    fn default() -> Self {
        ConversationSettings {
            ttl_ms: 86_400_000,
            max_conversations: 100_000,
            max_history_tokens: 8_000,
            max_turns: 200,
            max_stored_bytes: 512 * 1024,
            busy_wait_ms: 10_000,
            deprecated_ttl_secs: None,
        }
    }
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

    /// Moves each deprecated `_secs` key into its `_ms` key (times 1000) and notes a warning;
    /// setting both spellings of one key is an error, since either choice would surprise.
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
        let renamed: [(&str, &str, &mut Option<u64>, &mut u64); 8] = [
            (
                "server.request_timeout_secs",
                "server.request_timeout_ms",
                &mut s.server.deprecated_request_timeout_secs,
                &mut s.server.request_timeout_ms,
            ),
            (
                "server.shutdown_grace_secs",
                "server.shutdown_grace_ms",
                &mut s.server.deprecated_shutdown_grace_secs,
                &mut s.server.shutdown_grace_ms,
            ),
            (
                "upstream.latency_half_life_secs",
                "upstream.latency_half_life_ms",
                &mut s.upstream.deprecated_latency_half_life_secs,
                &mut s.upstream.latency_half_life_ms,
            ),
            (
                "cache.ttl_secs",
                "cache.ttl_ms",
                &mut s.cache.deprecated_ttl_secs,
                &mut s.cache.ttl_ms,
            ),
            (
                "cache.l1_ttl_secs",
                "cache.l1_ttl_ms",
                &mut s.cache.deprecated_l1_ttl_secs,
                &mut s.cache.l1_ttl_ms,
            ),
            (
                "cache.refusal_ttl_secs",
                "cache.refusal_ttl_ms",
                &mut s.cache.deprecated_refusal_ttl_secs,
                &mut s.cache.refusal_ttl_ms,
            ),
            (
                "conversation.ttl_secs",
                "conversation.ttl_ms",
                &mut s.conversation.deprecated_ttl_secs,
                &mut s.conversation.ttl_ms,
            ),
            (
                "auth.stale_ttl_secs",
                "auth.stale_ttl_ms",
                &mut s.auth.deprecated_stale_ttl_secs,
                &mut s.auth.stale_ttl_ms,
            ),
        ];
        let mut deprecations = Vec::new();
        for (old, new, seconds, millis) in renamed {
            let Some(value) = seconds.take() else {
                continue;
            };
            if explicit(new) {
                return Err(ConfigError::Invalid(format!(
                    "{old} (deprecated) and {new} are both set; keep only {new}"
                )));
            }
            *millis = value.saturating_mul(1000);
            deprecations.push(format!(
                "{old} is deprecated: read as {new} = {}; rename it (environment: {})",
                *millis,
                env_name(new)
            ));
        }
        s.deprecations = deprecations;
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.server.request_timeout_ms == 0 {
            return fail("server.request_timeout_ms must be at least 1");
        }
        if self.server.max_body_bytes < 64 {
            return fail("server.max_body_bytes must be at least 64");
        }
        if self.server.max_message_chars == 0 {
            return fail("server.max_message_chars must be at least 1");
        }
        if self.server.header_read_timeout_ms == 0
            || self.server.body_read_timeout_ms == 0
            || self.server.keep_alive_idle_timeout_ms == 0
        {
            return fail("server.header_read_timeout_ms, body_read_timeout_ms and keep_alive_idle_timeout_ms must be at least 1");
        }
        if self.server.max_connections == 0 {
            return fail("server.max_connections must be at least 1");
        }
        if self.server.http2_max_concurrent_streams == 0 {
            return fail("server.http2_max_concurrent_streams must be at least 1");
        }
        if self.server.tls_cert.is_empty() != self.server.tls_key.is_empty() {
            return fail("server.tls_cert and server.tls_key must be set together");
        }
        if self.upstream.max_concurrency == 0 {
            return fail("upstream.max_concurrency must be at least 1");
        }
        if self.stream.max_open == 0 || self.stream.redis_max_entries == 0 {
            return fail("stream.max_open and stream.redis_max_entries must be at least 1");
        }
        if self.stream.redis_ttl_ms == 0 {
            return fail("stream.redis_ttl_ms must be at least 1");
        }
        if !(self.upstream.concurrency_headroom >= 1.0
            && self.upstream.concurrency_headroom.is_finite())
        {
            return fail("upstream.concurrency_headroom must be a number of at least 1.0");
        }
        if self.upstream.latency_half_life_ms == 0 {
            return fail("upstream.latency_half_life_ms must be at least 1");
        }
        if self.cache.capacity == 0 && self.cache.enabled {
            return fail("cache.capacity must be at least 1 (or set cache.enabled = false)");
        }
        if self.cache.ttl_ms == 0 && self.cache.enabled {
            return fail("cache.ttl_ms must be at least 1 (or set cache.enabled = false)");
        }
        if self.redis.replicas == 0 {
            return fail("redis.replicas must be at least 1");
        }
        if self.redis.down_after_failures == 0 || self.redis.up_after_probes == 0 {
            return fail("redis.down_after_failures and redis.up_after_probes must be at least 1");
        }
        if self.redis.probe_interval_ms == 0 {
            return fail("redis.probe_interval_ms must be at least 1");
        }
        if !self.redis.sentinels.is_empty() && !self.redis.cluster_nodes.is_empty() {
            return fail("set either redis.sentinels or redis.cluster_nodes, not both");
        }
        if !self.redis.cluster_nodes.is_empty() && !self.redis.url.is_empty() {
            return fail("redis.url and redis.cluster_nodes exclude each other");
        }
        if !self.redis.sentinels.is_empty() && self.redis.sentinel_master.trim().is_empty() {
            return fail("redis.sentinel_master must name the master group");
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            return fail("redis.key_prefix must not contain braces (they mark cluster hash tags)");
        }
        if !self.redis.url.is_empty() && !self.redis.url.expose().starts_with("redis") {
            return fail("redis.url must start with redis:// or rediss://");
        }
        let base = self.gemini.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return fail("gemini.base_url must start with http:// or https://");
        }
        let conversation = &self.conversation;
        if conversation.ttl_ms == 0 {
            return fail("conversation.ttl_ms must be at least 1");
        }
        if conversation.max_conversations == 0 {
            return fail("conversation.max_conversations must be at least 1");
        }
        if conversation.max_turns < 2 {
            return fail("conversation.max_turns must be at least 2 (a question and its answer)");
        }
        if conversation.max_history_tokens == 0 {
            return fail("conversation.max_history_tokens must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sample_ratio) {
            return fail("telemetry.trace_sample_ratio must be between 0.0 and 1.0");
        }
        let otlp = self.telemetry.otlp_endpoint.trim();
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            return fail("telemetry.otlp_endpoint must be empty or start with http:// or https://");
        }
        if self.auth.mode == AuthMode::Required && self.auth.pepper.expose().len() < 16 {
            return fail(
                "auth.pepper (LEARNING_CHAT_AUTH__PEPPER) must be at least 16 characters with auth.mode = \"required\"",
            );
        }
        if self.auth.cache_ttl_ms == 0 {
            return fail("auth.cache_ttl_ms must be at least 1");
        }
        let openai = self.openai.base_url.trim();
        if !(openai.starts_with("http://") || openai.starts_with("https://")) {
            return fail("openai.base_url must start with http:// or https://");
        }
        if self.routing.breaker_failures > 0 && self.routing.breaker_cooldown_ms == 0 {
            return fail("routing.breaker_cooldown_ms must be at least 1");
        }
        if self.upstream.retry_base_delay_ms > self.upstream.retry_max_delay_ms {
            return fail(
                "upstream.retry_base_delay_ms must not exceed upstream.retry_max_delay_ms",
            );
        }
        Ok(())
    }

    /// True when a Gemini API key is configured; otherwise the offline model answers.
    pub fn uses_gemini(&self) -> bool {
        !self.gemini_keys().is_empty()
    }

    /// Every configured Gemini key, `api_key` first, without blanks or repeats.
    pub fn gemini_keys(&self) -> Vec<Secret> {
        let mut keys: Vec<Secret> = Vec::new();
        for key in std::iter::once(&self.gemini.api_key).chain(&self.gemini.api_keys) {
            if !key.is_empty() && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// True when Redis shared state is configured.
    pub fn uses_redis(&self) -> bool {
        !self.redis.url.is_empty()
            || !self.redis.sentinels.is_empty()
            || !self.redis.cluster_nodes.is_empty()
    }

    /// The whole-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    /// The effective settings as TOML, secrets masked (what `check-config` prints).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// The `LEARNING_CHAT_` environment variable of a `section.key`.
fn env_name(key: &str) -> String {
    format!("LEARNING_CHAT_{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_the_seeds_numbers() {
        let s = Settings::default();
        assert_eq!(s.upstream.max_concurrency, 1000);
        assert_eq!(s.cache.ttl_ms, 3_600_000);
        assert_eq!(s.cache.capacity, 1000);
        assert_eq!(s.server.request_timeout_ms, 30_000);
        assert_eq!(s.server.gzip_min_bytes, 1000);
        assert!(!s.uses_gemini());
        assert!(!s.uses_redis());
    }

    #[test]
    fn file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "lc.toml",
                "[upstream]\nmax_concurrency = 7\nmax_queue = 3\n[cache]\nttl_ms = 10\n",
            )?;
            jail.set_env("LEARNING_CHAT_UPSTREAM__MAX_QUEUE", "9");
            jail.set_env("LEARNING_CHAT_BIND", "127.0.0.1:9999");
            jail.set_env("GEMINI_API_KEY", "sk-test-secret");
            jail.set_env("REDIS_HOST", "redis.internal");
            jail.set_env("REDIS_PORT", "6380");
            let s = Settings::from_figment(Settings::figment(Some(Path::new("lc.toml"))))
                .map_err(|e| e.to_string())?;
            assert_eq!(s.upstream.max_concurrency, 7);
            assert_eq!(s.upstream.max_queue, 9);
            assert_eq!(s.cache.ttl_ms, 10);
            assert_eq!(s.server.bind.to_string(), "127.0.0.1:9999");
            assert_eq!(s.gemini.api_key.expose(), "sk-test-secret");
            assert_eq!(s.redis.url.expose(), "redis://redis.internal:6380");
            let printed = s.to_masked_toml();
            assert!(!printed.contains("sk-test-secret"), "{printed}");
            assert!(!printed.contains("redis.internal"), "{printed}");
            assert!(!format!("{s:?}").contains("sk-test-secret"));
            Ok(())
        });
    }

    #[test]
    fn sentinels_and_cluster_nodes_come_from_file_or_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ha.toml",
                "[redis]\nsentinels = [\"s1:26379\", \"redis://:pw@s2:26379\"]\n\
                 sentinel_master = \"tutor\"\n",
            )?;
            jail.set_env("REDIS_HOST", "ignored.internal");
            let s = Settings::from_figment(Settings::figment(Some(Path::new("ha.toml"))))
                .map_err(|e| e.to_string())?;
            assert!(s.uses_redis());
            assert!(
                s.redis.url.is_empty(),
                "REDIS_HOST must not add a second mode"
            );
            assert_eq!(s.redis.sentinels[1].expose(), "redis://:pw@s2:26379");
            assert_eq!(s.redis.sentinel_master, "tutor");
            assert!(!s.to_masked_toml().contains("pw@"));
            jail.set_env(
                "LEARNING_CHAT_REDIS__CLUSTER_NODES",
                "[\"c1:7000\", \"c2:7000\"]",
            );
            let err = Settings::from_figment(Settings::figment(Some(Path::new("ha.toml"))))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not both"), "{err}");
            let s = Settings::from_figment(Settings::figment(None)).map_err(|e| e.to_string())?;
            let nodes: Vec<&str> = s.redis.cluster_nodes.iter().map(Secret::expose).collect();
            assert_eq!(nodes, ["c1:7000", "c2:7000"]);
            Ok(())
        });
    }

    #[test]
    fn deprecated_seconds_keys_still_work_with_a_warning() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "old.toml",
                "[server]\nrequest_timeout_secs = 7\nshutdown_grace_secs = 9\n\
                 [upstream]\nlatency_half_life_secs = 2\n\
                 [cache]\nttl_secs = 11\nl1_ttl_secs = 3\nrefusal_ttl_secs = 0\n\
                 [conversation]\nttl_secs = 5\n",
            )?;
            jail.set_env("LEARNING_CHAT_AUTH__STALE_TTL_SECS", "4");
            let s = Settings::from_figment(Settings::figment(Some(Path::new("old.toml"))))
                .map_err(|e| e.to_string())?;
            assert_eq!(s.server.request_timeout_ms, 7_000);
            assert_eq!(s.request_timeout(), Duration::from_secs(7));
            assert_eq!(s.server.shutdown_grace_ms, 9_000);
            assert_eq!(s.upstream.latency_half_life_ms, 2_000);
            assert_eq!(s.cache.ttl_ms, 11_000);
            assert_eq!(s.cache.l1_ttl_ms, 3_000);
            assert_eq!(s.cache.refusal_ttl_ms, 0);
            assert_eq!(s.conversation.ttl_ms, 5_000);
            assert_eq!(s.auth.stale_ttl_ms, 4_000);
            assert_eq!(s.deprecations.len(), 8, "{:?}", s.deprecations);
            assert!(
                s.deprecations[0].contains("server.request_timeout_secs is deprecated")
                    && s.deprecations[0].contains("LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS"),
                "{:?}",
                s.deprecations
            );
            // The old names are not printed back: check-config shows only the `_ms` keys.
            let printed = s.to_masked_toml();
            assert!(!printed.contains("_secs"), "{printed}");
            assert!(printed.contains("request_timeout_ms = 7000"), "{printed}");
            // Both spellings of one key: refused, naming both.
            jail.set_env("LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS", "8000");
            let err = Settings::from_figment(Settings::figment(Some(Path::new("old.toml"))))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("request_timeout_secs") && err.contains("request_timeout_ms"),
                "{err}"
            );
            // Without the file: only the deprecated variable is warned about.
            let s = Settings::from_figment(Settings::figment(None)).map_err(|e| e.to_string())?;
            assert_eq!(s.deprecations.len(), 1, "{:?}", s.deprecations);
            assert!(s.deprecations[0].starts_with("auth.stale_ttl_secs"));
            assert_eq!(s.server.request_timeout_ms, 8_000);
            assert!(Settings::default().deprecations.is_empty());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[upstream]\nmax_concurency = 7\n")?;
            let err = Settings::from_figment(Settings::figment(Some(Path::new("bad.toml"))))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_concurency"), "{err}");
            jail.create_file("zero.toml", "[upstream]\nmax_concurrency = 0\n")?;
            let err = Settings::from_figment(Settings::figment(Some(Path::new("zero.toml"))))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_concurrency"), "{err}");
            Ok(())
        });
    }
}
