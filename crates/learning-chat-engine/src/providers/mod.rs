//! Model providers: the real Gemini API (several keys), OpenAI-compatible endpoints, or the
//! built-in offline model, and the router that chains them per agent.
//!
//! Each model service is a [`Provider`]; the [`ModelRouter`] decides at start-up which serves each
//! model of each agent's fallback chain.

mod gemini;
pub mod keys;
pub mod metrics;
mod offline;
pub mod openai;
pub mod resilience;
pub mod router;
#[cfg(test)]
pub(crate) mod script;
pub mod transport;

pub use gemini::GeminiClient;
pub use offline::OfflineModel;
pub use openai::OpenAiClient;
pub use router::{ModelRouter, Route};

use gemini_wire::{FinishReason, GenerateContentResponse, GenerationConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// What the chat service asks a model for: one learner message to one tutor.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// Model id, e.g. `gemini-2.5-flash`.
    pub model: String,
    /// The tutor's system prompt (its subject prompt and answer policy).
    pub system: SystemInstruction,
    /// Earlier turns of the conversation sent with the message, oldest first (empty for a
    /// single message or a conversation's first turn).
    pub history: std::sync::Arc<[ModelTurn]>,
    /// The learner's (normalised) message.
    pub message: String,
    /// Sampling and length settings.
    pub generation: GenerationConfig,
    /// The safety thresholds sent as `safetySettings` (Gemini only).
    pub safety: crate::safety::Thresholds,
}

/// Who said a turn of a conversation: Gemini's `role` of a content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The learner.
    User,
    /// The tutor (the model).
    Model,
}

impl Role {
    /// `user` or `model`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Model => "model",
        }
    }
}

/// One earlier turn of a conversation, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelTurn {
    /// Who said it.
    pub role: Role,
    /// What was said (normalised for user turns).
    pub text: String,
}

/// A system instruction: its text, and its Gemini JSON encoded once, since every request of a
/// tutor under one answer policy sends the same one.
#[derive(Debug, Clone)]
pub struct SystemInstruction(gemini_wire::EncodedContent);

impl SystemInstruction {
    /// The instruction `text`.
    pub fn new(text: String) -> SystemInstruction {
        SystemInstruction(gemini_wire::EncodedContent::new(
            gemini_wire::Content::text(None, text),
        ))
    }

    /// Its text.
    pub fn text(&self) -> &str {
        self.0
            .content()
            .parts
            .first()
            .and_then(|part| part.text.as_deref())
            .unwrap_or_default()
    }

    /// Its Gemini `systemInstruction`, already JSON.
    pub fn gemini(&self) -> &gemini_wire::EncodedContent {
        &self.0
    }
}

impl ModelRequest {
    /// The Gemini contents of this question: the history as alternating `user` / `model`
    /// contents, then the new message.
    pub fn wire_contents(&self) -> Vec<gemini_wire::Content> {
        let mut contents = Vec::with_capacity(self.history.len() + 1);
        contents.extend(
            self.history.iter().map(|turn| {
                gemini_wire::Content::text(Some(turn.role.as_str()), turn.text.clone())
            }),
        );
        contents.push(gemini_wire::Content::text(
            Some("user"),
            self.message.clone(),
        ));
        contents
    }

    /// The Gemini wire request for this question (what [`Self::encode_gemini`] writes).
    pub fn to_wire(&self) -> gemini_wire::GenerateContentRequest {
        gemini_wire::GenerateContentRequest {
            contents: self.wire_contents(),
            system_instruction: Some(self.system.gemini().content().clone()),
            generation_config: Some(self.generation.clone()),
            safety_settings: self.safety.to_wire(),
        }
    }

    /// The Gemini request body, with the system instruction's JSON written as encoded once.
    pub fn encode_gemini(&self) -> serde_json::Result<Vec<u8>> {
        let contents = self.wire_contents();
        let safety = self.safety.encoded()?;
        serde_json::to_vec(&gemini_wire::OutgoingRequest {
            contents: &contents,
            system_instruction: Some(self.system.gemini()),
            generation_config: Some(&self.generation),
            safety_settings: safety.as_deref(),
        })
    }
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Input tokens billed (system prompt and message).
    pub prompt_tokens: u32,
    /// Output tokens billed (answer and any thinking).
    pub output_tokens: u32,
}

/// A usable answer from the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// `Stop` for a complete answer; `MaxTokens` for a truncated one (returned, never cached).
    pub finish_reason: FinishReason,
    /// The model that answered, as reported to the learner.
    pub model: String,
    /// Tokens used.
    pub usage: Usage,
    /// Gemini's safety ratings of the question and the answer (none from other providers).
    pub ratings: crate::safety::Ratings,
}

