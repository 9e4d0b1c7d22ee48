//! `[metrics]`: where Prometheus metrics are served, and bounds on the metrics themselves.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where metrics are served, and bounds on the metrics themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Key ids given their own label on per-key metrics; later keys are counted as `other`.
    pub max_key_labels: usize,
    /// Address of the listener serving `GET /metrics`, apart from the service port; `""` or
    /// `"off"` serves none. Loopback by default: the series name keys and their usage.
    pub bind: String,
    /// Also serve `GET /metrics` on the service port (the old behaviour; it is public there).
    pub on_service_port: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            max_key_labels: 50,
            bind: "127.0.0.1:9464".to_owned(),
            on_service_port: false,
        }
    }
}

impl MetricsSettings {
    /// The metrics listener's address; `None` when it is off.
    pub fn listener(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let bind = self.bind.trim();
        if bind.is_empty() || bind.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        bind.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics.bind must be an address such as 127.0.0.1:9464, or \"off\"; got {bind:?}"
            ))
        })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listener().map(|_| ())
    }
}
