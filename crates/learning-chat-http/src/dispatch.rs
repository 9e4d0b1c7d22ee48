//! The service the server runs: the chat route's questions (`POST /api/v1/agents/{agent_id}`,
//! a cached answer for nearly all of them) go straight to their handler, every other request
//! through axum's Router.
//!
//! Why: the Router pays on every request for what a question does not need. It matches the
//! path and stores the parameters and the matched template as request extensions, boxes the
//! route's service and the handler's future, runs the key check as a middleware (its own boxes,
//! the caller inserted as another extension) and wraps the body in a second limit. At tens of
//! thousands of cached answers a second that was about a third of a cached answer's
//! allocations (tests/allocations, bench/RESULTS.md). The direct dispatch keeps what matters:
//! the same middleware around it (request id, span, metrics, catch-panic, gzip, the
//! Accept-Encoding check), the same key check ([`crate::auth::admit_question`]), the same body
//! limit and the same handler body ([`crate::api::answer_question`]), so the answers, errors
//! and headers are the Router's, byte for byte.
//!
//! Only requests the direct path answers exactly as the Router would are taken: `POST`, an
//! agent id of one path segment with nothing to percent-decode, and a JSON `Content-Type`.
//! Anything else (a `%`-escaped id, a missing or wrong media type: the Router's 415) goes to
//! the Router.

use crate::api::{self, ApiError, AppState, ChatRequest};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::Either;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::Service;

/// Routes each request: questions to `chat` (the chat route's handler inside the service's
/// middleware), everything else to `router`.
#[derive(Clone)]
pub struct Dispatch<C> {
    router: Router,
    chat: C,
}

impl<C> Dispatch<C> {
    /// `chat` answers the chat route's questions ([`chat_route`] inside the middleware);
    /// `router` everything else.
    pub fn new(router: Router, chat: C) -> Dispatch<C> {
        Dispatch { router, chat }
    }
}

impl<C> Service<Request<Body>> for Dispatch<C>
where
    C: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<C::Future, <Router as Service<Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.chat.poll_ready(cx) {
            Poll::Ready(Ok(())) => Service::<Request<Body>>::poll_ready(&mut self.router, cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_direct_question(&request) {
            Either::Left(self.chat.call(request))
        } else {
            Either::Right(self.router.call(request))
        }
    }
}

/// The agent id of a chat-route path (`/api/v1/agents/{agent_id}`) when the direct path can
/// take it as it is: one segment, nothing percent-encoded.
fn direct_agent(path: &str) -> Option<&str> {
    let agent = path
        .strip_prefix(crate::routes::AGENTS)?
        .strip_prefix('/')?;
    let plain = !agent.is_empty() && !agent.contains(['/', '%']);
    plain.then_some(agent)
}

/// True for a JSON body as axum's `Json` extractor accepts it, in its plain spellings
/// (`application/json`, with parameters or not); anything rarer goes to the Router.
fn is_plain_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or(value)
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
}

/// True when the direct path answers `request` exactly as the Router would.
fn is_direct_question<B>(request: &Request<B>) -> bool {
    request.method() == Method::POST
        && direct_agent(request.uri().path()).is_some()
        && is_plain_json(request.headers())
}

/// The chat route's handler for the direct dispatch: the key check, the body read under
/// `server.max_body_bytes`, then the same work as the Router's handler.
pub async fn chat_route(state: AppState, request: Request<Body>) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let Some(agent_id) = direct_agent(parts.uri.path()) else {
        // Unreachable through `Dispatch`, which checked the path; answered as the Router would.
        return api::not_found().await.into_response();
    };
    let admitted = match &state.auth {
        Some(auth) => match crate::auth::admit_question(auth, &parts.headers, agent_id).await {
            Ok(admitted) => Some(admitted),
            Err(refusal) => return refusal,
        },
        None => None,
    };
    let body = read_question(body, state.settings.server.max_body_bytes).await;
    let caller = admitted.as_ref().map(|admitted| &admitted.caller);
    let mut response = api::answer_question(&state, caller, agent_id, body, started)
        .await
        .into_response();
    if let Some(admitted) = &admitted {
        admitted.rate.write(response.headers_mut());
    }
    response
}

/// Reads a question's JSON body of at most `limit` bytes, with the errors the Router's
/// extractor gives: 413 `body_too_large`, 408 when it came too slowly, 400 and 422 for JSON
/// that is malformed or off the schema.
async fn read_question(body: Body, limit: usize) -> Result<ChatRequest, ApiError> {
    let bytes = read_body(body, limit).await?;
    // serde_json straight: axum's `Json` tracks the path of every field it reads (allocating
    // for each) to name it in an error, so only a body that fails is read again through it.
    match serde_json::from_slice(&bytes) {
        Ok(request) => Ok(request),
        Err(_) => match axum::Json::<ChatRequest>::from_bytes(&bytes) {
            Ok(axum::Json(request)) => Ok(request),
            Err(rejection) => Err(rejection.into()),
        },
    }
}

/// The whole body, at most `limit` bytes. A body of one frame (what a client sends for a short
/// question) is taken as it is, without the buffer list `collect` builds.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, limit));
    let mut first: Option<Bytes> = None;
    let mut rest: Option<Vec<u8>> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|error| body_error(&*error))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = Vec::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => Bytes::from(joined),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}

/// A body that could not be read, as the Router's extractor reports it.
fn body_error(error: &(dyn std::error::Error + Send + Sync + 'static)) -> ApiError {
    if error.is::<http_body_util::LengthLimitError>() {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the limit",
        )
    } else if crate::serve::is_body_read_timeout(error) {
        ApiError::request_timeout()
    } else {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            format!("Failed to buffer the request body: {error}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_agent_ids_are_taken_directly() {
        assert_eq!(direct_agent("/api/v1/agents/math"), Some("math"));
        assert_eq!(direct_agent("/api/v1/agents/math/stream"), None);
        assert_eq!(direct_agent("/api/v1/agents/ma%74h"), None);
        assert_eq!(direct_agent("/api/v1/agents/"), None);
        assert_eq!(direct_agent("/api/v1/agents"), None);
        assert_eq!(direct_agent("/api/v1/agentsmath"), None);
    }

    #[test]
    fn only_plain_json_is_taken_directly() {
        let mut headers = HeaderMap::new();
        assert!(!is_plain_json(&headers));
        for (value, plain) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/json ;charset=utf-8", true),
            ("application/problem+json", false),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_plain_json(&headers), plain, "{value}");
        }
    }
}
