//! Error tracking: Sentry, when `telemetry.sentry_dsn` (`SENTRY_DSN`) is set. Every event is
//! scrubbed of secrets first; 5xx answers are reported from the [`ErrorKind`] the error's
//! builder put in the response extensions, never by reading the body.

use super::request::REQUEST_ID_HEADER;
use super::traces::RequestTraceId;
use super::{ErrorKind, PROBE_ROUTES};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use learning_chat_engine::config::Settings;
use sentry::protocol::{Event, Level};
use sentry::{Hub, SentryFutureExt};
use std::borrow::Cow;
use std::sync::Arc;

/// What replaces a secret in anything sent to Sentry.
const REDACTED: &str = "[redacted]";

/// The layer turning the warnings and errors logged during a request into breadcrumbs of its
/// Sentry event.
pub(super) fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Breadcrumbs only: errors are reported once, as the 5xx event of their request (see
    // `report_errors`); as events of their own they would duplicate it. No span layer either:
    // performance tracing is not needed for error reports.
    tracing_subscriber::Layer::with_filter(
        sentry_tracing::BreadcrumbLayer::new(),
        tracing_subscriber::filter::LevelFilter::WARN,
    )
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
    let mut options = sentry::ClientOptions::new()
        .release(concat!("learning-chat@", env!("CARGO_PKG_VERSION")))
        .environment(telemetry.environment.clone())
        // No IP addresses, cookies or headers of learners.
        .send_default_pii(false)
        .max_breadcrumbs(50)
        // A panic's report is flushed before the panicking request answers; keep that short.
        .shutdown_timeout(std::time::Duration::from_secs(2))
        .before_send(move |event| Some(scrub_event(event, &secrets)));
    // Set directly: the `dsn` setter parses a string and panics on an invalid one.
    options.dsn = Some(dsn);
    // `init` builds the transport's reqwest client and panics when that fails (no CA certificate
    // on the system, say); building one first makes that a start-up error that says so.
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("cannot set up HTTPS for Sentry"))?;
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

/// Middleware (inside the request id and catch-panic layers): gives each request its own Sentry
/// scope tagged with the request id, route and method, so a panic in the handler is reported
/// with them, and reports 5xx answers. A no-op when Sentry is not configured.
pub async fn report_errors(
    State(label): State<super::RouteLabel>,
    request: Request,
    next: Next,
) -> Response {
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
    let route = label.of(&request).to_owned();
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
    let kind = response.extensions().get::<ErrorKind>();
    if let Some(event) = error_event(response.status().as_u16(), &method, route, kind) {
        hub.capture_event(event);
    }
    response
}

/// The event reporting a 5xx answer of `route`, or `None` for deliberate load shedding. An answer
/// without an [`ErrorKind`] (not built by the API's error type) is reported as `unknown`.
fn error_event(
    status: u16,
    method: &str,
    route: String,
    kind: Option<&ErrorKind>,
) -> Option<Event<'static>> {
    if kind.is_some_and(|kind| kind.shed) {
        return None;
    }
    let code = kind.map_or("unknown", |kind| kind.code);
    let mut event = Event {
        level: Level::Error,
        message: Some(format!("HTTP {status} {code} on {method} {route}")),
        // One issue per route, status and error code, not one per distinct message.
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("http-5xx"),
            Cow::Owned(route),
            Cow::Owned(status.to_string()),
            Cow::Borrowed(code),
        ]),
        ..Default::default()
    };
    event.tags.insert("status".to_owned(), status.to_string());
    event.tags.insert("error_code".to_owned(), code.to_owned());
    if let Some(kind) = kind {
        // The learner-facing message: written to be safe to show, so safe to send.
        event
            .extra
            .insert("error_message".to_owned(), kind.message.clone().into());
    }
    Some(event)
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
    fn sheds_are_not_reported_and_failures_carry_their_kind() {
        let shed = ErrorKind {
            code: "overloaded",
            message: "busy".to_owned(),
            shed: true,
        };
        assert!(error_event(503, "POST", "/r".to_owned(), Some(&shed)).is_none());
        // The decision is the flag's, not the code's: any code may be shedding.
        let failure = ErrorKind {
            code: "overloaded",
            message: "the model failed".to_owned(),
            shed: false,
        };
        let event = error_event(502, "POST", "/r".to_owned(), Some(&failure));
        let json = serde_json::to_value(event).unwrap_or_default();
        assert_eq!(json["tags"]["error_code"], "overloaded", "{json}");
        assert_eq!(json["tags"]["status"], "502", "{json}");
        assert_eq!(json["extra"]["error_message"], "the model failed", "{json}");
        let unknown = error_event(500, "GET", "/r".to_owned(), None);
        let json = serde_json::to_value(unknown).unwrap_or_default();
        assert_eq!(json["tags"]["error_code"], "unknown", "{json}");
        assert!(json["extra"].get("error_message").is_none(), "{json}");
    }
}
