//! The request span's fields, formatted for the log only when a line of the request is logged.
//!
//! The log layer formats every span's fields into text when the span is made. For the request
//! span (its id, method and path) that was a twentieth of a cached answer's CPU (perf, bench 3),
//! paid by every request though nearly none logs a line. So an unsampled request's span is made
//! with those fields empty and their values kept beside it ([`deferred_request_span`]); the
//! first line logged inside it writes them into the span's formatted fields
//! ([`LazyRequestFields`], around the log layer), just before the log layer reads them. The line reads as before:
//! `request{request_id=… method=POST path=/…}`, or the same fields in JSON.
//!
//! A sampled request's span (exported over OTLP) is made with its values, as the exporter
//! needs them.

use axum::http::{HeaderValue, Method, Uri};
use std::cell::RefCell;
use tracing::field::{display, Value};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The request span's values, until a line of the request is logged.
pub(super) struct RequestFields {
    pub(super) id: HeaderValue,
    pub(super) method: Method,
    pub(super) uri: Uri,
}

thread_local! {
    /// Set around the creation of a request span whose fields are deferred.
    static PENDING: RefCell<Option<RequestFields>> = const { RefCell::new(None) };
}

/// Makes a request span with `make` (its `request_id`, `method` and `path` left empty), its
/// values kept for the log layer until a line is logged inside it.
pub(super) fn deferred_request_span(
    fields: Option<RequestFields>,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    PENDING.with(|pending| *pending.borrow_mut() = fields);
    let span = make();
    // Taken by the layer when the span is enabled; dropped here when it is not.
    PENDING.with(|pending| pending.borrow_mut().take());
    span
}

/// The log layer `L` (formatting fields with `N`), which also keeps a request span's values
/// and formats them at the first line logged inside the span, just before `L` formats it.
///
/// A wrapper rather than a layer of its own: a layer without the log layer's filter would be
/// asked about every call site and turn on the debug lines the filter leaves off, and one with
/// a second copy of the filter would pay for each span twice.
pub(super) struct LazyRequestFields<L, N> {
    inner: L,
    format: N,
}

impl<L, N> LazyRequestFields<L, N> {
    /// `inner`, whose field formatter is `format`.
    pub(super) fn new(inner: L, format: N) -> LazyRequestFields<L, N> {
        LazyRequestFields { inner, format }
    }

    /// Writes the values kept for `event`'s request span, the first time a line is logged in it.
    fn write_deferred<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'w> FormatFields<'w> + 'static,
    {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(span) = scope
            .into_iter()
            .find(|span| span.name() == super::request::REQUEST_SPAN)
        else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(fields) = extensions.remove::<RequestFields>() else {
            return;
        };
        let Some(formatted) = extensions.get_mut::<FormattedFields<N>>() else {
            return;
        };
        let names = span.metadata().fields();
        let (Some(request_id), Some(method), Some(path)) = (
            names.field("request_id"),
            names.field("method"),
            names.field("path"),
        ) else {
            return;
        };
        let (id, verb, route) = (
            display(fields.id.to_str().unwrap_or("-")),
            display(&fields.method),
            display(fields.uri.path()),
        );
        let list = [
            (&request_id, Some(&id as &dyn Value)),
            (&method, Some(&verb as &dyn Value)),
            (&path, Some(&route as &dyn Value)),
        ];
        let values = names.value_set(&list);
        // As the log layer records a field set later: appended to what it formatted so far.
        let _ = self.format.add_fields(formatted, &Record::new(&values));
    }
}

impl<S, L, N> Layer<S> for LazyRequestFields<L, N>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() == super::request::REQUEST_SPAN {
            if let Some(fields) = PENDING.with(|pending| pending.borrow_mut().take()) {
                if let Some(span) = ctx.span(id) {
                    span.extensions_mut().insert(fields);
                }
            }
        }
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.write_deferred(event, &ctx);
        self.inner.on_event(event, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }
}
