//! Logs, request context and error tracking.
//!
//! - Logs: `tracing`, human-readable or one JSON object per line, filtered by `RUST_LOG` or the
//!   configured level. Every line logged while serving a request carries that request's id,
//!   because the `request` span (made in [`ObserveLayer`]) is entered around the handler and
//!   [`in_current_context`] carries it into tasks the request spawns.
//! - Error tracking: Sentry, when `telemetry.sentry_dsn` (`SENTRY_DSN`) is set. 5xx answers
//!   (except deliberate load shedding) and panics are reported with the request id, route and
//!   error code; warnings and errors logged during the request ride along as breadcrumbs.
//!   Everything sent passes [`scrub_event`] first: no API key, Redis password or DSN leaves the
//!   process, and neither request bodies nor learners' messages are ever attached.
//! - Traces: OpenTelemetry over OTLP/HTTP (protobuf) when `telemetry.otlp_endpoint` is set. The
//!   `request` span is the root (or the child of the client's W3C `traceparent`); the steps of a
//!   request are its children, made with [`learning_chat_engine::trace_span!`], which makes nothing at all when export
//!   is off. The trace id rides on every log line of the request and on its Sentry event.
//!
//! One file per concern: [`logging`] (the subscriber), [`request`] (request ids, the request
//! span, HTTP metrics), `lazy_fields` (the request span's fields, formatted only for a line
//! logged), [`sentry`] (error reports and scrubbing), [`shed_log`] (the load-shedding log
//! line) and [`traces`] (OTLP export). The module is a leaf: it knows nothing
//! of the request path; the API tells it what an error was through [`ErrorKind`].

mod lazy_fields;
pub mod logging;
pub mod request;
pub mod sentry;
pub mod shed_log;
pub mod traces;

pub use self::sentry::{init_sentry, report_errors, scrub_event, scrub_text};
pub use logging::{init_logging, init_logging_to};
pub use request::{Observe, ObserveLayer, MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER};
pub use shed_log::flush_shed_log;
pub use traces::{shutdown_traces, trace_content, traces_on, RequestTraceId};

/// Probe routes: their 503 is a state (`/ready` while draining at every rollout), not an error.
const PROBE_ROUTES: &[&str] = &[crate::routes::HEALTH, crate::routes::READY];

/// Where a request's route label (metrics, spans, error reports) comes from: the template the
/// Router matched, or a route known before any routing (the chat route's direct dispatch,
/// which has no Router to record a `MatchedPath`).
#[derive(Debug, Clone, Copy)]
pub enum RouteLabel {
    /// The Router's `MatchedPath`; [`crate::routes::UNMATCHED`] when no route matched.
    Matched,
    /// This route template.
    Fixed(&'static str),
}

impl RouteLabel {
    /// The route template of `request`.
    pub fn of<B>(self, request: &axum::http::Request<B>) -> &str {
        match self {
            RouteLabel::Fixed(route) => route,
            RouteLabel::Matched => request
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or(crate::routes::UNMATCHED, |p| p.as_str()),
        }
    }
}

/// What an error answer was, put in its response extensions by the code that builds it (the
/// API's error type), so the request log and Sentry tell errors apart without reading bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorKind {
    /// The stable error code of the body, e.g. `upstream_unavailable`.
    pub code: &'static str,
    /// The learner-facing message: written to be safe to show, so safe to send to Sentry.
    pub message: String,
    /// Deliberate load shedding (503 + Retry-After): expected under overload, counted by
    /// `learning_chat_requests_shed_total` and alerted on, so neither logged one line per
    /// request nor sent to Sentry, where a burst would drown real errors.
    pub shed: bool,
}

pub use learning_chat_engine::trace::in_current_context;
