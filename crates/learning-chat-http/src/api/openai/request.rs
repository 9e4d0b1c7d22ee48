//! A Chat Completions request read into what the engine is asked: the tutor, the new message,
//! what it continues, and how the answer is sent. Every refusal names the field at fault.

use super::cut::Cut;
use super::error::OpenAiError;
use super::wire::{ChatCompletionRequest, Content, Message, MessageRole};
use learning_chat_engine::chat::Thread;
use learning_chat_engine::providers::{ModelTurn, Role};

/// Most `stop` sequences, as OpenAI allows.
const MAX_STOP_SEQUENCES: usize = 4;

/// What a request asks.
#[derive(Debug)]
pub struct Completion {
    /// The tutor (agent id).
    pub model: String,
    /// The learner's new message.
    pub message: String,
    /// What it continues.
    pub thread: Thread,
    /// Streamed as chunks.
    pub stream: bool,
    /// A stream ends with a usage chunk.
    pub include_usage: bool,
    /// Where the client's `max_tokens` and `stop` end the answer it is sent.
    pub cut: Cut,
    /// The `user` field (the learner, when no `X-Learner-Id` header names one).
    pub user: Option<String>,
    /// The caller's `temperature` and `top_p`, when given (the tutor's own otherwise).
    pub sampling: (Option<f32>, Option<f32>),
}

impl TryFrom<ChatCompletionRequest> for Completion {
    type Error = OpenAiError;

    fn try_from(request: ChatCompletionRequest) -> Result<Completion, OpenAiError> {
        refuse_unsupported(&request)?;
        let model = request.model.filter(|m| !m.is_empty()).ok_or_else(|| {
            OpenAiError::invalid(
                "model",
                "you must provide a model parameter (a tutor's id, see GET /v1/models)",
            )
        })?;
        if let Some(t) = request.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return Err(OpenAiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, not {t}"),
            ));
        }
        if let Some(p) = request.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(OpenAiError::invalid(
                "top_p",
                format!("top_p must be between 0 and 1, not {p}"),
            ));
        }
        let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if max_tokens == Some(0) {
            return Err(OpenAiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        let stop = stop_sequences(request.stop)?;
        let (message, turns) = conversation(request.messages.unwrap_or_default())?;
        let thread = match (request.conversation_id, turns.is_empty()) {
            (Some(id), true) => Thread::Id(id),
            (Some(_), false) => {
                return Err(OpenAiError::invalid(
                    "conversation_id",
                    "send either `conversation_id` with only the new message, or the earlier \
                     messages in `messages`, not both",
                ))
            }
            // The client holds its history (the next request sends it in `messages`): an
            // experiment assigns this conversation by its first message, as it will then.
            (None, _) => Thread::Turns(turns),
        };
        Ok(Completion {
            model,
            message,
            thread,
            stream: request.stream.unwrap_or(false),
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
            cut: Cut::new(max_tokens, stop),
            user: request.user.filter(|u| !u.trim().is_empty()),
            // Within range (checked above), so the narrowing keeps the value.
            sampling: (
                request.temperature.map(|t| t as f32),
                request.top_p.map(|p| p as f32),
            ),
        })
    }
}

