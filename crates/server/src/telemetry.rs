//! Logs, request context and error tracking.
//!
//! - Logs: `tracing`, human-readable or one JSON object per line, filtered by `RUST_LOG` or the
//!   configured level. Every line logged while serving a request carries that request's id,
//!   because the `request` span (made in [`observe_request`]) is entered around the handler and
//!   [`in_current_context`] carries it into tasks the request spawns.
//! - Error tracking: Sentry, when `telemetry.sentry_dsn` (`SENTRY_DSN`) is set. 5xx answers
//!   (except deliberate load shedding) and panics are reported with the request id, route and
//!   error code; warnings and errors logged during the request ride along as breadcrumbs.
//!   Everything sent passes [`scrub_event`] first: no API key, Redis password or DSN leaves the
//!   process, and neither request bodies nor learners' messages are ever attached.
//! - Traces: OpenTelemetry over OTLP/HTTP (protobuf) when `telemetry.otlp_endpoint` is set. The
//!   `request` span is the root (or the child of the client's W3C `traceparent`); the steps of a
//!   request are its children, made with [`crate::trace_span!`], which makes nothing at all when export
//!   is off. The trace id rides on every log line of the request and on its Sentry event.

use crate::app::REQUEST_ID_HEADER;
use crate::config::{LogFormat, Settings, TelemetrySettings};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use sentry::protocol::{Event, Level};
use sentry::{Hub, SentryFutureExt};
use std::borrow::Cow;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// [`REQUEST_ID_HEADER`] as a header name, made once.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Longest incoming request id kept; longer ones are replaced (they end up in every log line).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What replaces a secret in anything sent to Sentry.
const REDACTED: &str = "[redacted]";

/// The error code of deliberate load shedding (503 + Retry-After): expected under overload,
/// counted by `learning_chat_requests_shed_total` and alerted on, so not sent to Sentry, where a
/// burst would drown real errors and use up the event quota.
const SHED_ERROR_CODE: &str = "overloaded";

/// Probe routes: their 503 is a state (`/ready` while draining at every rollout), not an error.
const PROBE_ROUTES: &[&str] = &["/health", "/ready"];

/// Largest error body read to find its error code (ours are a few hundred bytes).
const MAX_ERROR_BODY: usize = 16 * 1024;

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
    // The log filter is the logs' own, not global: `log_level = "warn"` must not switch the
    // (INFO) spans of traces off. Traces take this crate's spans and events only.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("learning-chat"))
            .with_filter(Targets::new().with_target("learning_chat", tracing::Level::INFO))
    });
    let registry = tracing_subscriber::registry().with(otel);
    // Only with a DSN: warnings and errors become breadcrumbs of the request's Sentry event.
    let sentry = (!settings.sentry_dsn.is_empty()).then(sentry_log_layer);
    let installed = match settings.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(writer)
                    .and_then(sentry)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // The whole span list, so `request_id` is still there when a line is logged
                    // inside a span nested in the request span.
                    .with_span_list(true)
                    .with_writer(writer)
                    .and_then(sentry)
                    .with_filter(filter),
            )
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
    TRACE_CONTENT.store(settings.trace_content, Ordering::Relaxed);
    TRACES_ON.store(true, Ordering::Release);
    *TRACER_PROVIDER.lock() = Some(provider);
    tracing::info!(
        endpoint = %traces_url(&settings.otlp_endpoint),
        sample_ratio = settings.trace_sample_ratio,
        "exporting traces over OTLP/HTTP"
    );
}

/// True once traces are exported; read on every [`crate::trace_span!`], so a plain atomic load.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// `telemetry.trace_content`: learners' text and cache keys may go on spans.
static TRACE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Kept for [`shutdown_traces`], which flushes the spans still queued.
static TRACER_PROVIDER: parking_lot::Mutex<Option<SdkTracerProvider>> =
    parking_lot::Mutex::new(None);

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
        if $crate::telemetry::traces_on() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

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
fn tracer_provider(settings: &TelemetrySettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if settings.otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
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
    // Batched on the SDK's own thread; a client's sampled flag is followed so one trace is
    // never cut in half between services.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    Ok(Some(provider))
}

