//! `[telemetry]`: logs, metrics, traces and error tracking.

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};

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
    /// Serve Prometheus metrics at all: on `metrics.bind`, and on the service port with
    /// `metrics.on_service_port`.
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

impl TelemetrySettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return invalid("telemetry.trace_sample_ratio must be between 0.0 and 1.0");
        }
        let otlp = self.otlp_endpoint.trim();
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            return invalid(
                "telemetry.otlp_endpoint must be empty or start with http:// or https://",
            );
        }
        Ok(())
    }
}
