//! `[routing]`: the circuit breaker of each model of an agent's fallback chain.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The circuit breaker of each model of an agent's fallback chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Consecutive failed calls (5xx, connection errors, timeouts) that open a model's circuit:
    /// it is skipped, at no latency, until the cool-down ends; 0 turns the breaker off.
    pub breaker_failures: u32,
    /// How long an open circuit skips its model before one probe call may try it again
    /// (`breaker_cooldown_ms`).
    #[serde(rename = "breaker_cooldown_ms", with = "super::duration")]
    pub breaker_cooldown: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

impl RoutingSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.breaker_failures > 0 {
            super::positive("routing.breaker_cooldown_ms", self.breaker_cooldown)?;
        }
        Ok(())
    }
}