/// Sends the spans still queued and stops the exporter. Call last, after the server drained
/// (outside the async runtime: the exporter's client blocks).
pub fn shutdown_traces() {
    let Some(provider) = TRACER_PROVIDER.lock().take() else {
        return;
    };
    TRACES_ON.store(false, Ordering::Release);
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
fn incoming_trace(headers: &axum::http::HeaderMap) -> Option<opentelemetry::Context> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Joins the request span to the client's trace (when there is one) and returns the trace id:
/// the exported trace's when traces are on, else the client's, else none.
fn link_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) -> Option<TraceId> {
    let incoming = incoming_trace(headers);
    if !traces_on() {
        return incoming.map(|cx| cx.span().span_context().trace_id());
    }
    if let Some(parent) = incoming {
        // Only fails when the span is disabled or already started; it is neither here.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
}

fn sentry_log_layer<S>() -> sentry_tracing::SentryLayer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    sentry_tracing::layer()
        // Errors are reported once, as the 5xx event of their request (see `report_errors`);
        // as events of their own they would duplicate it.
        .event_filter(|metadata| match *metadata.level() {
            tracing::Level::ERROR | tracing::Level::WARN => sentry_tracing::EventFilter::Breadcrumb,
            _ => sentry_tracing::EventFilter::Ignore,
        })
        // No performance tracing: spans cost time and are not needed for error reports.
        .span_filter(|_| false)
}

/// Wraps a future about to be `tokio::spawn`ed so it keeps the current request's context: its
/// log lines carry the request id (the tracing span) and its breadcrumbs reach the request's
/// Sentry event (the Sentry hub). Without it, a spawned task starts with no context at all.
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    future.in_current_span().bind_hub(Hub::current())
}

/// Starts Sentry when a DSN is configured. Keep the guard alive until exit: dropping it flushes
/// the events still queued. An invalid DSN is an error, not silently no error reporting.
pub fn init_sentry(settings: &Settings) -> anyhow::Result<Option<sentry::ClientInitGuard>> {
    let telemetry = &settings.telemetry;
    let dsn = telemetry.sentry_dsn.expose().trim();
    if dsn.is_empty() {
        return Ok(None);
    }
    let dsn: sentry::types::Dsn = dsn
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid telemetry.sentry_dsn (SENTRY_DSN): {e}"))?;
    let secrets = Arc::new(secrets_of(settings));
    let options = sentry::ClientOptions {
        dsn: Some(dsn),
        release: Some(Cow::Borrowed(concat!(
            "learning-chat@",
            env!("CARGO_PKG_VERSION")
        ))),
        environment: Some(Cow::Owned(telemetry.environment.clone())),
        // No IP addresses, cookies or headers of learners.
        send_default_pii: false,
        max_breadcrumbs: 50,
        // A panic's report is flushed before the panicking request answers; keep that short.
        shutdown_timeout: std::time::Duration::from_secs(2),
        before_send: Some(Arc::new(move |event| Some(scrub_event(event, &secrets)))),
        ..Default::default()
    };
    let guard = sentry::init(options);
    // `init` binds the client to the calling thread's hub; request hubs are made from the main
    // hub, so make sure it has the client even when `init` ran on another thread.
    if Hub::main().client().is_none() {
        Hub::main().bind_client(Hub::current().client());
    }
    Ok(Some(guard))
}

/// The configured secrets, longest first so a secret containing another is redacted whole.
fn secrets_of(settings: &Settings) -> Vec<String> {
    let mut secrets = vec![
        settings.gemini.api_key.expose().to_owned(),
        settings.redis.url.expose().to_owned(),
        settings.telemetry.sentry_dsn.expose().to_owned(),
    ];
    secrets.extend(
        settings
            .gemini
            .api_keys
            .iter()
            .chain([&settings.openai.api_key])
            .map(|k| k.expose().to_owned()),
    );
    // The Redis password alone (redis://user:PASSWORD@host) may appear in error messages.
    if let Some(password) = url_password(settings.redis.url.expose()) {
        secrets.push(password.to_owned());
    }
    let nodes = settings
        .redis
        .sentinels
        .iter()
        .chain(&settings.redis.cluster_nodes);
    secrets.extend(nodes.filter_map(|n| url_password(n.expose()).map(str::to_owned)));
    secrets.retain(|s| s.trim().len() >= 4);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then_some(password)
}

