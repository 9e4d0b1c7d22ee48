//! The OpenAI-compatible Chat Completions client (`POST {base}/v1/chat/completions`), so vLLM,
//! Ollama, llama.cpp server, OpenRouter or OpenAI itself can serve a tutor. Shapes follow the
//! recorded ones in `tests/fixtures/openai` (see SOURCES.md there).

use super::gemini::{authority_of, transport_error};
use super::transport::{
    HttpRequest, HttpResponse, HttpTransport, MakeTransport, TransportError, TransportOptions,
};
use super::{Completion, CompletionStream, ModelRequest, ProviderError, StreamPiece, Usage};
use crate::config::Secret;
use futures::StreamExt;
use gemini_wire::sse::{SseItem, SseStream, StreamError};
use gemini_wire::FinishReason;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod wire;

pub use wire::{
    ChatChunk, ChatCompletion, Choice, ChoiceMessage, ChunkChoice, ChunkDelta, WireUsage,
};

/// Longest piece of an unexpected model reply body kept for logs.
const MAX_LOGGED_BODY: usize = 300;

/// Calls one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiClient {
    http: Arc<dyn HttpTransport>,
    url: url::Url,
    api_key: Secret,
    identity: String,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// OpenAI's finish reasons as Gemini's (the chat service speaks Gemini's).
fn finish_reason(reason: Option<&str>) -> Result<FinishReason, ProviderError> {
    match reason {
        Some("stop") => Ok(FinishReason::Stop),
        Some("length") => Ok(FinishReason::MaxTokens),
        Some("content_filter") => Err(ProviderError::Blocked {
            reason: "content_filter".to_owned(),
        }),
        Some(_) => Ok(FinishReason::Other),
        None => Err(ProviderError::InvalidResponse(
            "no choice with a finish_reason".to_owned(),
        )),
    }
}

fn usage_of(usage: Option<WireUsage>) -> Usage {
    usage
        .map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        })
        .unwrap_or_default()
}

/// Turns a parsed non-streamed answer into a completion or the reason there is none.
pub fn completion_from_chat(
    response: ChatCompletion,
    requested_model: &str,
) -> Result<Completion, ProviderError> {
    let Some(choice) = response.choices.into_iter().next() else {
        return Err(ProviderError::InvalidResponse("no choices".to_owned()));
    };
    let finish = finish_reason(choice.finish_reason.as_deref())?;
    let message = choice.message;
    if let Some(refusal) = message.as_ref().and_then(|m| m.refusal.as_deref()) {
        if !refusal.is_empty() {
            return Err(ProviderError::Blocked {
                reason: "refusal".to_owned(),
            });
        }
    }
    let text = message.and_then(|m| m.content).unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ProviderError::Empty(finish.as_str().to_owned()));
    }
    Ok(Completion {
        text,
        finish_reason: finish,
        model: response.model.unwrap_or_else(|| requested_model.to_owned()),
        usage: usage_of(response.usage),
        ratings: Default::default(),
    })
}

/// The wait a 429 asks for: `retry-after-ms`, `retry-after` (seconds), or the
/// `x-ratelimit-reset-requests` / `-tokens` time (`1s`, `6m0s`, `250ms`), whichever is given.
pub fn retry_after_from_headers(headers: &[(String, String)]) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(1e9)));
        }
    }
    if let Some(secs) = text("retry-after").and_then(|v| v.trim().parse::<f64>().ok()) {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| text(name).and_then(parse_reset))
        .max()
}

