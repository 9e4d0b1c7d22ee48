//! Logging setup: one global `tracing` subscriber (text or JSON lines, filtered by `RUST_LOG`
//! or `telemetry.log_level`), with the OTLP trace layer and the Sentry breadcrumb layer.

use super::lazy_fields::LazyRequestFields;
use super::sentry::log_layer as sentry_log_layer;
use super::traces::{install_tracer_provider, tracer_provider};
use learning_chat_engine::config::{LogFormat, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use std::io::IsTerminal;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber writing to stdout; a second call (tests) is a no-op.
pub fn init_logging(settings: &TelemetrySettings) {
    install_subscriber(settings, std::io::stdout, std::io::stdout().is_terminal());
}

/// Like [`init_logging`], writing to `writer` instead of stdout (tests capture logs this way).
pub fn init_logging_to<W>(settings: &TelemetrySettings, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install_subscriber(settings, writer, false);
}

fn install_subscriber<W>(settings: &TelemetrySettings, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, exporter_error) = match tracer_provider(settings) {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    // Traces take this crate's spans and events only.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("learning-chat"))
            .with_filter(
                Targets::new()
                    .with_target("learning_chat", tracing::Level::INFO)
                    .and(super::traces::SampledRequests),
            )
    });
    // Only with a DSN: warnings and errors become breadcrumbs of the request's Sentry event.
    let sentry = !settings.sentry_dsn.is_empty();
    let installed = match otel {
        // The log filter is the logs' own, not global: `log_level = "warn"` must not switch the
        // (INFO) spans of traces off.
        Some(otel) => tracing_subscriber::registry()
            .with(otel)
            .with(log_layer(settings.log_format, writer, ansi, sentry).with_filter(filter))
            .try_init(),
        // Without traces the log filter is the only one, so it filters globally: the same
        // lines, without the per-layer filter's bookkeeping on every span a request enters
        // and leaves (400 instructions of a cached answer, bench 16).
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(settings.log_format, writer, ansi, sentry))
            .try_init(),
    };
    if let Some(e) = exporter_error {
        tracing::error!("traces are off: cannot build the OTLP exporter: {e}");
    }
    let Some(provider) = provider else {
        return;
    };
    if installed.is_err() {
        // A subscriber was already installed (tests): these spans would go nowhere.
        let _ = provider.shutdown();
        return;
    }
    install_tracer_provider(settings, provider);
}

/// The log lines' layer in `format`, writing to `writer`, with the Sentry breadcrumbs when
/// `sentry`. Boxed, so one function serves the subscriber with traces and the one without.
fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
    sentry: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let sentry = sentry.then(sentry_log_layer);
    match format {
        LogFormat::Text => LazyRequestFields::new(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(writer),
            DefaultFields::new(),
        )
        .and_then(sentry)
        .boxed(),
        LogFormat::Json => LazyRequestFields::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                // The whole span list, so `request_id` is still there when a line is logged
                // inside a span nested in the request span.
                .with_span_list(true)
                .with_writer(writer),
            JsonFields::new(),
        )
        .and_then(sentry)
        .boxed(),
    }
}
