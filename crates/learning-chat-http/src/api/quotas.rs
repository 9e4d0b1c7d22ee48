//! Each model's quota as `/ready` shows it.

use learning_chat_engine::admission::QuotaStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One model's quota window and what is left of its budget (cluster-wide when Redis answers).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelQuotaView {
    /// Configured requests per minute (0 = unlimited).
    pub rpm: u32,
    /// Requests in the current sliding minute.
    pub requests_in_window: u64,
    /// Requests the minute still allows (absent when unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_in_window: Option<u64>,
    /// Configured input tokens per minute (0 = unlimited).
    pub input_tpm: u64,
    /// Configured requests per day, counted from midnight Pacific (0 = unlimited).
    pub rpd: u32,
    /// Requests today (absent without a per-day budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_today: Option<u64>,
    /// Requests today still allows (absent without a per-day budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_today: Option<u64>,
}

impl From<QuotaStatus> for ModelQuotaView {
    fn from(status: QuotaStatus) -> Self {
        let QuotaStatus {
            rpm,
            requests_in_window,
            remaining_in_window,
            input_tpm,
            rpd,
            requests_today,
            remaining_today,
        } = status;
        ModelQuotaView {
            rpm,
            requests_in_window,
            remaining_in_window,
            input_tpm,
            rpd,
            requests_today,
            remaining_today,
        }
    }
}

/// Every model's view, by model id.
pub(crate) async fn model_quotas(
    chat: &learning_chat_engine::chat::ChatService,
) -> BTreeMap<String, ModelQuotaView> {
    chat.quotas()
        .status()
        .await
        .into_iter()
        .map(|(model, status)| (model, status.into()))
        .collect()
}
