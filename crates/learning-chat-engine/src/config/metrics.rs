//! `[metrics]`: bounds on the metrics themselves.

use serde::{Deserialize, Serialize};

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
