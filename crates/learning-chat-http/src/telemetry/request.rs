//! Request identity and measurement: the request id, the `request` span every log line of the
//! request carries, the error line of a failed request and the HTTP metrics.

use super::shed_log::SHED_LOG;
use super::traces::{incoming_trace, link_trace, request_span, sampled, RequestTraceId};
use super::{ErrorKind, PROBE_ROUTES};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The request id header: kept when the client (or nginx) sends one, generated otherwise.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a header name, made once.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The name of the request's span (the root of its trace).
pub(super) const REQUEST_SPAN: &str = "request";

/// Longest incoming request id kept; longer ones are replaced (they end up in every log line).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Middleware (outermost): the request's identity and its measurements, in one layer.
///
/// - Its id: an incoming `X-Request-Id` (from the client or nginx) is kept when usable (at most
///   [`MAX_REQUEST_ID_LEN`] bytes of `[A-Za-z0-9._:-]`: the id lands in every log line and error
///   report, so a client must not inject lines or megabytes through it); otherwise a fresh UUID
///   replaces it. Either way it is set on the request and returned on the response.
/// - Its span, which puts that id on every log line of the request (and, through
///   [`super::in_current_context`], of the tasks it spawns); one error line per 5xx answer, except load
///   shedding (503 `overloaded`), logged at most once a second with a count.
/// - The HTTP metrics: counted in flight, then by route template, method and status.
pub async fn observe_request(mut request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get(REQUEST_ID_HEADER)
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
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(crate::routes::UNMATCHED, |p| p.as_str());
    // A guard, so a request dropped mid-way (client gone) is still counted and leaves the
    // in-flight gauge.
    let timer = crate::metrics::HttpRequestTimer::start(route, request.method().as_str());
    let incoming = incoming_trace(request.headers());
    let sampled = sampled(incoming.as_ref());
    let span = request_span(sampled, || {
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
    });
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
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    timer.finish(status.as_u16());
    if sampled {
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
    } else if status.is_server_error() && !probe {
        // One summary line per failed request (the cause was logged where it happened).
        span.in_scope(|| {
            tracing::error!(
                status = status.as_u16(),
                latency_ms = started.elapsed().as_millis() as u64,
                "request failed"
            )
        });
    }
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

fn fresh_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
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