/// Parses OpenAI's reset spelling: a sequence of `<number><unit>` with units h, m, s, ms.
fn parse_reset(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let (factor, tail) = if let Some(t) = tail.strip_prefix("ms") {
            (0.001, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (1.0, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (60.0, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (3600.0, t)
        } else {
            return None;
        };
        total += value * factor;
        rest = tail;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(1e9)))
}

/// Maps a non-2xx answer to a provider error.
pub fn error_from_status(status: u16, headers: &[(String, String)], body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let message = match error {
        Some(_) => format!("{} {}", field("type"), field("message")),
        None => String::from_utf8_lossy(&body[..body.len().min(MAX_LOGGED_BODY)]).into_owned(),
    };
    match status {
        429 => ProviderError::RateLimited {
            retry_after: retry_after_from_headers(headers),
            // Out of credit is not a per-minute limit: waiting within the request is pointless.
            daily: field("code") == "insufficient_quota" || field("type") == "insufficient_quota",
        },
        500..=599 => ProviderError::Unavailable {
            status: Some(status),
            message,
        },
        _ => ProviderError::Rejected { status, message },
    }
}

impl OpenAiClient {
    /// A client for the endpoint at `base_url` (`/v1/chat/completions` is appended; a base
    /// already ending in `/v1` is accepted too).
    pub fn new(
        base_url: &str,
        api_key: Secret,
        connect_timeout: Duration,
        transport: &MakeTransport,
    ) -> anyhow::Result<OpenAiClient> {
        let http = transport(TransportOptions {
            connect_timeout,
            pool_max_idle_per_host: usize::MAX,
            follow_redirects: false,
        })?;
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let (host, port) = authority_of(base).ok_or_else(|| {
            anyhow::anyhow!("invalid OpenAI base_url {base:?}: not an http(s) URL")
        })?;
        let identity = match port {
            Some(port) => format!("openai@{host}:{port}"),
            None => format!("openai@{host}"),
        };
        Ok(OpenAiClient {
            http,
            url: url::Url::parse(&format!("{base}/v1/chat/completions"))
                .map_err(|e| anyhow::anyhow!("invalid OpenAI base_url {base:?}: {e}"))?,
            api_key,
            identity,
        })
    }

    /// `openai@{host[:port]}`: which provider answers, for cache keys (two local servers on
    /// different ports may serve different models under one name).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The request body: the system prompt, the history and the message as chat messages.
    pub fn body(request: &ModelRequest, stream: bool) -> Value {
        let mut messages = Vec::with_capacity(request.history.len() + 2);
        messages.push(json!({"role": "system", "content": request.system.text()}));
        for turn in request.history.iter() {
            let role = match turn.role {
                super::Role::User => "user",
                super::Role::Model => "assistant",
            };
            messages.push(json!({"role": role, "content": turn.text}));
        }
        messages.push(json!({"role": "user", "content": request.message}));
        let g = &request.generation;
        let mut body = json!({"model": request.model, "messages": messages, "stream": stream});
        if let Some(t) = g.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = g.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(max) = g.max_output_tokens {
            // `max_tokens` is the spelling every compatible server knows.
            body["max_tokens"] = json!(max);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn send(
        &self,
        request: &ModelRequest,
        deadline: Instant,
        stream: bool,
    ) -> Result<HttpResponse, ProviderError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProviderError::Timeout);
        }
        let mut headers = Vec::new();
        if !self.api_key.is_empty() {
            headers.push(("authorization", format!("Bearer {}", self.api_key.expose())));
        }
        let body = serde_json::to_vec(&Self::body(request, stream))
            .map_err(|e| ProviderError::InvalidResponse(format!("encoding the request: {e}")))?;
        let response = self
            .http
            .post(HttpRequest {
                url: self.url.clone(),
                headers,
                body,
                timeout: remaining,
            })
            .await
            .map_err(|e| transport_error(e, None, ""))?;
        if response.is_success() {
            return Ok(response);
        }
        let (status, headers) = (response.status, response.headers.clone());
        let body = response.bytes().await.unwrap_or_default();
        Err(error_from_status(status, &headers, &body))
    }

    /// One non-streamed attempt, bounded by `deadline`.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let response = self.send(request, deadline, false).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, Some(200), "reading body: "))?;
        let parsed: ChatCompletion = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        completion_from_chat(parsed, &request.model)
    }

    /// One streamed attempt (`stream: true`, usage in the last chunk): errors before the body
    /// are returned here, errors after it (a cut stream, a bad chunk) end the stream.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let response = self.send(request, deadline, true).await?;
        let model = request.model.clone();
        let bytes = response.body;
        let stream = async_stream_pieces(bytes, model);
        Ok(stream.boxed())
    }
}

/// What a stream has gathered so far.
#[derive(Default)]
struct Gathered {
    text: String,
    finish: Option<String>,
    usage: Option<WireUsage>,
    model: Option<String>,
    done: bool,
}

impl Gathered {
    /// Takes one `data:` payload in; returns new text, if any.
    fn take(&mut self, payload: &str) -> Result<Option<String>, ProviderError> {
        if payload.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: ChatChunk = serde_json::from_str(payload)
            .map_err(|e| ProviderError::InvalidResponse(format!("stream chunk: {e}")))?;
        if chunk.model.is_some() {
            self.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut new_text = String::new();
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(text) = choice.delta.and_then(|d| d.content) {
                new_text.push_str(&text);
            }
            if choice.finish_reason.is_some() {
                self.finish = choice.finish_reason;
            }
        }
        self.text.push_str(&new_text);
        Ok((!new_text.is_empty()).then_some(new_text))
    }