/// One piece of a streamed answer, in the order the model produced it.
#[derive(Debug, Clone)]
pub enum StreamPiece {
    /// More answer text (never empty).
    Text(String),
    /// The end: the whole answer with usage and finish reason; the last item of a stream.
    Finished(Completion),
}

/// A streamed answer: `Text` pieces then one `Finished`; an `Err` item (e.g. a stream cut
/// mid-way) ends it without `Finished`.
pub type CompletionStream = futures::stream::BoxStream<'static, Result<StreamPiece, ProviderError>>;

/// Why the model gave no usable answer. Serializable because a lease holder shares its outcome
/// with the servers waiting on the same question.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ProviderError {
    /// 429: quota exhausted. `retry_after` comes from `google.rpc.RetryInfo`.
    #[error("model quota exhausted")]
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
        /// A per-day quota: retrying within the request is pointless.
        daily: bool,
    },
    /// The prompt or the answer was refused by the provider's safety system.
    #[error("blocked by the model's safety filters ({reason})")]
    Blocked {
        /// e.g. `PROHIBITED_CONTENT`, `SAFETY`.
        reason: String,
    },
    /// The provider is down, overloaded or failed (5xx, connection error).
    #[error("model unavailable: {message}")]
    Unavailable {
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// What went wrong, for logs only.
        message: String,
    },
    /// The provider refused the request itself (bad key, unknown model, bad request).
    #[error("model rejected the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// What the provider said, for logs only.
        message: String,
    },
    /// The attempt ran out of time.
    #[error("model call timed out")]
    Timeout,
    /// The answer stopped before producing any text (e.g. MAX_TOKENS spent on thinking).
    #[error("model produced no answer text (finish reason {0})")]
    Empty(String),
    /// The response could not be understood.
    #[error("invalid model response: {0}")]
    InvalidResponse(String),
}

impl ProviderError {
    /// True when the same call may succeed if tried again shortly.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::RateLimited { daily, .. } => !daily,
            ProviderError::Unavailable { .. } => true,
            _ => false,
        }
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error with any asked-for delay clamped to `max`: the delay comes from the wire,
    /// and neither our retries nor a client's `Retry-After` may wait for an absurd time.
    pub fn with_retry_after_at_most(self, max: Duration) -> ProviderError {
        match self {
            ProviderError::RateLimited { retry_after, daily } => ProviderError::RateLimited {
                retry_after: retry_after.map(|d| d.min(max)),
                daily,
            },
            other => other,
        }
    }

    /// True for a refusal of the prompt itself (blocked or filtered): asking again gets the same.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ProviderError::Blocked { .. })
    }

    /// A short, low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Blocked { .. } => "blocked",
            ProviderError::Unavailable { .. } => "unavailable",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Timeout => "timeout",
            ProviderError::Empty(_) => "empty",
            ProviderError::InvalidResponse(_) => "invalid_response",
        }
    }
}

/// The input tokens of a request by the quota's rule of thumb: the system prompt, every turn of
/// the history sent and the message. Conversations bound their history with the same estimate.
pub fn input_token_estimate(system_prompt: &str, history: &[ModelTurn], message: &str) -> u32 {
    let count = gemini_wire::answer::count_tokens;
    history
        .iter()
        .fold(count(system_prompt), |sum, t| {
            sum.saturating_add(count(&t.text))
        })
        .saturating_add(count(message))
}

/// Turns a parsed GenerateContentResponse into an answer or the reason there is none.
pub fn completion_from_response(
    response: GenerateContentResponse,
    requested_model: &str,
) -> Result<Completion, ProviderError> {
    if let Some(reason) = response.block_reason() {
        return Err(ProviderError::Blocked {
            reason: reason.to_owned(),
        });
    }
    let Some(finish_reason) = response.finish_reason().cloned() else {
        return Err(ProviderError::InvalidResponse(
            "no candidate with a finish reason".to_owned(),
        ));
    };
    if matches!(
        finish_reason,
        FinishReason::Safety
            | FinishReason::ProhibitedContent
            | FinishReason::Blocklist
            | FinishReason::Spii
            | FinishReason::Recitation
    ) {
        return Err(ProviderError::Blocked {
            reason: finish_reason.as_str().to_owned(),
        });
    }
    let ratings = crate::safety::Ratings {
        prompt: response
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.safety_ratings.clone())
            .unwrap_or_default(),
        answer: response
            .first_candidate()
            .and_then(|c| c.safety_ratings.clone())
            .unwrap_or_default(),
    };
    let text = response.text();
    if text.trim().is_empty() {
        return Err(ProviderError::Empty(finish_reason.as_str().to_owned()));
    }
    let usage = response
        .usage_metadata
        .as_ref()
        .map(|u| Usage {
            prompt_tokens: u.prompt_token_count,
            // Counts come from the wire: an absurd pair must not overflow.
            output_tokens: u
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(u.thoughts_token_count.unwrap_or(0)),
        })
        .unwrap_or_default();
    Ok(Completion {
        text,
        finish_reason,
        model: response
            .model_version
            .unwrap_or_else(|| requested_model.to_owned()),
        usage,
        ratings,
    })
}

