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

thread_local! {
    /// Whether the request being polled on this thread is exported: set around each poll of a
    /// request ([`Sampled`]) and of the tasks it spawns ([`in_current_context`]).
    static SAMPLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while a request whose spans are exported is being polled on this thread.
pub fn request_sampled() -> bool {
    SAMPLED.with(std::cell::Cell::get)
}

pin_project_lite::pin_project! {
    /// A request's future (or a task it spawned), polled with [`request_sampled`] saying
    /// whether its spans are exported.
    pub struct Sampled<F> {
        #[pin]
        inner: F,
        sampled: bool,
    }
}

/// Runs `work` with [`request_sampled`] saying `sampled` (a request's synchronous start).
pub fn while_sampled<T>(sampled: bool, work: impl FnOnce() -> T) -> T {
    let outer = SAMPLED.with(|flag| flag.replace(sampled));
    let done = work();
    SAMPLED.with(|flag| flag.set(outer));
    done
}

impl<F> Sampled<F> {
    /// `inner`, whose spans are exported when `sampled`.
    pub fn new(inner: F, sampled: bool) -> Sampled<F> {
        Sampled { inner, sampled }
    }
}

impl<F: Future> Future for Sampled<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        while_sampled(*this.sampled, || this.inner.poll(cx))
    }
}

/// An INFO span exported as a child of the current one when the current request is sampled
/// for export, and [`tracing::Span::none`] (no allocation, no subscriber call) otherwise: with
/// traces on at 1%, the other 99% of requests made their spans for the log layer alone (a
/// cached answer's `cache.lookup` cost more than the whole export: bench/RESULTS.md, run 18).
#[macro_export]
macro_rules! trace_span {
    ($($arg:tt)*) => {
        if $crate::trace::traces_on() && $crate::trace::request_sampled() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Wraps a future about to be `tokio::spawn`ed so it keeps the current request's context: its
/// log lines carry the request id (the tracing span), its breadcrumbs reach the request's
/// Sentry event (the Sentry hub) and its spans are exported when the request's are. Without
/// it, a spawned task starts with no context at all.
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    Sampled::new(future, request_sampled())
        .in_current_span()
        .bind_hub(Hub::current())
}

/// Wraps a future about to be `tokio::spawn`ed as work its request does not wait for (a cache
/// write, a lease's publication and release). With traces on it runs in a root span of its own
/// that *follows from* the request's span: a child would hold the request's span open until
/// the work ends, so the request's exported duration would include it, and a server stopped
/// before it ends would never export the request at all. With traces off it keeps the
/// request's span, so its log lines still carry the request id.
pub fn in_background_of_current<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let sampled = request_sampled();
    let span = if traces_on() && sampled {
        let span = tracing::info_span!(parent: None, "background");
        span.follows_from(tracing::Span::current());
        span
    } else {
        tracing::Span::current()
    };
    Sampled::new(future, sampled)
        .instrument(span)
        .bind_hub(Hub::current())
}
