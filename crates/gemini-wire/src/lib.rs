//! Gemini REST v1beta wire types (generativelanguage.googleapis.com).
//!
//! One definition shared by the service's Gemini client and by `gemini-sim`, so the simulator and the
//! client cannot drift apart silently; both are checked against bodies recorded from the real API
//! (`shared/gemini-fixtures`). Response types ignore unknown fields: Google adds fields often, and a
//! client that rejects them breaks on the next model release.
//!
//! [`sse`] also holds the server-sent events decoder that every event-stream reader of the
//! workspace uses (Gemini's, OpenAI-compatible servers', the service's own), here because all of
//! them already depend on this crate and none needs the server for it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

pub mod answer;
pub mod respond;
pub mod sse;

/// The `@type` of the retry hint inside an error's `details`.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
/// The `@type` of the quota violation list inside a 429's `details`.
pub const QUOTA_FAILURE_TYPE: &str = "type.googleapis.com/google.rpc.QuotaFailure";
/// The `@type` of the machine-readable reason inside an error's `details`.
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// The `@type` of the human-readable message inside an error's `details`.
pub const LOCALIZED_MESSAGE_TYPE: &str = "type.googleapis.com/google.rpc.LocalizedMessage";
/// The `@type` of the documentation links inside an error's `details`.
pub const HELP_TYPE: &str = "type.googleapis.com/google.rpc.Help";

/// Body of `models/{model}:generateContent` and `:streamGenerateContent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation so far, oldest first; the last turn is the user's.
    #[serde(default)]
    pub contents: Vec<Content>,
    /// The tutor's system prompt. Gemini's JSON mapping also accepts the proto field name.
    #[serde(
        default,
        alias = "system_instruction",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_instruction: Option<Content>,
    /// Sampling and length settings.
    #[serde(
        default,
        alias = "generation_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub generation_config: Option<GenerationConfig>,
    /// Safety thresholds, passed through untouched.
    #[serde(
        default,
        alias = "safety_settings",
        skip_serializing_if = "Option::is_none"
    )]
    pub safety_settings: Option<Vec<Value>>,
}

/// The body of a request as a client sends it: [`GenerateContentRequest`]'s JSON, field for field,
/// with the system instruction ([`EncodedContent`]) and the safety settings encoded once and the
/// rest borrowed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingRequest<'a> {
    /// The conversation so far, oldest first; the last turn is the user's.
    pub contents: &'a [Content],
    /// The tutor's system prompt, already JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<&'a EncodedContent>,
    /// Sampling and length settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<&'a GenerationConfig>,
    /// Safety thresholds, already JSON (an array).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_settings: Option<&'a serde_json::value::RawValue>,
}

/// A [`Content`] turned into JSON once and shared. A tutor's system prompt is the same in every
/// request it sends; escaping its kilobytes again for each call was a tenth of a model call's
/// own work.
#[derive(Debug, Clone)]
pub struct EncodedContent {
    /// `None` only if encoding failed, which plain strings cannot: then the content is
    /// serialized as usual.
    json: Option<std::sync::Arc<serde_json::value::RawValue>>,
    content: std::sync::Arc<Content>,
}

impl EncodedContent {
    /// `content` and its JSON.
    pub fn new(content: Content) -> EncodedContent {
        EncodedContent {
            json: serde_json::value::to_raw_value(&content)
                .ok()
                .map(Into::into),
            content: std::sync::Arc::new(content),
        }
    }

    /// The content itself.
    pub fn content(&self) -> &Content {
        &self.content
    }
}

impl Serialize for EncodedContent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.json {
            Some(json) => json.serialize(serializer),
            None => self.content.serialize(serializer),
        }
    }
}

/// One turn of a conversation (or the system instruction).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `user` or `model`; absent on system instructions and on some empty candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Absent when a candidate was cut before producing text (MAX_TOKENS, SAFETY).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

impl Content {
    /// A turn holding one text part.
    pub fn text(role: Option<&str>, text: impl Into<String>) -> Self {
        Content {
            role: role.map(str::to_owned),
            parts: vec![Part::text(text)],
        }
    }

