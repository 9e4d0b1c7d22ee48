//! The OpenAI Chat Completions wire types this API reads and writes (the fields the tutors
//! honour; any other field of a request is ignored, as OpenAI does), plus the service's
//! documented extension fields (`conversation_id`, `cached`, `turn`, `history_truncated`,
//! `description`).

use learning_chat_engine::providers::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /v1/chat/completions`: a question to the tutor named by `model`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The tutor (agent id), e.g. `math`; `GET /v1/models` lists them.
    #[schema(example = "math")]
    pub model: Option<String>,
    /// The conversation so far, oldest first, ending with the learner's new `user` message.
    /// Earlier `user` / `assistant` messages are the history; `system` and `developer`
    /// messages are ignored (the tutor's own instructions always apply).
    pub messages: Option<Vec<Message>>,
    /// `true` for OpenAI's server-sent `chat.completion.chunk` events ending in `data: [DONE]`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `include_usage: true` adds a last chunk with `usage` (and no choices) to a stream.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Longest answer sent, in tokens (the service's estimate: 4 characters a token); a longer
    /// answer is cut and ends with `finish_reason: "length"`.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens` (the smaller wins when both are sent).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Up to 4 sequences: the answer sent ends before the first of them
    /// (`finish_reason: "stop"`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Sampling temperature (0 to 2). Applied: a value other than the tutor's own is answered
    /// and cached apart, so only callers sending the same value share those answers.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling (0 to 1), applied like `temperature`.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Must be 1 (or absent): a tutor gives one answer.
    #[serde(default)]
    pub n: Option<u32>,
    /// The learner: used as `X-Learner-Id` (per-learner limits) when that header is absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: the `conversation_id` of an earlier answer; send only the new message in
    /// `messages`, the stored conversation is the history.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Not offered (400 `unsupported`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tools: Option<Value>,
    /// Not offered (400 `unsupported`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub functions: Option<Value>,
    /// Only `{"type": "text"}` (anything else is 400 `unsupported`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Not offered when `true` (400 `unsupported`).
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Not offered (400 `unsupported`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub audio: Option<Value>,
}

/// One message of `messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Message {
    /// `user`, `assistant`, `system` or `developer` (`tool` and `function` are not offered).
    #[schema(value_type = String)]
    pub role: MessageRole,
    /// Text, or a list of `{"type": "text", "text": ...}` parts (images and other media are
    /// not offered).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub content: Option<Content>,
}

/// Who wrote a message (read without allocating: this is on every request's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// The learner.
    User,
    /// The tutor.
    Assistant,
    /// Instructions from the client (ignored: the tutor's own apply).
    System,
    /// Newer name of `system` (ignored likewise).
    Developer,
    /// A tool's result (not offered).
    Tool,
    /// A function's result (not offered).
    Function,
    /// Any other role (refused).
    #[serde(other)]
    Other,
}

/// A message's content: text, or content parts.
#[derive(Debug)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<Part>),
}

impl<'de> Deserialize<'de> for Content {
    /// A string or a list of parts, read in one pass (serde's untagged enums buffer the value
    /// and copy it).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Content, D::Error> {
        struct ContentVisitor;
        impl<'de> serde::de::Visitor<'de> for ContentVisitor {
            type Value = Content;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Content, E> {
                Ok(Content::Text(text.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Content, E> {
                Ok(Content::Text(text))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// `text` (any other type is refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Adds a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The answer: a `chat.completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-...`, unique per response.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The tutor (agent id) that answered, as asked.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// Tokens the answer cost when the model produced it.
    pub usage: CompletionUsage,
    /// Extension: true when served from the cache (no model call).
    pub cached: bool,
    /// Extension: the conversation to continue with `conversation_id` (a first question's
    /// answer gets one; an answer after a history sent in `messages` gets `null`).
    pub conversation_id: Option<String>,
    /// Extension: which exchange of the conversation this was (1 for a first question).
    pub turn: u32,
    /// Extension: older turns were left out of the history sent to the model.
    pub history_truncated: bool,
    /// Extension: the answer policy and version the conversation is tutored with
    /// (`hints@1`).
    pub policy: &'static str,
    /// Extension: the conversation's experiment variant (`experiment/variant`), when in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The one choice of an answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// 0.
    pub index: u32,
    /// The tutor's message.
    pub message: AssistantMessage,
    /// `stop`, `length` (cut by `max_tokens` or the tutor's own limit) or `content_filter`.
    pub finish_reason: &'static str,
}

/// The tutor's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The answer text (a cached answer's own text, not a copy).
    #[schema(value_type = String)]
    pub content: learning_chat_engine::chat::AnswerText,
}

/// OpenAI's usage block.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CompletionUsage {
    /// Input tokens.
    pub prompt_tokens: u32,
    /// Output tokens.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl From<Usage> for CompletionUsage {
    fn from(usage: Usage) -> CompletionUsage {
        CompletionUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.output_tokens),
        }
    }
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same `chatcmpl-...` in every chunk of a stream.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The tutor (agent id).
    pub model: String,
    /// One choice; none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the last chunk, with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    /// Extension, in the chunk with `finish_reason`: served from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    /// Extension, in the chunk with `finish_reason`: the conversation to continue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// The choice of a chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    /// 0.
    pub index: u32,
    /// The next piece: `role` in the first chunk, `content` while the answer comes, empty in
    /// the last.
    pub delta: Delta,
    /// `null` until the last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A chunk's piece of the message.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    /// `assistant`, in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The next piece of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// One model per tutor the key may use, sorted by id.
    pub data: Vec<Model>,
}

/// A tutor as an OpenAI model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// The agent id: pass it as `model`.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds: when this server started serving it.
    pub created: u64,
    /// `learning-chat`.
    pub owned_by: &'static str,
    /// Extension: the tutor's display name.
    pub name: String,
    /// Extension: what the tutor covers.
    pub description: String,
}