/// Turns the events of a `streamGenerateContent` answer, in order, into stream pieces: each
/// event's text as a piece, and at the event with a finish reason the whole answer, judged by
/// the same rules as a non-streamed one (refusals, empty answers, usage from the last event).
#[derive(Debug)]
pub struct StreamAssembler {
    requested_model: String,
    text: String,
    finished: bool,
    /// The prompt's feedback, which comes with the first event, for the last one's answer.
    prompt_feedback: Option<gemini_wire::PromptFeedback>,
}

impl StreamAssembler {
    /// An assembler for an answer asked of `requested_model`.
    pub fn new(requested_model: &str) -> StreamAssembler {
        StreamAssembler {
            requested_model: requested_model.to_owned(),
            text: String::new(),
            finished: false,
            prompt_feedback: None,
        }
    }

    /// True once an event ended the answer (later events are ignored).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The pieces one event adds: its text, then `Finished` or an error when it ends the answer.
    pub fn event(
        &mut self,
        mut response: GenerateContentResponse,
    ) -> Vec<Result<StreamPiece, ProviderError>> {
        if self.finished {
            return Vec::new();
        }
        if let Some(reason) = response.block_reason() {
            self.finished = true;
            return vec![Err(ProviderError::Blocked {
                reason: reason.to_owned(),
            })];
        }
        if response.prompt_feedback.is_some() {
            self.prompt_feedback.clone_from(&response.prompt_feedback);
        }
        let piece = response.text();
        let mut out = Vec::with_capacity(2);
        if !piece.is_empty() {
            self.text.push_str(&piece);
        }
        if response.finish_reason().is_some() {
            self.finished = true;
            if response.prompt_feedback.is_none() {
                response.prompt_feedback = self.prompt_feedback.take();
            }
            // Judged as a whole answer: the last event with the text of all of them.
            if let Some(candidate) = response.candidates.first_mut() {
                candidate.content = Some(gemini_wire::Content::text(
                    Some("model"),
                    std::mem::take(&mut self.text),
                ));
            }
            match completion_from_response(response, &self.requested_model) {
                Ok(completion) => {
                    if !piece.is_empty() {
                        out.push(Ok(StreamPiece::Text(piece)));
                    }
                    out.push(Ok(StreamPiece::Finished(completion)));
                }
                Err(error) => out.push(Err(error)),
            }
        } else if !piece.is_empty() {
            out.push(Ok(StreamPiece::Text(piece)));
        }
        out
    }

    /// The body ended: an error unless an event finished the answer (a stream cut mid-way).
    pub fn end(&self) -> Option<ProviderError> {
        (!self.finished).then(|| ProviderError::Unavailable {
            status: None,
            message: "the answer stream ended without a finish reason".to_owned(),
        })
    }
}

/// A provider: the model service that answers (Gemini, an OpenAI-compatible endpoint or the offline model).
#[derive(Debug, Clone)]
pub enum Provider {
    /// Google Gemini over its REST API.
    Gemini(GeminiClient),
    /// The built-in offline model (no API key configured); boxed, it carries a whole sim config.
    Offline(Box<OfflineModel>),
    /// An OpenAI-compatible Chat Completions endpoint.
    OpenAi(OpenAiClient),
}