    /// The concatenated text of every part that is not a thought summary.
    pub fn joined_text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| !p.thought.unwrap_or(false))
            .filter_map(|p| p.text.as_deref())
            .collect()
    }
}

/// One part of a turn; only text is used by this project, other kinds are carried opaquely.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// The text of a text part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// True when this part is a thought summary rather than answer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque signature thinking models attach to parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

impl Part {
    /// A plain text part.
    pub fn text(text: impl Into<String>) -> Self {
        Part {
            text: Some(text.into()),
            ..Part::default()
        }
    }
}

/// `generationConfig` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default, alias = "top_p", skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Hard cap on the answer's tokens; reaching it ends with `MAX_TOKENS`.
    #[serde(
        default,
        alias = "max_output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_output_tokens: Option<u32>,
    /// Strings that end generation when produced.
    #[serde(
        default,
        alias = "stop_sequences",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_sequences: Option<Vec<String>>,
    /// Number of candidates; this project always asks for one.
    #[serde(
        default,
        alias = "candidate_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub candidate_count: Option<u32>,
    /// Thinking budget of 2.5+ models.
    #[serde(
        default,
        alias = "thinking_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_config: Option<ThinkingConfig>,
}

/// `generationConfig.thinkingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    /// Tokens the model may spend thinking; 0 turns thinking off on models that allow it.
    #[serde(
        default,
        alias = "thinking_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_budget: Option<i32>,
    /// Whether thought summaries are returned as parts.
    #[serde(
        default,
        alias = "include_thoughts",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_thoughts: Option<bool>,
}

/// Response of `generateContent`, and each event of `streamGenerateContent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// Absent entirely when the prompt was blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// Present when the prompt itself was judged; `blockReason` set means no candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token accounting; cumulative across the events of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// The exact model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Google's id of this response (the same on every event of a stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

impl GenerateContentResponse {
    /// The first candidate, if any.
    pub fn first_candidate(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// The answer text of the first candidate (thought parts excluded); empty when there is none.
    pub fn text(&self) -> String {
        self.first_candidate()
            .and_then(|c| c.content.as_ref())
            .map(Content::joined_text)
            .unwrap_or_default()
    }

    /// The first candidate's finish reason, if it has one yet.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.first_candidate()
            .and_then(|c| c.finish_reason.as_ref())
    }

    /// Why the prompt was blocked, when it was.
    pub fn block_reason(&self) -> Option<&str> {
        self.prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
    }
}

/// One generated answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The answer; `{}` or role-only when generation stopped before any text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Why generation ended; absent on all but the last event of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Position among the candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Per-category safety judgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<Vec<SafetyRating>>,
}

/// Why a candidate stopped. Unknown future values parse as [`FinishReason::Other`]'s sibling
/// [`FinishReason::Unknown`] instead of failing the whole response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinishReason {
    /// Natural end or a stop sequence: the only complete answer.
    Stop,
    /// `maxOutputTokens` reached.
    MaxTokens,
    /// Stopped by a safety filter.
    Safety,
    /// Stopped for reciting training data.
    Recitation,
    /// Unsupported language.
    Language,
    /// Other reason given by the API.
    Other,
    /// Terms from a blocklist.
    Blocklist,
    /// Prohibited content.
    ProhibitedContent,
    /// Sensitive personal information.
    Spii,
    /// Malformed function call.
    MalformedFunctionCall,
    /// Unspecified.
    FinishReasonUnspecified,
    /// A value this client does not know yet.
    #[serde(other)]
    Unknown,
}

