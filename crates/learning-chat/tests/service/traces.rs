//! OpenTelemetry traces from the real binary: an in-test OTLP/HTTP receiver decodes the protobuf
//! the service exports and checks the span tree of a cache miss (with a retried model call) and
//! of a cache hit, the client's `traceparent` as the parent, the trace id on log lines, and that
//! no message text or cache key reaches an attribute unless `telemetry.trace_content` is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::cluster::Proc;
use crate::support::processes::RedisProcess;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gemini_sim::SimConfig;
use learning_chat_testkit::process::{server_command, spawn_server};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client's trace: W3C `traceparent` = version-traceid-parentid-flags (sampled).
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on a loopback port 0 keeping every span it is sent.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn start_receiver() -> Receiver {
    async fn traces(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> StatusCode {
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return StatusCode::BAD_REQUEST;
        };
        let mut kept = spans.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                kept.extend(scope.spans);
            }
        }
        StatusCode::OK
    }
    let spans = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { addr, spans }
}

/// A Gemini upstream that answers its first call with 503 UNAVAILABLE and forwards every later
/// one to gemini-sim: one retried model call, deterministically.
async fn start_flaky_upstream(sim: String) -> SocketAddr {
    #[derive(Clone)]
    struct Upstream {
        sim: String,
        calls: Arc<AtomicUsize>,
        http: reqwest::Client,
    }
    async fn forward(
        State(up): State<Upstream>,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        if up.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let error = serde_json::json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}});
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error)).into_response();
        }
        let mut request = up.http.post(format!("{}{uri}", up.sim)).body(body);
        for name in ["x-goog-api-key", "content-type"] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        let reply = request.send().await.unwrap();
        let status = StatusCode::from_u16(reply.status().as_u16()).unwrap();
        let body = reply.bytes().await.unwrap();
        (status, [("content-type", "application/json")], body).into_response()
    }
    let state = Upstream {
        sim,
        calls: Arc::new(AtomicUsize::new(0)),
        http: learning_chat_testkit::http::client(),
    };
    let app = axum::Router::new()
        .fallback(axum::routing::post(forward))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The service as a real process exporting traces to `receiver`, its log in `log`.
fn start_service(
    upstream: SocketAddr,
    redis: &RedisProcess,
    receiver: &Receiver,
    trace_content: bool,
    log: &std::path::Path,
    extra: &[(&str, &str)],
) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let (mut command, port) = server_command();
    command.envs(extra.iter().copied());
    command
        .env("GEMINI_API_KEY", "trace-test-key")
        .env("GEMINI_BASE_URL", format!("http://{upstream}"))
        .env("REDIS_URL", redis.url())
        .env("LEARNING_CHAT_UPSTREAM__RETRY_BASE_DELAY_MS", "20")
        .env("LEARNING_CHAT_UPSTREAM__RETRY_MAX_DELAY_MS", "100")
        .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "5000")
        .env(
            "LEARNING_CHAT_TELEMETRY__OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        )
        .env(
            "LEARNING_CHAT_TELEMETRY__TRACE_CONTENT",
            trace_content.to_string(),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log));
    spawn_server(command, port)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AnyValue::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(AnyValue::StringValue(v)) => Some(v.as_str()),
        _ => None,
    }
}

fn bool_attr(span: &Span, key: &str) -> Option<bool> {
    match attr(span, key) {
        Some(AnyValue::BoolValue(v)) => Some(*v),
        _ => None,
    }
}

/// Every string in a span's attributes and events (what a tracing backend would store).
fn strings_of(span: &Span) -> Vec<String> {
    let mut out = vec![span.name.clone()];
    let events = span.events.iter().flat_map(|e| e.attributes.iter());
    for kv in span.attributes.iter().chain(events) {
        out.push(kv.key.clone());
        if let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            out.push(format!("{value:?}"));
        }
    }
    out
}

/// A run of 64 hex digits: the shape of a cache key.
fn has_cache_key_shape(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}

