//! `[models."<model id>"]`: each model's own quota, as the provider counts it (per model of a
//! project). A model without a table takes `upstream.rpm`, `upstream.input_tpm` and
//! `upstream.rpd` as its own budget.

use super::{ConfigError, UpstreamSettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One model's quota; a key left out takes the `[upstream]` value of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelQuotaSettings {
    /// Requests per minute to this model across the cluster; 0 = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Input tokens per minute to this model across the cluster; 0 = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tpm: Option<u64>,
    /// Requests per day to this model (the day starts at midnight Pacific time); 0 = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u32>,
}

/// A model's quota with the `[upstream]` defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelQuota {
    /// Requests per minute (0 = unlimited).
    pub rpm: u32,
    /// Input tokens per minute (0 = unlimited).
    pub input_tpm: u64,
    /// Requests per Pacific day (0 = unlimited).
    pub rpd: u32,
}

/// Every model's own quota, by model id.
pub type ModelSettings = BTreeMap<String, ModelQuotaSettings>;

/// The quota of `model`: its own table's values, else the `[upstream]` ones.
pub fn quota_of(models: &ModelSettings, upstream: &UpstreamSettings, model: &str) -> ModelQuota {
    let own = models.get(model).cloned().unwrap_or_default();
    ModelQuota {
        rpm: own.rpm.unwrap_or(upstream.rpm),
        input_tpm: own.input_tpm.unwrap_or(upstream.input_tpm),
        rpd: own.rpd.unwrap_or(upstream.rpd),
    }
}

/// Checks the model ids: they name Redis keys and metric labels, so they must be plain.
pub fn validate(models: &ModelSettings) -> Result<(), ConfigError> {
    for id in models.keys() {
        let plain = !id.is_empty()
            && id.len() <= 128
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
        if !plain {
            return Err(ConfigError::Invalid(format!(
                "models.{id:?}: a model id is 1-128 characters of letters, digits, '-', '_', \
                 '.', ':' or '/'"
            )));
        }
    }
    Ok(())
}