impl FinishReason {
    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "STOP",
            FinishReason::MaxTokens => "MAX_TOKENS",
            FinishReason::Safety => "SAFETY",
            FinishReason::Recitation => "RECITATION",
            FinishReason::Language => "LANGUAGE",
            FinishReason::Other => "OTHER",
            FinishReason::Blocklist => "BLOCKLIST",
            FinishReason::ProhibitedContent => "PROHIBITED_CONTENT",
            FinishReason::Spii => "SPII",
            FinishReason::MalformedFunctionCall => "MALFORMED_FUNCTION_CALL",
            FinishReason::FinishReasonUnspecified => "FINISH_REASON_UNSPECIFIED",
            FinishReason::Unknown => "UNKNOWN",
        }
    }
}

/// `promptFeedback` of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// Set when the prompt was refused (SAFETY, PROHIBITED_CONTENT, BLOCKLIST, OTHER, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason: Option<String>,
    /// Per-category judgements of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<Vec<SafetyRating>>,
}

/// One safety judgement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SafetyRating {
    /// e.g. `HARM_CATEGORY_HATE_SPEECH`.
    pub category: String,
    /// e.g. `NEGLIGIBLE`, `LOW`.
    pub probability: String,
    /// True when this category caused the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
}

/// `usageMetadata` of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Input tokens (system instruction and contents).
    #[serde(default)]
    pub prompt_token_count: u32,
    /// Answer tokens; absent when no answer text was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_token_count: Option<u32>,
    /// Everything billed, thoughts included.
    #[serde(default)]
    pub total_token_count: u32,
    /// Thinking tokens of thinking models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts_token_count: Option<u32>,
    /// Tokens served from a context cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_content_token_count: Option<u32>,
    /// Input tokens by modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<Vec<ModalityTokenCount>>,
    /// e.g. `standard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
}

/// Tokens of one modality.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModalityTokenCount {
    /// e.g. `TEXT`.
    pub modality: String,
    /// Tokens of that modality.
    #[serde(default)]
    pub token_count: u32,
}

/// Body of `models/{model}:countTokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensRequest {
    /// Contents to count.
    #[serde(default)]
    pub contents: Vec<Content>,
    /// Alternatively, a whole generate request (system instruction included).
    #[serde(
        default,
        alias = "generate_content_request",
        skip_serializing_if = "Option::is_none"
    )]
    pub generate_content_request: Option<GenerateContentRequest>,
}

/// Response of `countTokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensResponse {
    /// Tokens the request would use as input.
    pub total_tokens: u32,
    /// Tokens by modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<Vec<ModalityTokenCount>>,
}

/// Every Gemini error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The google.rpc.Status.
    pub error: ErrorStatus,
}

/// google.rpc.Status as Gemini sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// The HTTP status code.
    pub code: u16,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Canonical code, e.g. `RESOURCE_EXHAUSTED`.
    #[serde(default)]
    pub status: String,
    /// Typed details (`@type` tagged): RetryInfo, QuotaFailure, ErrorInfo, Help, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

impl ErrorStatus {
    fn details_of<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.details
            .iter()
            .filter(move |d| d.get("@type").and_then(Value::as_str) == Some(ty))
    }

    /// `google.rpc.RetryInfo.retryDelay`: how long Gemini asks the client to wait.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.details_of(RETRY_INFO_TYPE)
            .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
            .find_map(parse_proto_duration)
    }

    /// The `quotaId`s of every `google.rpc.QuotaFailure` violation.
    pub fn quota_ids(&self) -> Vec<String> {
        self.details_of(QUOTA_FAILURE_TYPE)
            .filter_map(|d| d.get("violations").and_then(Value::as_array))
            .flatten()
            .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// True when a 429 is for a per-day quota: waiting seconds will not help.
    pub fn is_daily_quota(&self) -> bool {
        self.quota_ids()
            .iter()
            .any(|id| id.contains("PerDay") || id.contains("per_day"))
    }

    /// `google.rpc.ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub fn error_reason(&self) -> Option<&str> {
        self.details_of(ERROR_INFO_TYPE)
            .find_map(|d| d.get("reason").and_then(Value::as_str))
    }
}