/// One trace's spans by span id, and helpers to walk its tree.
struct Trace<'a> {
    spans: Vec<&'a Span>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [Span], trace_id: &[u8]) -> Trace<'a> {
        Trace {
            spans: all.iter().filter(|s| s.trace_id == trace_id).collect(),
        }
    }

    fn named(&self, name: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .collect()
    }

    fn one(&self, name: &str) -> &'a Span {
        let found = self.named(name);
        assert_eq!(found.len(), 1, "one {name} span in {:#?}", self.names());
        found[0]
    }

    fn parent_of(&self, span: &Span) -> Option<&'a Span> {
        self.spans
            .iter()
            .copied()
            .find(|s| s.span_id == span.parent_span_id)
    }

    /// True when `ancestor` is on the path from `span` to the root.
    fn descends_from(&self, span: &Span, ancestor: &Span) -> bool {
        let mut current = self.parent_of(span);
        while let Some(parent) = current {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = self.parent_of(parent);
        }
        false
    }

    fn names(&self) -> Vec<String> {
        self.spans.iter().map(|s| s.name.clone()).collect()
    }
}

/// Starts everything, asks `message` twice (a miss carrying the client's traceparent, then a
/// hit), stops the service (the flush at shutdown delivers the spans) and returns the spans and
/// the service's log.
async fn run_two_asks(message: &str, trace_content: bool) -> (Vec<Span>, String) {
    let redis = RedisProcess::start();
    let sim = crate::support::start_sim(SimConfig {
        latency: crate::support::fixed_latency(20),
        ..SimConfig::default()
    })
    .await;
    let upstream = start_flaky_upstream(sim.base_url()).await;
    let receiver = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("service.log");
    let mut service = start_service(upstream, &redis, &receiver, trace_content, &log_path, &[]);
    let http = learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // The server connects to Redis in the background; until it has, a lookup skips Redis (and
    // its span), so the trees below are only those of a server that uses Redis once it does.
    crate::support::wait_for_redis(&http, &format!("http://127.0.0.1:{}", service.port)).await;
    let url = format!("http://127.0.0.1:{}/api/v1/agents/math", service.port);
    let body = serde_json::json!({ "message": message });
    let miss = http
        .post(&url)
        .header(
            "traceparent",
            format!("00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 200);
    let miss: serde_json::Value = miss.json().await.unwrap();
    assert_eq!(miss["cached"], false, "{miss}");
    let hit: serde_json::Value = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hit["cached"], true, "{hit}");
    service.signal("-TERM");
    let status = service.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let spans = receiver.spans.lock().unwrap().clone();
    let log = std::fs::read_to_string(&log_path).unwrap();
    (spans, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_trees_of_a_miss_and_a_hit_without_content() {
    let message = "What is the derivative of x squared times trace-marker-7731?";
    let (spans, log) = run_two_asks(message, false).await;
    let client_trace = (0..16)
        .map(|i| u8::from_str_radix(&CLIENT_TRACE_ID[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();

    // The miss: the client's trace, under the client's span.
    let miss = Trace::of(&spans, &client_trace);
    let request = miss.one("POST /api/v1/agents/{agent_id}");
    assert_eq!(hex(&request.parent_span_id), CLIENT_PARENT_ID);
    assert_eq!(
        int_attr(request, "http.response.status_code"),
        Some(200),
        "{request:?}"
    );
    let lookup = miss.one("cache.lookup");
    assert_eq!(lookup.parent_span_id, request.span_id);
    assert_eq!(bool_attr(lookup, "cache.hit"), Some(false));
    let wait = miss.one("coalesce.wait");
    assert_eq!(wait.parent_span_id, request.span_id);
    let cluster = miss.one("coalesce.cluster");
    assert_eq!(cluster.parent_span_id, wait.span_id);
    let admission = miss.one("admission.wait");
    assert_eq!(admission.parent_span_id, wait.span_id);
    // One failed attempt (the 503), then the answer: two model spans, numbered, under the wait.
    let mut calls = miss.named("model.call");
    calls.sort_by_key(|s| int_attr(s, "model.attempt"));
    assert_eq!(calls.len(), 2, "{:#?}", miss.names());
    assert_eq!(int_attr(calls[0], "model.attempt"), Some(0));
    assert_eq!(str_attr(calls[0], "model.status"), Some("unavailable"));
    assert_eq!(int_attr(calls[1], "model.attempt"), Some(1));
    assert_eq!(str_attr(calls[1], "model.status"), Some("ok"));
    assert!(int_attr(calls[1], "gen_ai.usage.input_tokens").is_some_and(|t| t > 0));
    assert!(int_attr(calls[1], "gen_ai.usage.output_tokens").is_some_and(|t| t > 0));
    for call in &calls {
        assert_eq!(call.parent_span_id, wait.span_id);
    }
    assert_eq!(miss.named("quota.wait").len(), 2);
    // Redis calls: the cache look-up's and the cluster coalescer's, each inside its step.
    let redis = miss.named("redis");
    assert!(
        redis.iter().any(|r| miss.descends_from(r, lookup)),
        "a Redis call under the cache lookup: {:#?}",
        miss.names()
    );
    assert!(
        redis.iter().any(|r| miss.descends_from(r, cluster)),
        "a Redis call under the cluster wait: {:#?}",
        miss.names()
    );
    for r in &redis {
        assert!(str_attr(r, "db.operation.name").is_some());
    }

    // The hit: a trace of its own (no traceparent), no model call, no coalescing.
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() && s.name == request.name)
        .collect();
    assert_eq!(roots.len(), 1, "the hit's root");
    let hit = Trace::of(&spans, &roots[0].trace_id);
    assert_ne!(roots[0].trace_id, client_trace);
    assert_eq!(bool_attr(hit.one("cache.lookup"), "cache.hit"), Some(true));
    assert!(hit.named("model.call").is_empty(), "{:#?}", hit.names());
    assert!(hit.named("coalesce.wait").is_empty(), "{:#?}", hit.names());

    // No learner text and no cache key anywhere.
    for span in &spans {
        for text in strings_of(span) {
            assert!(
                !text.contains("trace-marker-7731"),
                "message text in {text}"
            );
            assert!(!has_cache_key_shape(&text), "a cache key in {text}");
            assert!(!text.contains("trace-test-key"), "the API key in {text}");
        }
    }

    // The retry's warning carries the client's trace id.
    let retry_line = log
        .lines()
        .find(|l| l.contains("retrying"))
        .unwrap_or_else(|| panic!("a retry warning in the log:\n{log}"));
    assert!(retry_line.contains(CLIENT_TRACE_ID), "{retry_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_content_puts_the_message_and_key_on_the_lookup() {
    let message = "Explain photosynthesis with content-marker-4410";
    let (spans, _log) = run_two_asks(message, true).await;
    let lookups: Vec<&Span> = spans.iter().filter(|s| s.name == "cache.lookup").collect();
    assert_eq!(lookups.len(), 2);
    for lookup in lookups {
        assert!(
            str_attr(lookup, "chat.message").is_some_and(|m| m.contains("content-marker-4410")),
            "{lookup:?}"
        );
        assert!(str_attr(lookup, "cache.key").is_some_and(has_cache_key_shape));
    }
    let attributes: HashMap<String, usize> =
        spans
            .iter()
            .flat_map(strings_of)
            .fold(HashMap::new(), |mut seen, text| {
                *seen.entry(text).or_default() += 1;
                seen
            });
    assert!(
        !attributes.keys().any(|t| t.contains("trace-test-key")),
        "never the API key"
    );
}

/// Work a request leaves in the background (publishing its answer to the servers waiting on
/// the lease, then releasing the lease) runs in a trace of its own that follows from the
/// request: were it a child, it would hold the request's span open, and a server stopped
/// before that work ended would never export the request. Here Redis is frozen while the model
/// answers, so the publication hangs for the whole command timeout, and the server is stopped
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_exported_when_its_background_work_outlives_the_server() {
    let redis = RedisProcess::start();
    let sim = crate::support::start_sim(SimConfig {
        latency: crate::support::fixed_latency(1_000),
        ..SimConfig::default()
    })
    .await;
    let upstream = start_flaky_upstream(sim.base_url()).await;
    let receiver = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("service.log");
    let mut service = start_service(
        upstream,
        &redis,
        &receiver,
        false,
        &log_path,
        &[("LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS", "20000")],
    );
    let port = service.port;
    let http = learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    crate::support::wait_for_redis(&http, &format!("http://127.0.0.1:{port}")).await;
    let url = format!("http://127.0.0.1:{port}/api/v1/agents/math");
    let asked = tokio::spawn({
        let http = http.clone();
        async move {
            http.post(&url)
                .header(
                    "traceparent",
                    format!("00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"),
                )
                .json(&serde_json::json!({ "message": "What is a prime number?" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // The lease is taken before the model is asked; once the simulator has the question,
    // everything left that needs Redis is the background publication.
    while sim.stats().requests == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.freeze();
    assert_eq!(asked.await.unwrap(), StatusCode::OK);
    service.signal("-TERM");
    let status = service.wait_exit(Duration::from_secs(60));
    redis.thaw();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let spans = receiver.spans.lock().unwrap().clone();
    let client_trace = (0..16)
        .map(|i| u8::from_str_radix(&CLIENT_TRACE_ID[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let trace = Trace::of(&spans, &client_trace);
    let request = trace.one("POST /api/v1/agents/{agent_id}");
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    // The request's own steps are in its trace; the answer's model call among them.
    assert_eq!(
        trace.named("coalesce.wait").len(),
        1,
        "{:#?}",
        trace.names()
    );
    assert!(
        !trace.named("model.call").is_empty(),
        "{:#?}",
        trace.names()
    );
}

/// Sampling is decided before a request's spans are made: at `trace_sample_ratio = 0` a request
/// of its own exports nothing, a client's sampled trace is followed whatever the ratio, and a
/// client's unsampled one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_clients_flag() {
    let redis = RedisProcess::start();
    let sim = crate::support::start_sim(SimConfig {
        latency: crate::support::fixed_latency(5),
        ..SimConfig::default()
    })
    .await;
    let receiver = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let upstream: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut service = start_service(
        upstream,
        &redis,
        &receiver,
        false,
        &dir.path().join("service.log"),
        &[("LEARNING_CHAT_TELEMETRY__TRACE_SAMPLE_RATIO", "0")],
    );
    let http = learning_chat_testkit::http::client();
    let url = format!("http://127.0.0.1:{}/api/v1/agents/math", service.port);
    let ask = |traceparent: Option<String>, message: &'static str| {
        let mut request = http
            .post(&url)
            .json(&serde_json::json!({ "message": message }));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        async move { request.send().await.unwrap().status() }
    };
    let unsampled_parent = "a3ce929d0e0e47364bf92f3577b34da6";
    assert_eq!(ask(None, "What is 2+2?").await, StatusCode::OK);
    assert_eq!(
        ask(
            Some(format!("00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01")),
            "What is 3+3?"
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        ask(
            Some(format!("00-{unsampled_parent}-{CLIENT_PARENT_ID}-00")),
            "What is 4+4?"
        )
        .await,
        StatusCode::OK
    );
    service.signal("-TERM");
    let status = service.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let spans = receiver.spans.lock().unwrap().clone();
    let followed = (0..16)
        .map(|i| u8::from_str_radix(&CLIENT_TRACE_ID[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let trace = Trace::of(&spans, &followed);
    trace.one("POST /api/v1/agents/{agent_id}");
    assert!(
        !trace.named("cache.lookup").is_empty(),
        "{:#?}",
        trace.names()
    );
    // Everything exported belongs to the followed trace, or to the background work that
    // follows from it (traces of their own, linked to it): the other two requests built none.
    let linked: Vec<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.links.iter().any(|link| link.trace_id == followed))
        .map(|s| &s.trace_id)
        .collect();
    let others: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id != followed && !linked.contains(&&s.trace_id))
        .map(|s| s.name.as_str())
        .collect();
    assert!(others.is_empty(), "spans of unsampled requests: {others:?}");
}
