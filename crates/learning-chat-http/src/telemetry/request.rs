//! Request identity and measurement: the request id, the `request` span every log line of the
//! request carries, the error line of a failed request and the HTTP metrics.

use super::lazy_fields::{deferred_request_span, RequestFields};
use super::shed_log::SHED_LOG;
use super::traces::{incoming_trace, link_trace, request_span, sampled, RequestTraceId};
use super::{ErrorKind, RouteLabel, PROBE_ROUTES};
use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, Request};
use axum::response::Response;
use learning_chat_engine::trace::{while_sampled, Sampled};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request id header: kept when the client (or nginx) sends one, generated otherwise.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a header name, made once.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The name of the request's span (the root of its trace).
pub(super) const REQUEST_SPAN: &str = "request";

/// Longest incoming request id kept; longer ones are replaced (they end up in every log line).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Middleware (outermost): the request's identity and its measurements, in one layer.
/// Written as a tower layer rather than `from_fn`: that boxed the whole request's future (9 kB
/// for a question) and its inner service on every request, and moved both.
///
/// - Its id: an incoming `X-Request-Id` (from the client or nginx) is kept when usable (at most
///   [`MAX_REQUEST_ID_LEN`] bytes of `[A-Za-z0-9._:-]`: the id lands in every log line and error
///   report, so a client must not inject lines or megabytes through it); otherwise a fresh UUID
///   replaces it. Either way it is set on the request and returned on the response.
/// - Its span, which puts that id on every log line of the request (and, through
///   [`super::in_current_context`], of the tasks it spawns); one error line per 5xx answer, except load
///   shedding (503 `overloaded`), logged at most once a second with a count.
/// - The HTTP metrics: counted in flight, then by route template, method and status.
#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    label: RouteLabel,
}

impl ObserveLayer {
    /// Observes requests whose route label comes from `label`.
    pub fn new(label: RouteLabel) -> ObserveLayer {
        ObserveLayer { label }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            label: self.label,
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    label: RouteLabel,
}

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = axum::http::Response<RB>, Error = Infallible>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let incoming = request
            .headers()
            .get(&REQUEST_ID)
            .filter(|id| is_usable_request_id(id.as_bytes()))
            .cloned();
        let id = match incoming {
            Some(id) => id,
            None => {
                let fresh = fresh_request_id();
                request.headers_mut().insert(REQUEST_ID, fresh.clone());
                fresh
            }
        };
        // The route template, never the raw path, keeps the metric label set small.
        let route = self.label.of(&request);
        // A guard, so a request dropped mid-way (client gone) is still counted and leaves the
        // in-flight gauge.
        let timer = crate::metrics::HttpRequestTimer::start(route, request.method().as_str());
        let incoming = incoming_trace(request.headers());
        let sampled = sampled(incoming.as_ref());
        let span = if sampled {
            request_span(true, || {
                tracing::info_span!(
                    "request",
                    request_id = %id.to_str().unwrap_or("-"),
                    method = %request.method(),
                    path = %request.uri().path(),
                    trace_id = tracing::field::Empty,
                    otel.name = tracing::field::Empty,
                    otel.kind = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    http.route = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                )
            })
        } else {
            // Not exported: its fields are formatted only if the request logs a line. Kept
            // only when something logs at INFO (clones that are counts, not copies, in a
            // server: the id and the path share their bytes with the request).
            let fields = tracing::level_enabled!(tracing::Level::INFO).then(|| RequestFields {
                id: id.clone(),
                method: request.method().clone(),
                uri: request.uri().clone(),
            });
            deferred_request_span(fields, || {
                tracing::info_span!(
                    "request",
                    request_id = tracing::field::Empty,
                    method = tracing::field::Empty,
                    path = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                )
            })
        };
        if sampled {
            // Before `link_trace` starts the span: its name cannot change afterwards.
            span.record("otel.name", format!("{} {route}", request.method()));
            span.record("otel.kind", "server");
            span.record("http.route", route);
        }
        if let Some(trace_id) = link_trace(&span, incoming, sampled) {
            let trace_id = trace_id.to_string();
            span.record("trace_id", trace_id.as_str());
            request.extensions_mut().insert(RequestTraceId(trace_id));
        }
        // A probe's 503 is a state (draining at every rollout), polled every few seconds: no ERROR.
        let probe = PROBE_ROUTES.contains(&request.uri().path());
        // `call` only builds the stack's future (no layer logs there), so the span is entered
        // around it only for an exported request, whose spans must find their parent; every
        // request's span is entered around each poll, where the work and its lines happen.
        let inner = if sampled {
            span.in_scope(|| while_sampled(true, || self.inner.call(request)))
        } else {
            while_sampled(false, || self.inner.call(request))
        };
        ObserveFuture {
            inner: Sampled::new(inner, sampled),
            span,
            after: Some(AfterResponse {
                id,
                timer,
                sampled,
                probe,
                started: std::time::Instant::now(),
            }),
        }
    }
}

/// What the request's measurements need once its answer is ready.
struct AfterResponse {
    id: HeaderValue,
    timer: crate::metrics::HttpRequestTimer,
    sampled: bool,
    probe: bool,
    started: std::time::Instant,
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`]: the inner answer, polled inside the request's span, then
    /// measured and given its request id.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Sampled<F>,
        span: tracing::Span,
        after: Option<AfterResponse>,
    }
}

impl<F, RB> Future for ObserveFuture<F>
where
    F: Future<Output = Result<axum::http::Response<RB>, Infallible>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            this.inner.poll(cx)
        };
        let response = match polled {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let Some(after) = this.after.take() else {
            // Polled again after it completed: a caller's bug, answered by never completing
            // twice rather than by a panic on the request path.
            return Poll::Pending;
        };
        Poll::Ready(Ok(after.finish(this.span, response.map(Body::new))))
    }
}

impl AfterResponse {
    /// Measures the answer, logs a failure and sets the request id on `response`.
    fn finish(self, span: &tracing::Span, mut response: Response) -> Response {
        let status = response.status();
        self.timer.finish(status.as_u16());
        if self.sampled {
            // As i64: the OpenTelemetry layer records unsigned integers as text.
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        let shed = response
            .extensions()
            .get::<ErrorKind>()
            .is_some_and(|kind| kind.shed);
        if shed {
            // Expected under overload, and counted in metrics: a line per shed would flood the log.
            SHED_LOG.record();
        } else if status.is_server_error() && !self.probe {
            // One summary line per failed request (the cause was logged where it happened).
            span.in_scope(|| {
                tracing::error!(
                    status = status.as_u16(),
                    latency_ms = self.started.elapsed().as_millis() as u64,
                    "request failed"
                )
            });
        }
        response.headers_mut().insert(REQUEST_ID, self.id);
        response
    }
}

fn fresh_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let len = uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buffer)
        .len();
    // One allocation, shared by the request's copy and the response's: a header value made from
    // a slice or a `Vec` allocates again on its first clone.
    let text = Bytes::from_owner(buffer).slice(..len);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_maybe_shared(text).unwrap_or(HeaderValue::from_static("-"))
}

fn is_usable_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(is_usable_request_id(b"abc-123_x.y:z"));
        assert!(!is_usable_request_id(b""));
        assert!(!is_usable_request_id(b"has space"));
        assert!(!is_usable_request_id(b"line\nbreak"));
        assert!(!is_usable_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
    }
}
