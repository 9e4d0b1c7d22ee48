//! The Gemini REST client (`generateContent`), in Gemini's real wire format.

use super::transport::{
    HttpRequest, HttpResponse, HttpTransport, MakeTransport, TransportError, TransportOptions,
};
use super::{
    completion_from_response, Completion, CompletionStream, ModelRequest, ProviderError,
    StreamAssembler,
};
use crate::config::{GeminiSettings, Secret};
use futures::StreamExt;
use gemini_wire::sse::{SseItem, SseStream, StreamError};
use gemini_wire::{ErrorBody, GenerateContentResponse};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;
use url::Url;

/// Calls `POST {base}/v1beta/models/{model}:generateContent`.
#[derive(Clone)]
pub struct GeminiClient {
    http: Arc<dyn HttpTransport>,
    base_url: String,
    api_key: Secret,
    identity: String,
    /// Each model's endpoints, parsed at its first call and shared by the clones of other keys.
    endpoints: Arc<RwLock<HashMap<String, Arc<Endpoints>>>>,
}

/// One model's two endpoints.
struct Endpoints {
    generate: Url,
    stream: Url,
}

/// Most models whose endpoints are kept parsed. Models come from the configuration, so a few;
/// the bound only keeps a misconfiguration from growing the map.
const MAX_MODEL_ENDPOINTS: usize = 256;

impl std::fmt::Debug for GeminiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Longest piece of an unexpected model reply body kept for logs.
const MAX_LOGGED_BODY: usize = 300;

impl GeminiClient {
    /// A client with a shared connection pool, made by `transport`.
    pub fn new(
        settings: &GeminiSettings,
        transport: &MakeTransport,
    ) -> anyhow::Result<GeminiClient> {
        let http = transport(TransportOptions {
            connect_timeout: settings.connect_timeout,
            pool_max_idle_per_host: settings.pool_max_idle_per_host,
            follow_redirects: false,
        })?;
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        let host = host_of(&base_url)
            .ok_or_else(|| anyhow::anyhow!("invalid gemini.base_url {base_url:?}: no host"))?;
        Ok(GeminiClient {
            http,
            identity: format!("gemini@{host}"),
            base_url,
            api_key: settings.api_key.clone(),
            endpoints: Arc::default(),
        })
    }

    /// The same client (sharing its connection pool) sending another API key.
    pub fn with_key(&self, api_key: Secret) -> GeminiClient {
        GeminiClient {
            api_key,
            ..self.clone()
        }
    }

    /// `gemini@{host of the base URL}`: which provider answers, for cache keys.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Posts `request` to `url` within `remaining`: the response whatever its status, or the
    /// connection failure as an error. The key goes in a header, never in the URL, so it cannot
    /// end up in access logs.
    async fn send(
        &self,
        url: Url,
        request: &ModelRequest,
        remaining: std::time::Duration,
    ) -> Result<HttpResponse, ProviderError> {
        let body = request
            .encode_gemini()
            .map_err(|e| ProviderError::InvalidResponse(format!("encoding the request: {e}")))?;
        self.http
            .post(HttpRequest {
                url,
                headers: vec![("x-goog-api-key", self.api_key.expose().to_owned())],
                body,
                timeout: remaining,
            })
            .await
            .map_err(|e| transport_error(e, None, ""))
    }

    /// `model`'s endpoints, parsed once.
    fn endpoints(&self, model: &str) -> Result<Arc<Endpoints>, ProviderError> {
        if let Some(endpoints) = self.endpoints.read().get(model) {
            return Ok(endpoints.clone());
        }
        let parse = |path: String| {
            Url::parse(&path).map_err(|e| ProviderError::Rejected {
                status: 400,
                message: format!("model {model:?} makes no valid URL: {e}"),
            })
        };
        let endpoints = Arc::new(Endpoints {
            generate: parse(format!(
                "{}/v1beta/models/{model}:generateContent",
                self.base_url
            ))?,
            stream: parse(format!(
                "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                self.base_url
            ))?,
        });
        let mut map = self.endpoints.write();
        if map.len() < MAX_MODEL_ENDPOINTS {
            map.insert(model.to_owned(), endpoints.clone());
        }
        Ok(endpoints)
    }

    /// One streamed attempt (`:streamGenerateContent?alt=sse`), bounded by `deadline` as a
    /// whole. A non-2xx status or a failed connection is returned before any piece.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProviderError::Timeout);
        }
        let url = self.endpoints(&request.model)?.stream.clone();
        let response = self.send(url, request, remaining).await?;
        let status = response.status;
        if !response.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(error_from_status(status, &body));
        }
        let mut assembler = StreamAssembler::new(&request.model);
        let mut events = SseStream::new(response.body);
        let stream = async_stream::stream! {
            while let Some(item) = events.next().await {
                let event = match item {
                    Ok(SseItem::Event(event)) => event,
                    Ok(SseItem::Comment(_)) => continue,
                    Err(StreamError::Body(e)) => {
                        yield Err(transport_error(e, Some(status), "reading the stream: "));
                        return;
                    }
                    Err(StreamError::Decode(e)) => {
                        yield Err(ProviderError::InvalidResponse(e.to_string()));
                        return;
                    }
                };
                let parsed = match serde_json::from_str(&event.data) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        yield Err(ProviderError::InvalidResponse(e.to_string()));
                        return;
                    }
                };
                for piece in assembler.event(parsed) {
                    yield piece;
                }
                if assembler.is_finished() {
                    return;
                }
            }
            if let Some(error) = assembler.end() {
                yield Err(error);
            }
        };
        Ok(stream.boxed())
    }

    /// One attempt, bounded by `deadline`.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProviderError::Timeout);
        }
        let url = self.endpoints(&request.model)?.generate.clone();
        let response = self.send(url, request, remaining).await?;
        let status = response.status;
        let success = response.is_success();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, Some(status), "reading body: "))?;
        if success {
            let parsed: GenerateContentResponse = serde_json::from_slice(&body)
                .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
            return completion_from_response(parsed, &request.model);
        }
        Err(error_from_status(status, &body))
    }
}

