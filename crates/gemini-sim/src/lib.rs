//! A faithful Gemini REST v1beta simulator: `generateContent`, `streamGenerateContent` (SSE and
//! JSON array), `countTokens`, API-key auth, per-key quotas with Google's 429 bodies, injected
//! faults, configurable latency, and request statistics.
//!
//! In-process use (tests, offline service):
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sim = gemini_sim::SimServer::start(gemini_sim::SimConfig::default(), "127.0.0.1:0".parse()?).await?;
//! let url = format!("{}/v1beta/models/gemini-2.5-flash:generateContent", sim.base_url());
//! # let _ = url;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Wire shapes come from the shared `gemini-wire` crate and are checked against bodies recorded
//! from the real API.
//!
//! # HTTP endpoints
//! - `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (`?alt=sse` for SSE,
//!   otherwise a JSON array), `:countTokens`; key in `x-goog-api-key` or `?key=`.
//! - `GET /v1beta/models`, `GET /v1beta/models/{model}`: the configured models.
//! - `POST /v1/chat/completions`: the OpenAI-compatible mode (see [`openai`]).
//! - `GET /stats` ([`Stats`]), `GET /stats/timeline` ([`Timeline`], `?since_ms=` to trim),
//!   `POST /stats/reset` (counters only), `POST /quota/reset` (quota windows only).
//! - `GET /config` ([`SimConfig`] as JSON), `POST /config` (a partial object merged over it;
//!   400 and no change if the result is invalid).
//!
//! # Request pipeline
//! method, API key (400 API_KEY_INVALID; 403 PERMISSION_DENIED for a revoked key), model (404), body (400), fault roll (an injected 429
//! is answered here, at once), quota (429, nothing consumed), latency, answer. Injected
//! 500/503/504 come after the sampled latency;
//! a hang waits until the client leaves or `hang_max_ms` passes (then 504).

// Unit tests may unwrap; request paths may not (workspace lints).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod config;
pub mod errors;
pub mod faults;
pub mod latency;
pub mod moderation;
pub mod openai;
pub mod quota;
pub mod respond;
pub mod server;
pub mod stats;

pub use config::{FaultConfig, Latency, OpenAiConfig, QuotaConfig, SimConfig, StreamConfig};
/// Answer text and the token rule of thumb, shared with the service through `gemini-wire`.
pub use gemini_wire::answer;
pub use server::{router, SimServer, SimState};
pub use stats::{FaultCounts, KeyStats, MinuteCount, Stats, Timeline};

/// Pure response builder without latency/quotas/faults: what the simulator would answer to
/// `request` for `model` (a fresh random `responseId` aside, the same request always gets the
/// same answer).
pub fn simulate_response(
    request: &gemini_wire::GenerateContentRequest,
    model: &str,
    config: &SimConfig,
) -> gemini_wire::GenerateContentResponse {
    gemini_wire::respond::simulate_response(request, model, &config.answer_settings())
}