    /// The final piece once the stream ended cleanly.
    fn finish(self, requested_model: &str) -> Result<StreamPiece, ProviderError> {
        if !self.done && self.finish.is_none() {
            return Err(ProviderError::Unavailable {
                status: Some(200),
                message: "stream ended before its finish_reason".to_owned(),
            });
        }
        let completion = completion_from_chat(
            ChatCompletion {
                model: self.model,
                choices: vec![Choice {
                    message: Some(ChoiceMessage {
                        content: Some(self.text),
                        refusal: None,
                    }),
                    finish_reason: self.finish,
                }],
                usage: self.usage,
            },
            requested_model,
        )?;
        Ok(StreamPiece::Finished(completion))
    }
}

/// Decodes the SSE body into pieces: text as it comes, then `Finished` after `[DONE]` (or the
/// end of the body after a finish reason, for servers that omit `[DONE]`).
fn async_stream_pieces<S>(
    bytes: S,
    model: String,
) -> impl futures::Stream<Item = Result<StreamPiece, ProviderError>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, TransportError>> + Send + 'static,
{
    async_stream::stream! {
        let mut events = SseStream::new(bytes);
        let mut gathered = Gathered::default();
        while !gathered.done {
            let event = match events.next().await {
                None => break,
                Some(Ok(SseItem::Event(event))) => event,
                Some(Ok(SseItem::Comment(_))) => continue,
                Some(Err(StreamError::Body(e))) => {
                    yield Err(transport_error(e, Some(200), "stream cut: "));
                    return;
                }
                Some(Err(StreamError::Decode(e))) => {
                    yield Err(ProviderError::InvalidResponse(e.to_string()));
                    return;
                }
            };
            match gathered.take(&event.data) {
                Ok(Some(text)) => yield Ok(StreamPiece::Text(text)),
                Ok(None) => {}
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        yield gathered.finish(&model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/openai/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_recorded_answer_becomes_a_completion() {
        let parsed: ChatCompletion =
            serde_json::from_str(&fixture("chat_completion.json")).unwrap();
        let c = completion_from_chat(parsed, "x").unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.model, "gpt-4o-mini-2024-07-18");
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 19,
                output_tokens: 10
            }
        );
        assert!(c.text.starts_with("Hello!"), "{}", c.text);
        let parsed: ChatCompletion =
            serde_json::from_str(&fixture("chat_completion_length.json")).unwrap();
        assert_eq!(
            completion_from_chat(parsed, "x").unwrap().finish_reason,
            FinishReason::MaxTokens
        );
    }

    #[test]
    fn the_recorded_stream_gathers_text_usage_and_finish() {
        let mut gathered = Gathered::default();
        let mut text = String::new();
        for event in gemini_wire::sse::parse_events(fixture("chat_completion_stream.sse")).unwrap()
        {
            if let Some(t) = gathered.take(&event.data).unwrap() {
                text.push_str(&t);
            }
        }
        assert!(gathered.done);
        let StreamPiece::Finished(c) = gathered.finish("x").unwrap() else {
            panic!("no Finished")
        };
        assert_eq!(c.text, text);
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 19,
                output_tokens: 10
            }
        );
    }

    #[test]
    fn a_stream_without_its_end_is_an_error() {
        let mut gathered = Gathered::default();
        gathered
            .take(r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#)
            .unwrap();
        assert!(gathered.finish("x").is_err());
    }

    #[test]
    fn the_recorded_429_asks_for_its_wait() {
        let header = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let mut headers = vec![
            header("x-ratelimit-reset-requests", "6m0s"),
            header("x-ratelimit-reset-tokens", "20ms"),
        ];
        let e = error_from_status(
            429,
            &headers,
            fixture("error_429_rate_limit.json").as_bytes(),
        );
        assert_eq!(
            e,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(360)),
                daily: false
            }
        );
        headers.push(header("retry-after", "2"));
        assert_eq!(e.kind(), "rate_limited");
        let e = error_from_status(
            429,
            &headers,
            fixture("error_429_rate_limit.json").as_bytes(),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let e = error_from_status(
            429,
            &[],
            fixture("error_429_insufficient_quota.json").as_bytes(),
        );
        assert!(matches!(e, ProviderError::RateLimited { daily: true, .. }));
        let e = error_from_status(
            401,
            &[],
            fixture("error_401_invalid_api_key.json").as_bytes(),
        );
        assert!(matches!(e, ProviderError::Rejected { status: 401, .. }));
        assert!(parse_reset("1.5s") == Some(Duration::from_millis(1500)));
        assert_eq!(parse_reset("garbage"), None);
    }
}
