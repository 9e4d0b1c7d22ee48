//! `[metrics]`: where Prometheus metrics are served, and bounds on the metrics themselves.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
    /// How often the recorder folds the histogram samples it buffered into their buckets
    /// (`upkeep_interval_ms`): the buffer grows with every request until then.
    #[serde(rename = "upkeep_interval_ms", with = "super::duration")]
    pub upkeep_interval: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            max_key_labels: 50,
            bind: "127.0.0.1:9464".to_owned(),
            on_service_port: false,
            upkeep_interval: Duration::from_secs(1),
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
        super::positive("metrics.upkeep_interval_ms", self.upkeep_interval)?;
        self.listener().map(|_| ())
    }
}