/// The longest duration [`parse_proto_duration`] returns: protobuf's own bound for a Duration
/// (about 10,000 years). Larger values are clamped to it rather than overflowing, so callers can
/// apply their own, much smaller, limit.
pub const MAX_PROTO_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Parses a protobuf JSON Duration such as `"26s"`, `"12.3s"` or `"0.250s"`. Malformed, negative
/// or non-finite values are `None`; absurdly large ones clamp to [`MAX_PROTO_DURATION`]. Never
/// panics, whatever the text: it comes from the network.
pub fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(seconds)
            .map_or(MAX_PROTO_DURATION, |d| d.min(MAX_PROTO_DURATION)),
    )
}

/// Formats a duration as a protobuf JSON Duration the way Google does (`"26s"`, `"12.345s"`).
pub fn format_proto_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let text = format!("{}.{:03}", millis / 1000, millis % 1000);
        format!("{}s", text.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outgoing body is byte for byte what the owned request serializes to, with every
    /// optional part present and absent, and a prompt full of characters JSON escapes.
    #[test]
    fn an_outgoing_request_is_the_owned_requests_json() {
        let prompt = "Tutor \"math\"\n\t\\ \u{1} é 😀 </script>";
        let contents = vec![
            Content::text(Some("user"), "What is 2+2?"),
            Content::text(Some("model"), "Four.\n"),
            Content::text(Some("user"), "And \"3+3\"?"),
        ];
        let generation = GenerationConfig {
            temperature: Some(0.5),
            max_output_tokens: Some(512),
            ..GenerationConfig::default()
        };
        let safety = vec![serde_json::json!({
            "category": "HARM_CATEGORY_HARASSMENT",
            "threshold": "BLOCK_LOW_AND_ABOVE"
        })];
        let system = EncodedContent::new(Content::text(None, prompt));
        let safety_json = serde_json::value::to_raw_value(&safety).unwrap();
        assert_eq!(system.content(), &Content::text(None, prompt));
        for (with_system, with_generation, with_safety) in [
            (true, true, true),
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let owned = GenerateContentRequest {
                contents: contents.clone(),
                system_instruction: with_system.then(|| Content::text(None, prompt)),
                generation_config: with_generation.then(|| generation.clone()),
                safety_settings: with_safety.then(|| safety.clone()),
            };
            let outgoing = OutgoingRequest {
                contents: &contents,
                system_instruction: with_system.then_some(&system),
                generation_config: with_generation.then_some(&generation),
                safety_settings: with_safety.then_some(&*safety_json),
            };
            assert_eq!(
                serde_json::to_string(&outgoing).unwrap(),
                serde_json::to_string(&owned).unwrap(),
                "system {with_system}, generation {with_generation}, safety {with_safety}"
            );
        }
    }

    #[test]
    fn proto_durations_round_trip() {
        assert_eq!(parse_proto_duration("26s"), Some(Duration::from_secs(26)));
        assert_eq!(
            parse_proto_duration("12.3s"),
            Some(Duration::from_millis(12300))
        );
        assert_eq!(parse_proto_duration("12"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
        assert_eq!(parse_proto_duration("NaNs"), None);
        assert_eq!(parse_proto_duration("infs"), None);
        // Values that overflow a Duration clamp instead of panicking: the reply comes from the
        // network and a panic would take down the shared model-call task.
        assert_eq!(parse_proto_duration("1e20s"), Some(MAX_PROTO_DURATION));
        assert_eq!(parse_proto_duration("1e300s"), Some(MAX_PROTO_DURATION));
        assert_eq!(parse_proto_duration("1e-30s"), Some(Duration::ZERO));
        assert_eq!(format_proto_duration(Duration::from_secs(26)), "26s");
        assert_eq!(format_proto_duration(Duration::from_millis(12300)), "12.3s");
        assert_eq!(format_proto_duration(Duration::from_millis(250)), "0.25s");
    }

    #[test]
    fn unknown_finish_reason_does_not_fail_parsing() {
        let r: Candidate = serde_json::from_str(r#"{"finishReason":"SOMETHING_NEW"}"#).unwrap();
        assert_eq!(r.finish_reason, Some(FinishReason::Unknown));
    }
}