/// Removes secrets from every string of `event` (message, exception values, breadcrumbs, tags,
/// extra data, ...) and drops what may carry personal data (request, user).
pub fn scrub_event(event: Event<'static>, secrets: &[String]) -> Event<'static> {
    let mut event = event;
    event.request = None;
    event.user = None;
    // One pass over the whole event as JSON reaches every string, including fields added by
    // future SDK versions; it only runs for the rare events actually sent.
    let Ok(mut value) = serde_json::to_value(&event) else {
        return event;
    };
    scrub_value(&mut value, secrets);
    serde_json::from_value(value).unwrap_or(event)
}

fn scrub_value(value: &mut serde_json::Value, secrets: &[String]) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = scrub_text(s, secrets) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secrets)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| scrub_value(v, secrets)),
        _ => {}
    }
}

/// `text` without the given secrets, Google API keys (`AIza` + 35 characters) and the values of
/// `key=` URL parameters (how Google APIs also accept keys).
pub fn scrub_text<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    if out.contains("AIza") {
        out = Cow::Owned(redact_after(&out, "AIza", 35, false));
    }
    if out.contains("key=") {
        out = Cow::Owned(redact_after(&out, "key=", usize::MAX, true));
    }
    out
}

/// Replaces the run of key characters (`[A-Za-z0-9_-]`, at most `max`) after each `marker`;
/// `keep_marker` leaves the marker itself in place.
fn redact_after(text: &str, marker: &str, max: usize, keep_marker: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at]);
        let after = &rest[at + marker.len()..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            .take(max)
            .count();
        if keep_marker {
            out.push_str(marker);
        }
        if len > 0 {
            out.push_str(REDACTED);
        } else if !keep_marker {
            out.push_str(marker);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Middleware (outermost): the request's identity and its measurements, in one layer.
///
/// - Its id: an incoming `X-Request-Id` (from the client or nginx) is kept when usable (at most
///   [`MAX_REQUEST_ID_LEN`] bytes of `[A-Za-z0-9._:-]`: the id lands in every log line and error
///   report, so a client must not inject lines or megabytes through it); otherwise a fresh UUID
///   replaces it. Either way it is set on the request and returned on the response.
/// - Its span, which puts that id on every log line of the request (and, through
///   [`in_current_context`], of the tasks it spawns); one error line per 5xx answer, except load
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
        .map_or("unmatched", |p| p.as_str());
    // A guard, so a request dropped mid-way (client gone) is still counted and leaves the
    // in-flight gauge.
    let timer = crate::metrics::HttpRequestTimer::start(route, request.method().as_str());
    let span = tracing::info_span!(
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
    );
    if traces_on() {
        // Before `link_trace` starts the span: its name cannot change afterwards.
        span.record("otel.name", format!("{} {route}", request.method()));
        span.record("otel.kind", "server");
        span.record("http.route", route);
    }
    if let Some(trace_id) = link_trace(&span, request.headers()) {
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
    if traces_on() {
        // As i64: the OpenTelemetry layer records unsigned integers as text.
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let shed = response
        .extensions()
        .get::<crate::api::ErrorCode>()
        .is_some_and(|code| code.0 == SHED_ERROR_CODE);
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

/// Shortest time between two "requests shed" log lines.
const SHED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

static SHED_LOG: ShedLog = ShedLog {
    pending: AtomicU64::new(0),
    last_line: parking_lot::Mutex::new(None),
};

/// Logs load shedding at most once per [`SHED_LOG_INTERVAL`], with the count since the last line.
struct ShedLog {
    pending: AtomicU64,
    last_line: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl ShedLog {
    fn record(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        // Under overload every shed passes here: a busy lock means another thread is logging.
        let Some(mut last) = self.last_line.try_lock() else {
            return;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SHED_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.flush();
    }

    fn flush(&self) {
        let count = self.pending.swap(0, Ordering::Relaxed);
        if count > 0 {
            tracing::warn!(
                shed = count,
                "{count} requests shed with 503 {SHED_ERROR_CODE} since the last such line (overload; see learning_chat_requests_shed_total)"
            );
        }
    }
}

/// Logs the sheds not yet logged (the tail of a burst); called by the minute monitor.
pub fn flush_shed_log() {
    let Some(mut last) = SHED_LOG.last_line.try_lock() else {
        return;
    };
    *last = Some(std::time::Instant::now());
    drop(last);
    SHED_LOG.flush();
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

/// Middleware (inside the request id and catch-panic layers): gives each request its own Sentry
/// scope tagged with the request id, route and method, so a panic in the handler is reported
/// with them, and reports 5xx answers. A no-op when Sentry is not configured.
pub async fn report_errors(request: Request, next: Next) -> Response {
    let main = Hub::main();
    if !main.client().is_some_and(|client| client.is_enabled()) {
        return next.run(request).await;
    }
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let trace_id = request.extensions().get::<RequestTraceId>().cloned();
    let hub = Arc::new(Hub::new_from_top(main));
    hub.configure_scope(|scope| {
        scope.set_tag("request_id", &request_id);
        if let Some(trace_id) = &trace_id {
            // Finds the request's trace (APM) from its error report.
            scope.set_tag("trace_id", &trace_id.0);
        }
        scope.set_tag("route", &route);
        scope.set_tag("method", &method);
        scope.set_transaction(Some(&format!("{method} {route}")));
    });
    let response = next.run(request).bind_hub(hub.clone()).await;
    if !response.status().is_server_error() || PROBE_ROUTES.contains(&route.as_str()) {
        return response;
    }
    let (response, error) = error_of(response).await;
    if error.code == SHED_ERROR_CODE {
        return response;
    }
    let status = response.status().as_u16();
    let mut event = Event {
        level: Level::Error,
        message: Some(format!("HTTP {status} {} on {method} {route}", error.code)),
        // One issue per route, status and error code, not one per distinct message.
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("http-5xx"),
            Cow::Owned(route),
            Cow::Owned(status.to_string()),
            Cow::Owned(error.code.clone()),
        ]),
        ..Default::default()
    };
    event.tags.insert("status".to_owned(), status.to_string());
    event.tags.insert("error_code".to_owned(), error.code);
    if let Some(message) = error.message {
        // The learner-facing message: written to be safe to show, so safe to send.
        event
            .extra
            .insert("error_message".to_owned(), message.into());
    }
    hub.capture_event(event);
    response
}

/// The error code and learner-facing message of an error answer.
struct ErrorInfo {
    code: String,
    message: Option<String>,
}

/// Reads the `{"error": {"code", "message"}}` body of an error answer and rebuilds the answer.
/// Only bodies of a known small size are read, so nothing is ever lost or streamed twice.
async fn error_of(response: Response) -> (Response, ErrorInfo) {
    let unknown = ErrorInfo {
        code: "unknown".to_owned(),
        message: None,
    };
    let small = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some_and(|len| len <= MAX_ERROR_BODY as u64);
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !small || !is_json {
        return (response, unknown);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        // Unreachable given the exact size checked above; answer with an empty body rather
        // than fail the request.
        return (
            Response::from_parts(parts, axum::body::Body::empty()),
            unknown,
        );
    };
    let info = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            Some(ErrorInfo {
                code: error.get("code")?.as_str()?.to_owned(),
                message: error
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned),
            })
        })
        .unwrap_or(unknown);
    (
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        info,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_google_keys_are_scrubbed() {
        let secrets = vec!["sk-very-secret".to_owned()];
        let key = format!("AIza{}", "x".repeat(35));
        let text = format!("failed with sk-very-secret and {key}Z at https://g/v1?key=abc123&x=1");
        let clean = scrub_text(&text, &secrets);
        assert!(!clean.contains("sk-very-secret"), "{clean}");
        assert!(!clean.contains(&key), "{clean}");
        assert!(!clean.contains("abc123"), "{clean}");
        assert!(clean.contains("[redacted]Z"), "{clean}");
        assert!(clean.contains("key=[redacted]&x=1"), "{clean}");
        assert_eq!(scrub_text("nothing here", &secrets), "nothing here");
    }

    #[test]
    fn whole_events_are_scrubbed() {
        let secrets = vec!["sk-very-secret".to_owned()];
        let mut event = Event {
            message: Some("boom sk-very-secret".to_owned()),
            ..Default::default()
        };
        event
            .tags
            .insert("t".to_owned(), "sk-very-secret".to_owned());
        event
            .extra
            .insert("e".to_owned(), "x sk-very-secret".into());
        let event = scrub_event(event, &secrets);
        let json = serde_json::to_string(&event).unwrap_or_default();
        assert!(!json.contains("sk-very-secret"), "{json}");
        assert!(json.contains("[redacted]"), "{json}");
    }

    #[test]
    fn redis_passwords_are_found() {
        assert_eq!(
            url_password("redis://user:pw123@host:6379/0"),
            Some("pw123")
        );
        assert_eq!(url_password("redis://host:6379"), None);
    }

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(is_usable_request_id(b"abc-123_x.y:z"));
        assert!(!is_usable_request_id(b""));
        assert!(!is_usable_request_id(b"has space"));
        assert!(!is_usable_request_id(b"line\nbreak"));
        assert!(!is_usable_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
    }
}
