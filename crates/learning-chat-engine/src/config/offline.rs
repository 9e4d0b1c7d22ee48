//! `[offline]`: the built-in offline model, answering when no API key is set.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The offline model (settings of `[offline]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineSettings {
    /// Simulated time per answer (`latency_ms`); zero answers at once.
    #[serde(rename = "latency_ms", with = "super::duration")]
    pub latency: Duration,
    /// Length of offline answers, in tokens.
    pub answer_tokens: u32,
}

impl Default for OfflineSettings {
    fn default() -> Self {
        OfflineSettings {
            latency: Duration::from_millis(300),
            answer_tokens: 120,
        }
    }
}
