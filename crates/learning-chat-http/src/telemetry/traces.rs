//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf) when `telemetry.otlp_endpoint`
//! is set, joined to the client's W3C `traceparent`.

use axum::http::HeaderName;
use learning_chat_engine::config::TelemetrySettings;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `telemetry.trace_sample_ratio`, as `f64` bits: the share of requests without a client
/// trace whose spans are built for export.
static SAMPLE_RATIO_BITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Set around the creation of a request's span: whether the traces layer takes it.
    static SAMPLING_REQUEST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What the traces layer takes: a sampled request's span, and the spans and events made
/// inside one (a span disabled for this filter is skipped when looking for the current one,
/// so inside an unsampled request there is none). Sampling is decided before the request's
/// span exists, so an unsampled request builds no OpenTelemetry span at all, where the SDK's
/// sampler would decide only after building it.
pub(super) struct SampledRequests;

impl<S> tracing_subscriber::layer::Filter<S> for SampledRequests
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if meta.is_span() && meta.name() == super::request::REQUEST_SPAN {
            return SAMPLING_REQUEST.with(std::cell::Cell::get);
        }
        cx.lookup_current().is_some()
    }

    fn callsite_enabled(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per span, never per call site.
        tracing::subscriber::Interest::sometimes()
    }
}

/// Makes a request's span with `make`, taken by the traces layer when `sampled`.
pub(super) fn request_span(sampled: bool, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    SAMPLING_REQUEST.with(|flag| flag.set(sampled));
    let span = make();
    SAMPLING_REQUEST.with(|flag| flag.set(false));
    span
}

/// Whether a request's spans are exported: a client's trace is followed (its sampled flag),
/// any other request is sampled at `telemetry.trace_sample_ratio`. False while traces are off.
pub(super) fn sampled(incoming: Option<&opentelemetry::Context>) -> bool {
    if !traces_on() {
        return false;
    }
    match incoming {
        Some(cx) => cx.span().span_context().is_sampled(),
        None => {
            let ratio =
                f64::from_bits(SAMPLE_RATIO_BITS.load(std::sync::atomic::Ordering::Relaxed));
            ratio >= 1.0 || rand::random::<f64>() < ratio
        }
    }
}

/// Kept for [`shutdown_traces`], which flushes the spans still queued.
static TRACER_PROVIDER: parking_lot::Mutex<Option<SdkTracerProvider>> =
    parking_lot::Mutex::new(None);

pub use learning_chat_engine::trace::{trace_content, traces_on};

/// The OTLP/HTTP URL spans are posted to: the configured endpoint with `/v1/traces` appended
/// unless it already ends so (collectors and vendors document the base URL).
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The tracer provider exporting to `telemetry.otlp_endpoint`; `None` when it is empty.
pub(super) fn tracer_provider(
    settings: &TelemetrySettings,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if settings.otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
    // The exporter builds its reqwest client in `build`.
    crate::tls::install_crypto_provider();
    // Headers (vendor API keys) come from OTEL_EXPORTER_OTLP_HEADERS, read by the exporter, so
    // they stay out of the config file and `check-config`.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(&settings.otlp_endpoint))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("learning-chat")
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new(
                "deployment.environment.name",
                settings.environment.clone(),
            ),
        ])
        .build();
    // Batched on the SDK's own thread. Sampling is decided before a request's span is made
    // ([`sampled`], [`SampledRequests`]): every span that reaches the SDK is one to export, and
    // a client's sampled flag is followed so one trace is never cut in half between services.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    Ok(Some(provider))
}

/// Turns export on with `provider`, once the subscriber carrying its layer is installed.
pub(super) fn install_tracer_provider(settings: &TelemetrySettings, provider: SdkTracerProvider) {
    SAMPLE_RATIO_BITS.store(
        settings.trace_sample_ratio.to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    learning_chat_engine::trace::set_traces(true, settings.trace_content);
    *TRACER_PROVIDER.lock() = Some(provider);
    tracing::info!(
        endpoint = %traces_url(&settings.otlp_endpoint),
        sample_ratio = settings.trace_sample_ratio,
        "exporting traces over OTLP/HTTP"
    );
}

/// Sends the spans still queued and stops the exporter. Call last, after the server drained
/// (outside the async runtime: the exporter's client blocks).
pub fn shutdown_traces() {
    let Some(provider) = TRACER_PROVIDER.lock().take() else {
        return;
    };
    learning_chat_engine::trace::set_traces(false, trace_content());
    if let Err(e) = provider.shutdown() {
        eprintln!("warning: flushing traces at shutdown failed: {e}");
    }
}

/// The request's trace id (32 hex digits), in its extensions for the Sentry scope.
#[derive(Clone, Debug)]
pub struct RequestTraceId(pub String);

/// Reads the W3C `traceparent` (and `tracestate`) of a request.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The client's trace context, when it sent a valid `traceparent`.
pub(super) fn incoming_trace(headers: &axum::http::HeaderMap) -> Option<opentelemetry::Context> {
    // A name made once: a lookup by `&str` parses and validates the name on every request.
    const TRACEPARENT: axum::http::HeaderName = axum::http::HeaderName::from_static("traceparent");
    if !headers.contains_key(&TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Joins the request span to the client's trace (when there is one) and returns the trace id:
/// the exported trace's when traces are on, else the client's, else none.
pub(super) fn link_trace(
    span: &tracing::Span,
    incoming: Option<opentelemetry::Context>,
    sampled: bool,
) -> Option<TraceId> {
    if !sampled {
        return incoming.map(|cx| cx.span().span_context().trace_id());
    }
    if let Some(parent) = incoming {
        // Only fails when the span is disabled or already started; it is neither here.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
}
