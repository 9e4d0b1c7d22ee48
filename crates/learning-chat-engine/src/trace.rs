//! What the engine needs of tracing: spans that cost nothing while traces are off, and spawned
//! tasks that keep their request's context.
//!
//! The exporter (OTLP) is set up by the HTTP crate, which flips [`set_traces`] when it starts and
//! stops; the engine only reads the two switches.

use sentry_core::{Hub, SentryFutureExt};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

/// True while traces are exported; read on every [`crate::trace_span!`], so a plain atomic load.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// `telemetry.trace_content`: learners' text and cache keys may go on spans.
static TRACE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Turns span export on or off (`on`), and whether spans may carry message text (`content`).
pub fn set_traces(on: bool, content: bool) {
    TRACE_CONTENT.store(content, Ordering::Relaxed);
    TRACES_ON.store(on, Ordering::Release);
}

/// True when spans are exported (`telemetry.otlp_endpoint` set).
pub fn traces_on() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// True when message text and cache keys may be put on spans (`telemetry.trace_content`).
pub fn trace_content() -> bool {
    TRACE_CONTENT.load(Ordering::Relaxed)
}

/// An INFO span exported as a child of the current one when traces are on, and
/// [`tracing::Span::none`] (no allocation, no subscriber call) when they are off.
#[macro_export]
macro_rules! trace_span {
    ($($arg:tt)*) => {
        if $crate::trace::traces_on() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Wraps a future about to be `tokio::spawn`ed so it keeps the current request's context: its
/// log lines carry the request id (the tracing span) and its breadcrumbs reach the request's
/// Sentry event (the Sentry hub). Without it, a spawned task starts with no context at all.
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    future.in_current_span().bind_hub(Hub::current())
}

/// Wraps a future about to be `tokio::spawn`ed as work its request does not wait for (a cache
/// write, a lease's publication and release). With traces on it runs in a root span of its own
/// that *follows from* the request's span: a child would hold the request's span open until
/// the work ends, so the request's exported duration would include it, and a server stopped
/// before it ends would never export the request at all. With traces off it keeps the
/// request's span, so its log lines still carry the request id.
pub fn in_background_of_current<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let span = if traces_on() {
        let span = tracing::info_span!(parent: None, "background");
        span.follows_from(tracing::Span::current());
        span
    } else {
        tracing::Span::current()
    };
    future.instrument(span).bind_hub(Hub::current())
}
