//! The offline model: the Gemini simulator's answer generator (shared through `gemini-wire`),
//! in-process, with no network.

use super::{completion_from_response, Completion, ModelRequest, ProviderError};
use crate::config::OfflineSettings;
use gemini_wire::respond::{simulate_response, AnswerSettings};
use std::time::Duration;
use tokio::time::Instant;

/// Answers like `gemini-sim` does, without a server; used when no API key is configured.
#[derive(Debug, Clone)]
pub struct SimulatedModel {
    answer_tokens: u32,
    latency: Duration,
}

/// Prefix of the `model` field of every offline answer, so nobody mistakes it for Gemini.
pub const OFFLINE_MODEL_PREFIX: &str = "offline-simulated/";

impl SimulatedModel {
    /// A simulated model with the configured answer length and latency.
    pub fn new(settings: &OfflineSettings) -> SimulatedModel {
        SimulatedModel {
            answer_tokens: settings.answer_tokens,
            latency: Duration::from_millis(settings.latency_ms),
        }
    }

    /// One simulated answer after the configured latency (or a timeout at `deadline`).
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        if !self.latency.is_zero() {
            let ready = Instant::now() + self.latency;
            if ready > deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(ProviderError::Timeout);
            }
            tokio::time::sleep_until(ready).await;
        }
        let answer = AnswerSettings {
            answer_tokens: self.answer_tokens,
            ..AnswerSettings::DEFAULT
        };
        let response = simulate_response(&request.to_wire(), &request.model, &answer);
        let mut completion = completion_from_response(response, &request.model)?;
        completion.model = format!("{OFFLINE_MODEL_PREFIX}{}", request.model);
        Ok(completion)
    }
}
