//! How a model client's request reaches the network: a small trait the binary implements (with
//! reqwest), so the engine speaks Gemini's and OpenAI's wire formats without an HTTP stack of its
//! own.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A JSON POST to a model endpoint.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The full URL, parsed once by its client: parsing it again for every call was a tenth of
    /// a model call's own work.
    pub url: url::Url,
    /// Extra headers (the API key travels here, never in the URL).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The whole exchange, body included, must end within this.
    pub timeout: Duration,
}

/// The answer's status and headers; its body arrives as a stream of chunks.
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body, chunk by chunk.
    pub body: BoxStream<'static, Result<Bytes, TransportError>>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl HttpResponse {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Bytes, TransportError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.body.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(all))
    }
}

/// Why a request got no (complete) answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The request's time ran out.
    #[error("timed out")]
    Timeout,
    /// The connection failed or was cut; the text names no endpoint.
    #[error("{0}")]
    Failed(String),
}

/// Sends model requests.
pub trait HttpTransport: Send + Sync + 'static {
    /// POSTs `request`; the response whatever its status, or why there is none.
    fn post(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>>;
}

/// How a client's connections behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Whether a 3xx is followed. Off for the model and moderation APIs: they never redirect,
    /// and a redirect to another host would carry their API key header with it.
    pub follow_redirects: bool,
}

/// Builds a transport (one connection pool) for a model client.
pub type MakeTransport =
    Arc<dyn Fn(TransportOptions) -> anyhow::Result<Arc<dyn HttpTransport>> + Send + Sync>;
