//! Building Gemini response bodies from the simulator's configuration. The builders live in
//! `gemini_wire::respond` so the service's offline model shares them without linking the
//! simulator; these wrappers keep the simulator's API on [`SimConfig`].

use crate::config::SimConfig;
use gemini_wire::{GenerateContentRequest, GenerateContentResponse};

pub use gemini_wire::respond::{prompt_tokens, response_id, AnswerSettings, Plan};

/// Decides the answer to `request`.
pub fn plan(request: &GenerateContentRequest, model: &str, config: &SimConfig) -> Plan {
    gemini_wire::respond::plan(request, model, &config.answer_settings())
}

/// The whole `generateContent` response for a plan.
pub fn full_response(
    plan: &Plan,
    model: &str,
    id: String,
    config: &SimConfig,
) -> GenerateContentResponse {
    gemini_wire::respond::full_response(plan, model, id, &config.answer_settings())
}

/// The events of `streamGenerateContent` for a plan: text deltas of `chunk_tokens` tokens,
/// cumulative usage, the finish reason on the last event only, one `responseId` throughout.
pub fn stream_responses(
    plan: &Plan,
    model: &str,
    id: &str,
    config: &SimConfig,
) -> Vec<GenerateContentResponse> {
    gemini_wire::respond::stream_responses(plan, model, id, &config.answer_settings())
}