/// Refuses what the tutors do not offer, naming it.
fn refuse_unsupported(request: &ChatCompletionRequest) -> Result<(), OpenAiError> {
    let given = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    if given(&request.tools) {
        return Err(OpenAiError::unsupported(
            "tools",
            "tools (function calling) are not offered by the tutors",
        ));
    }
    if given(&request.functions) {
        return Err(OpenAiError::unsupported(
            "functions",
            "functions (function calling) are not offered by the tutors",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::unsupported(
            "n",
            "a tutor gives one answer: n must be 1",
        ));
    }
    if request.logprobs == Some(true) {
        return Err(OpenAiError::unsupported(
            "logprobs",
            "logprobs are not offered by the tutors",
        ));
    }
    if given(&request.audio) {
        return Err(OpenAiError::unsupported(
            "audio",
            "audio output is not offered by the tutors",
        ));
    }
    if let Some(format) = request.response_format.as_ref().filter(|f| !f.is_null()) {
        if format.get("type").and_then(|t| t.as_str()) != Some("text") {
            return Err(OpenAiError::unsupported(
                "response_format",
                "the tutors answer in text only: response_format must be {\"type\": \"text\"}",
            ));
        }
    }
    Ok(())
}

/// `stop` as a list of non-empty sequences (a string is one).
fn stop_sequences(stop: Option<serde_json::Value>) -> Result<Vec<String>, OpenAiError> {
    let bad = || OpenAiError::invalid("stop", "stop must be a string or a list of up to 4 strings");
    let sequences = match stop {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s],
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if sequences.len() > MAX_STOP_SEQUENCES {
        return Err(bad());
    }
    Ok(sequences.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The new message and the turns before it. `system` and `developer` messages are left out
/// (the tutor's instructions are its own); consecutive messages of one role are joined (a
/// blank line between); assistant messages before the first user message (a chat window's
/// greeting) are left out; the last message must be the learner's.
fn conversation(messages: Vec<Message>) -> Result<(String, Vec<ModelTurn>), OpenAiError> {
    let mut turns: Vec<ModelTurn> = Vec::with_capacity(messages.len());
    for message in messages {
        let role = match message.role {
            MessageRole::System | MessageRole::Developer => continue,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Model,
            MessageRole::Tool | MessageRole::Function => {
                return Err(OpenAiError::unsupported(
                    "messages",
                    "tool and function messages are not offered by the tutors",
                ))
            }
            MessageRole::Other => {
                return Err(OpenAiError::invalid(
                    "messages",
                    "unknown message role: use user, assistant or system",
                ))
            }
        };
        let text = text_of(message.content)?;
        if role == Role::Model && turns.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => {
                last.text.push_str("\n\n");
                last.text.push_str(&text);
            }
            _ => turns.push(ModelTurn { role, text }),
        }
    }
    match turns.pop() {
        Some(last) if last.role == Role::User => Ok((last.text, turns)),
        Some(_) => Err(OpenAiError::invalid(
            "messages",
            "the last message must be the learner's (role `user`)",
        )),
        None => Err(OpenAiError::invalid(
            "messages",
            "messages must hold at least one `user` message",
        )),
    }
}

/// A message's text; media parts are refused.
fn text_of(content: Option<Content>) -> Result<String, OpenAiError> {
    match content {
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                if part.kind != "text" {
                    return Err(OpenAiError::unsupported(
                        "messages",
                        format!(
                            "content parts of type {:?} (images, audio, files) are not offered \
                             by the tutors: send text",
                            part.kind
                        ),
                    ));
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(part.text.as_deref().unwrap_or(""));
            }
            Ok(text)
        }
        None => Err(OpenAiError::invalid(
            "messages",
            "every message needs text `content`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: serde_json::Value) -> Result<Completion, OpenAiError> {
        let request: ChatCompletionRequest = serde_json::from_value(json).unwrap();
        Completion::try_from(request)
    }

    #[test]
    fn a_single_question_is_a_new_conversation_whose_client_holds_the_history() {
        let c = read(serde_json::json!({
            "model": "math",
            "messages": [{"role": "system", "content": "Be a pirate."},
                         {"role": "user", "content": "What is 2+2?"}],
            "temperature": 0.7, "unknown_field": true
        }))
        .unwrap();
        assert_eq!(
            (c.model.as_str(), c.message.as_str()),
            ("math", "What is 2+2?")
        );
        assert_eq!(c.thread, Thread::Turns(Vec::new()));
    }

    #[test]
    fn earlier_messages_are_the_history() {
        let c = read(serde_json::json!({
            "model": "math",
            "messages": [{"role": "assistant", "content": "Hello! Ask me anything."},
                         {"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
                         {"role": "user", "content": "Why?"}]
        }))
        .unwrap();
        let Thread::Turns(turns) = c.thread else {
            panic!("{:?}", c.thread)
        };
        assert_eq!(turns.len(), 2);
        assert_eq!((turns[0].role, turns[1].text.as_str()), (Role::User, "4"));
        assert_eq!(c.message, "Why?");
    }

    #[test]
    fn what_is_not_offered_is_refused_by_name() {
        for (json, param) in [
            (serde_json::json!({"model": "math", "n": 2}), "n"),
            (
                serde_json::json!({"model": "math", "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                serde_json::json!({"model": "math", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages",
            ),
            (
                serde_json::json!({"model": "math", "temperature": 3}),
                "temperature",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
                "model",
            ),
            (
                serde_json::json!({"model": "math", "messages": [{"role": "assistant", "content": "hi"}]}),
                "messages",
            ),
        ] {
            let error = read(json).unwrap_err();
            assert_eq!(error.body().error.param.as_deref(), Some(param));
        }
    }
}
