//! `[records]`: how long the records database keeps what learners leave behind.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Retention of conversations, flags and usage (the sweep every server runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordsSettings {
    /// Days a conversation, its turns and its flags are kept after its last activity, for
    /// keys that set none of their own (`keys create --retention-days`); 0 keeps them.
    pub retention_days: u32,
    /// Days usage rows (the ledger behind budgets and the console's charts) are kept; 0 keeps
    /// them. Longer than `retention_days`: they name no conversation.
    pub usage_retention_days: u32,
    /// How often each server runs the sweep (`sweep_interval_ms`); it is idempotent, so
    /// every server may run it.
    #[serde(rename = "sweep_interval_ms", with = "super::duration")]
    pub sweep_interval: Duration,
}

impl Default for RecordsSettings {
    fn default() -> Self {
        RecordsSettings {
            retention_days: 365,
            usage_retention_days: 1095,
            sweep_interval: Duration::from_secs(3600),
        }
    }
}

impl RecordsSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        super::positive("records.sweep_interval_ms", self.sweep_interval)
    }
}
