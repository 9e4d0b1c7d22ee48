//! The engine's model clients on reqwest: one connection pool per client, rustls on the ring
//! provider, and error texts that never name the endpoint.

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use learning_chat_engine::providers::transport::{
    HttpRequest, HttpResponse, HttpTransport, MakeTransport, TransportError, TransportOptions,
};
use std::sync::Arc;
use std::time::Duration;

/// A reqwest client as the engine's [`HttpTransport`].
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A client with its own connection pool.
    pub fn new(options: TransportOptions) -> anyhow::Result<ReqwestTransport> {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(if options.follow_redirects {
                reqwest::redirect::Policy::default()
            } else {
                reqwest::redirect::Policy::none()
            })
            .user_agent(concat!("learning-chat/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ReqwestTransport { client })
    }
}

/// The transport maker the engine's model clients are built with.
pub fn make_transport() -> MakeTransport {
    Arc::new(|options| {
        let transport: Arc<dyn HttpTransport> = Arc::new(ReqwestTransport::new(options)?);
        Ok(transport)
    })
}

impl HttpTransport for ReqwestTransport {
    fn post(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let mut call = self
            .client
            .post(request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.body)
            .timeout(request.timeout);
        for (name, value) in request.headers {
            call = call.header(name, value);
        }
        Box::pin(async move {
            let response = call.send().await.map_err(transport_error)?;
            let headers = response
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            Ok(HttpResponse {
                status: response.status().as_u16(),
                headers,
                body: response.bytes_stream().map_err(transport_error).boxed(),
            })
        })
    }
}

/// reqwest errors print the URL; keep logs free of endpoints anyway.
fn transport_error(error: reqwest::Error) -> TransportError {
    if error.is_timeout() {
        return TransportError::Timeout;
    }
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<model endpoint>");
    }
    TransportError::Failed(text)
}
