//! Sentry receives 5xx errors and panics with the request id and without secrets.

use crate::support::prom::Scrape;
use crate::support::{offline_settings, settings_for, spawn_app, start_sim};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use gemini_sim::SimConfig;
use learning_chat::config::Secret;
use learning_chat::telemetry;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A stand-in for Sentry's ingest endpoint: keeps every envelope POSTed to it.
#[derive(Clone, Default)]
struct FakeSentry(Arc<Mutex<Vec<String>>>);

impl FakeSentry {
    /// Starts on a free port, on a thread and runtime of its own (so a test thread blocked in
    /// a flush, or a panic hook flushing on a worker, never stalls it), and returns the DSN.
    fn start(&self) -> String {
        async fn envelope(State(sink): State<FakeSentry>, body: Bytes) -> &'static str {
            sink.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            "{}"
        }
        let router = Router::new()
            .route("/api/1/envelope/", post(envelope))
            .with_state(self.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router).await
            })
        });
        format!("http://publickey@127.0.0.1:{port}/1")
    }

    /// The events received: the payloads of the envelopes' `event` items.
    fn events(&self) -> Vec<Value> {
        let envelopes = self.0.lock().unwrap().clone();
        let mut events = Vec::new();
        for envelope in &envelopes {
            // A header line, then (item header, payload) pairs.
            let mut lines = envelope.lines().skip(1).filter(|l| !l.trim().is_empty());
            while let (Some(header), Some(payload)) = (lines.next(), lines.next()) {
                let header: Value = serde_json::from_str(header).expect("an item header");
                if header["type"] == "event" {
                    events.push(serde_json::from_str(payload).expect("an event payload"));
                }
            }
        }
        events
    }

    fn raw(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Sends a marker event and waits until it arrives. The transport sends events in the order
/// they were captured, so everything captured before has arrived too. (Waiting on
/// `Client::flush` is not enough: sentry 0.34 reports a flush that timed out as successful.)
fn wait_for_delivery(sentry: &FakeSentry, marker: &str) {
    sentry::Hub::main().capture_message(marker, sentry::Level::Info);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !sentry.raw().contains(marker) {
        assert!(
            std::time::Instant::now() < until,
            "Sentry events were not delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SECRET_KEY: &str = "sk-obs-secret-0123456789";
const PRIVATE_MESSAGE: &str = "my private homework question 4242";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_gets_5xx_errors_with_the_request_id_but_no_secrets_and_no_sheds() {
    let sentry = FakeSentry::default();
    let dsn = sentry.start();
    let mut config = SimConfig::default();
    config.faults.error_500 = 1.0;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.gemini.api_key = Secret::new(SECRET_KEY);
    settings.telemetry.sentry_dsn = Secret::new(dsn);
    settings.telemetry.environment = "obs-test".to_owned();
    settings.upstream.max_retries = 1;
    settings.upstream.rpm = 2;
    settings.server.request_timeout = Duration::from_secs(5);
    let _guard = telemetry::init_sentry(&settings)
        .unwrap()
        .expect("Sentry starts with a DSN");
    telemetry::init_logging_to(&settings.telemetry, std::io::sink);
    let app = spawn_app(settings).await;
    let ask = |message: &'static str, id: &'static str| {
        app.client
            .post(app.url("/api/v1/agents/math"))
            .header("x-request-id", id)
            // The client's W3C trace context: its trace id must reach the event.
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .json(&serde_json::json!({ "message": message }))
            .send()
    };
    // A model failure (two attempts: the quota of 2 is used up) ...
    let failed = ask(PRIVATE_MESSAGE, "obs-sentry-500").await.unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failed.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_unavailable"
    );
    // ... then deliberate shedding (quota), which is not an error to report.
    let shed = ask("another question", "obs-sentry-shed").await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        shed.json::<Value>().await.unwrap()["error"]["code"],
        "overloaded"
    );
    wait_for_delivery(&sentry, "obs-marker-5xx");

    let events = sentry.events();
    let reported: Vec<&Value> = events
        .iter()
        .filter(|e| e["tags"]["request_id"] == "obs-sentry-500")
        .collect();
    assert_eq!(
        reported.len(),
        1,
        "one event for the failed request: {events:#?}"
    );
    let event = reported[0];
    assert_eq!(event["tags"]["status"], "503");
    assert_eq!(event["tags"]["error_code"], "upstream_unavailable");
    assert_eq!(event["tags"]["route"], "/api/v1/agents/{agent_id}");
    assert_eq!(
        event["tags"]["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(event["environment"], "obs-test");
    // `error` is the protocol's default level, so it may be left out.
    assert!(event.get("level").is_none_or(|l| l == "error"), "{event}");
    // The warnings and errors logged during the request ride along as breadcrumbs.
    let breadcrumbs = event["breadcrumbs"].to_string();
    assert!(breadcrumbs.contains("retrying"), "{breadcrumbs}");
    assert!(
        !events
            .iter()
            .any(|e| e["tags"]["request_id"] == "obs-sentry-shed"),
        "a shed request was reported: {events:#?}"
    );
    let raw = sentry.raw();
    assert!(!raw.contains(SECRET_KEY), "the API key reached Sentry");
    assert!(
        !raw.contains(PRIVATE_MESSAGE),
        "the learner's message reached Sentry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_gets_panics_with_the_request_id_and_secrets_scrubbed() {
    let sentry = FakeSentry::default();
    let dsn = sentry.start();
    let mut settings = offline_settings();
    settings.gemini.api_key = Secret::new(SECRET_KEY);
    settings.telemetry.sentry_dsn = Secret::new(dsn);
    let _guard = telemetry::init_sentry(&settings)
        .unwrap()
        .expect("Sentry starts with a DSN");
    let metrics = learning_chat::metrics::install();
    // The service's own middleware around a route that panics.
    let router =
        learning_chat::app::with_service_layers(Router::new().route("/boom", get(boom)), &settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let reply = learning_chat_testkit::http::client()
        .get(format!("http://{addr}/boom"))
        .header("x-request-id", "obs-panic-1")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.headers()["x-request-id"], "obs-panic-1");
    wait_for_delivery(&sentry, "obs-marker-panic");
    let events = sentry.events();
    let panics: Vec<&Value> = events
        .iter()
        .filter(|e| e["tags"]["request_id"] == "obs-panic-1")
        .collect();
    assert_eq!(
        panics.len(),
        1,
        "exactly one report for the panic: {events:#?}"
    );
    let exception = panics[0]["exception"].to_string();
    assert!(
        exception.contains("a bug that mentions the key"),
        "{exception}"
    );
    assert!(exception.contains("panic"), "{exception}");
    assert_eq!(panics[0]["tags"]["route"], "/boom");
    assert!(
        !sentry.raw().contains(SECRET_KEY),
        "the API key reached Sentry"
    );
    // Counted as the 500 it was answered with, and no longer in flight.
    let page = Scrape::parse(&metrics.render());
    let labels = [("route", "/boom"), ("method", "GET"), ("status", "500")];
    assert_eq!(
        page.value("learning_chat_http_requests_total", &labels),
        1.0
    );
    assert_eq!(
        page.value("learning_chat_http_requests_in_flight", &[]),
        0.0
    );
}

/// A handler with a bug.
async fn boom() -> &'static str {
    panic!("a bug that mentions the key {SECRET_KEY}")
}

#[test]
fn an_invalid_sentry_dsn_is_an_error_not_silence() {
    let mut settings = offline_settings();
    settings.telemetry.sentry_dsn = Secret::new("not a dsn");
    let error = telemetry::init_sentry(&settings)
        .err()
        .expect("an invalid DSN fails");
    assert!(error.to_string().contains("SENTRY_DSN"), "{error}");
    assert!(telemetry::init_sentry(&offline_settings())
        .unwrap()
        .is_none());
}
