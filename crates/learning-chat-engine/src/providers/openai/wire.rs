//! The Chat Completions bodies the client reads, as recorded in `tests/fixtures/openai`. Every
//! field is optional: compatible servers (vLLM, Ollama, llama.cpp) leave out different ones.

use serde::Deserialize;

/// A non-streamed answer.
#[derive(Debug, Deserialize)]
pub struct ChatCompletion {
    /// The model that answered, as the endpoint names it.
    #[serde(default)]
    pub model: Option<String>,
    /// Candidate answers; the first is used.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

/// One candidate of a non-streamed answer.
#[derive(Debug, Deserialize)]
pub struct Choice {
    /// The answer message.
    #[serde(default)]
    pub message: Option<ChoiceMessage>,
    /// `stop`, `length`, `content_filter`, `tool_calls`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant's message.
#[derive(Debug, Deserialize)]
pub struct ChoiceMessage {
    /// The text (null for a refusal).
    #[serde(default)]
    pub content: Option<String>,
    /// A refusal's explanation, when the model refused.
    #[serde(default)]
    pub refusal: Option<String>,
}

/// `usage` of an answer or of the last stream chunk.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct WireUsage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u32,
    /// Output tokens (reasoning included).
    #[serde(default)]
    pub completion_tokens: u32,
}

/// One `data:` chunk of a streamed answer.
#[derive(Debug, Deserialize)]
pub struct ChatChunk {
    /// The model that answers.
    #[serde(default)]
    pub model: Option<String>,
    /// Deltas; empty in the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Present (non-null) in the last chunk with `stream_options.include_usage`.
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

/// One choice's delta.
#[derive(Debug, Deserialize)]
pub struct ChunkChoice {
    /// New text.
    #[serde(default)]
    pub delta: Option<ChunkDelta>,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The new text of a chunk.
#[derive(Debug, Deserialize)]
pub struct ChunkDelta {
    /// More answer text.
    #[serde(default)]
    pub content: Option<String>,
}