impl Provider {
    /// One attempt, bounded by `deadline`; retries are the caller's business.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        match self {
            Provider::Gemini(client) => client.generate(request, deadline).await,
            Provider::Offline(model) => model.generate(request, deadline).await,
            Provider::OpenAi(client) => client.generate(request, deadline).await,
        }
    }

    /// One streamed attempt: errors before the body are returned, later ones end the stream.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        match self {
            Provider::Gemini(client) => client.generate_stream(request, deadline).await,
            Provider::Offline(model) => model.generate_stream(request, deadline).await,
            Provider::OpenAi(client) => client.generate_stream(request, deadline).await,
        }
    }

    /// `gemini`, `openai` or `offline-simulated`, for /ready and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Gemini(_) => "gemini",
            Provider::Offline(_) => "offline-simulated",
            Provider::OpenAi(_) => "openai",
        }
    }

    /// Which provider answers (`gemini@host`, `openai@host` or `offline-simulated`): part of every cache key, so
    /// a shared cache never serves one provider's answers as another's.
    pub fn identity(&self) -> &str {
        match self {
            Provider::Gemini(client) => client.identity(),
            Provider::Offline(_) => "offline-simulated",
            Provider::OpenAi(client) => client.identity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> GenerateContentResponse {
        let path = format!(
            "{}/../gemini-wire/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn recorded_success_becomes_a_complete_answer() {
        let c = completion_from_response(fixture("generate_ok.json"), "x").unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.model, "gemini-3-pro-preview");
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 9,
                output_tokens: 28 + 244
            }
        );
    }

    #[test]
    fn the_history_goes_as_alternating_contents_before_the_message() {
        let request = ModelRequest {
            model: "gemini-2.5-flash".into(),
            system: SystemInstruction::new("You are a tutor.".into()),
            history: vec![
                ModelTurn {
                    role: Role::User,
                    text: "What is a derivative?".into(),
                },
                ModelTurn {
                    role: Role::Model,
                    text: "A rate of change.".into(),
                },
            ]
            .into(),
            message: "Can you show me an example?".into(),
            generation: GenerationConfig::default(),
            safety: Default::default(),
        };
        let wire = serde_json::to_value(request.to_wire()).unwrap();
        assert_eq!(
            wire["contents"],
            serde_json::json!([
                {"role": "user", "parts": [{"text": "What is a derivative?"}]},
                {"role": "model", "parts": [{"text": "A rate of change."}]},
                {"role": "user", "parts": [{"text": "Can you show me an example?"}]},
            ])
        );
        assert_eq!(
            wire["systemInstruction"],
            serde_json::json!({"parts": [{"text": "You are a tutor."}]})
        );
        // The body sent is the wire request's JSON, byte for byte.
        assert_eq!(
            request.encode_gemini().unwrap(),
            serde_json::to_vec(&request.to_wire()).unwrap()
        );
    }

    fn assemble(body: &str) -> Vec<Result<StreamPiece, ProviderError>> {
        let mut assembler = StreamAssembler::new("x");
        let mut out = Vec::new();
        for event in gemini_wire::sse::parse_events(body).unwrap() {
            out.extend(assembler.event(serde_json::from_str(&event.data).unwrap()));
        }
        out.extend(assembler.end().map(Err));
        out
    }

    #[test]
    fn recorded_stream_becomes_pieces_then_the_whole_answer() {
        let path = format!(
            "{}/../gemini-wire/tests/fixtures/stream_ok.sse",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read_to_string(path).unwrap();
        let pieces = assemble(&body);
        let texts: Vec<String> = pieces
            .iter()
            .filter_map(|p| match p {
                Ok(StreamPiece::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 3);
        let Some(Ok(StreamPiece::Finished(done))) = pieces.last() else {
            panic!("no Finished: {pieces:?}");
        };
        assert_eq!(done.text, texts.concat());
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert_eq!(done.model, "gemini-2.5-flash");
        // Usage comes from the last event only (counts are cumulative).
        assert_eq!(
            done.usage,
            Usage {
                prompt_tokens: 18,
                output_tokens: 80 + 35
            }
        );
        let expected: String = (1..=30).map(|n| format!("{n}\n")).collect();
        assert_eq!(format!("{}\n", done.text), expected);
    }

    #[test]
    fn a_stream_cut_before_its_finish_reason_ends_with_an_error() {
        let path = format!(
            "{}/../gemini-wire/tests/fixtures/stream_ok.sse",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read_to_string(path).unwrap_or_default();
        let events = gemini_wire::sse::parse_events(&body).unwrap();
        let cut: String = events
            .iter()
            .take(2)
            .map(|e| gemini_wire::sse::frame_event(&e.data))
            .collect();
        let pieces = assemble(&cut);
        assert!(matches!(
            pieces.last(),
            Some(Err(ProviderError::Unavailable { .. }))
        ));
        assert!(pieces
            .iter()
            .all(|p| !matches!(p, Ok(StreamPiece::Finished(_)))));
    }

    #[test]
    fn recorded_refusals_map_to_clear_errors() {
        assert_eq!(
            completion_from_response(fixture("blocked_prompt.json"), "x"),
            Err(ProviderError::Blocked {
                reason: "PROHIBITED_CONTENT".into()
            })
        );
        assert_eq!(
            completion_from_response(fixture("finish_safety.json"), "x"),
            Err(ProviderError::Blocked {
                reason: "SAFETY".into()
            })
        );
        assert_eq!(
            completion_from_response(fixture("max_tokens.json"), "x"),
            Err(ProviderError::Empty("MAX_TOKENS".into()))
        );
    }
}