/// Maps a non-2xx Gemini response to a provider error, reading `google.rpc` details when present.
pub(crate) fn error_from_status(status: u16, body: &[u8]) -> ProviderError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = match &parsed {
        Some(b) => format!("{} {}", b.error.status, b.error.message),
        None => String::from_utf8_lossy(&body[..body.len().min(MAX_LOGGED_BODY)]).into_owned(),
    };
    match status {
        429 => ProviderError::RateLimited {
            retry_after: parsed.as_ref().and_then(|b| b.error.retry_delay()),
            daily: parsed.as_ref().is_some_and(|b| b.error.is_daily_quota()),
        },
        500..=599 => ProviderError::Unavailable {
            status: Some(status),
            message,
        },
        _ => ProviderError::Rejected { status, message },
    }
}

/// A transport failure as a provider error: a timeout, or the model being unreachable (`status`
/// when the answer had begun, `context` saying at which step).
pub(crate) fn transport_error(
    error: TransportError,
    status: Option<u16>,
    context: &str,
) -> ProviderError {
    match error {
        TransportError::Timeout => ProviderError::Timeout,
        TransportError::Failed(message) => ProviderError::Unavailable {
            status,
            message: format!("{context}{message}"),
        },
    }
}

/// The host and port of an `http(s)://host[:port]/...` URL (no user info), or `None` when it is
/// not such a URL.
pub(crate) fn authority_of(url: &str) -> Option<(&str, Option<u16>)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inner, after) = v6.split_once(']')?;
            (&authority[..inner.len() + 2], after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

/// The host of an `http(s)://host[:port]/...` URL.
fn host_of(url: &str) -> Option<&str> {
    authority_of(url).map(|(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../gemini-wire/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn recorded_errors_map_to_provider_errors() {
        assert_eq!(
            error_from_status(429, &fixture("error_429_quota.json")),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(26)),
                daily: false
            }
        );
        let e = error_from_status(503, &fixture("error_503_overloaded.json"));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("overloaded"), "{e}");
        let e = error_from_status(400, &fixture("error_400_api_key.json"));
        assert!(!e.is_retryable());
        assert!(matches!(e, ProviderError::Rejected { status: 400, .. }));
        let e = error_from_status(502, b"<html>bad gateway</html>");
        assert!(e.is_retryable());
    }

    use crate::providers::completion_from_response;
    use crate::providers::resilience::RetryPolicy;
    use proptest::prelude::*;

    fn retry_policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }

    fn retry_delay_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_map(|f| format!("{f}s")),
            "[0-9eE.+-]{0,30}s",
            any::<String>(),
            Just("1e20s".to_owned()),
        ]
    }

    proptest! {
        // Every Gemini reply body, whatever its retryDelay, maps to an error and a retry
        // wait without panicking, and the wait never exceeds the configured maximum.
        #[test]
        fn any_429_maps_to_a_bounded_retry_wait(delay in retry_delay_text(), attempt in 0u32..64) {
            let body = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": delay}]}});
            let policy = retry_policy();
            let error = error_from_status(429, body.to_string().as_bytes())
                .with_retry_after_at_most(policy.max_retry_after);
            let wait = policy.delay(attempt, &error);
            prop_assert!(wait <= policy.max_retry_after.mul_f64(1.1) + Duration::from_millis(1));
        }

        #[test]
        fn any_status_and_body_map_to_an_error(status in 100u16..1000, body in any::<Vec<u8>>()) {
            let error = error_from_status(status, &body);
            let _ = (error.kind(), error.is_retryable(), error.to_string());
            let _ = retry_policy().delay(0, &error);
        }

        #[test]
        fn any_response_shape_gives_an_answer_or_a_clean_error(
            text in proptest::option::of(any::<String>()),
            finish in proptest::option::of("[A-Z_]{0,20}"),
            block in proptest::option::of("[A-Z_]{0,20}"),
            counts in proptest::collection::vec(proptest::option::of(any::<u32>()), 3),
        ) {
            let response = serde_json::json!({
                "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                "finishReason": finish}],
                "promptFeedback": {"blockReason": block},
                "usageMetadata": {"promptTokenCount": counts[0].unwrap_or(0),
                                  "candidatesTokenCount": counts[1],
                                  "thoughtsTokenCount": counts[2]}
            });
            if let Ok(parsed) = serde_json::from_value(response) {
                let _ = completion_from_response(parsed, "gemini-2.5-flash");
            }
        }
    }
}
