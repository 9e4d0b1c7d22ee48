//! The HTTP edge's metrics and the Prometheus recorder: HTTP requests and connections, API keys,
//! streams, process figures; [`install`] sets the recorder up once per process (buckets, the
//! engine's descriptions too).
//!
//! Labels are low-cardinality by construction (route templates, status classes), never raw paths.

use crate::api::stream::metrics::{STREAMS_REFUSED, STREAM_BYTES};
use crate::routes;
use learning_chat_engine::coalesce::metrics::STREAM_CANCELLATIONS;
use learning_chat_engine::conversations::metrics::{
    CONVERSATIONS_CREATED, CONVERSATIONS_ERASED, CONVERSATIONS_EVICTED,
    CONVERSATION_HISTORY_TOKENS, CONVERSATION_TRUNCATIONS, CONVERSATION_TURNS,
};
use learning_chat_engine::providers::metrics::API_KEYS_OUT;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// HTTP requests by route template, method and status code.
pub const HTTP_REQUESTS: &str = "learning_chat_http_requests_total";

/// HTTP request duration by route template, method and status class.
pub const HTTP_DURATION: &str = "learning_chat_http_request_duration_seconds";

/// HTTP requests being served now.
pub const HTTP_IN_FLIGHT: &str = "learning_chat_http_requests_in_flight";

/// Always 1; its `version` label tells which build each instance runs.
pub const BUILD_INFO: &str = "learning_chat_build_info";

/// Process CPU time (user + system), exported by `metrics-process` at each scrape.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";

/// Process resident memory, exported by `metrics-process` at each scrape.
pub const PROCESS_MEMORY: &str = "process_resident_memory_bytes";

/// Open file descriptors (sockets included), exported by `metrics-process` at each scrape.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";

/// Buckets from 1 ms to 60 s, so p50/p95/p99 are computable from milliseconds to the deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Buckets for turns per conversation.
const TURN_BUCKETS: &[f64] = &[
    2.0, 4.0, 6.0, 8.0, 10.0, 16.0, 20.0, 30.0, 50.0, 100.0, 200.0,
];

/// Buckets for history tokens sent.
const TOKEN_BUCKETS: &[f64] = &[
    50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Handles of the metrics every request touches. A lookup through the macros hashes the name and
/// every label each time, several times per request: a sizeable share of a cache hit's CPU.
/// Made only once the global recorder is installed, so no handle can be a no-op one. (They
/// bypass a thread-local recorder, which the service never sets, and would go stale if the
/// exporter's `idle_timeout` were ever turned on.)
struct HotHandles {
    http_in_flight: Gauge,
    /// Indexed by route, method and status in the label lists: no lock, no hashing.
    http: Box<[OnceLock<(Counter, Histogram)>]>,
}

static HOT: OnceLock<HotHandles> = OnceLock::new();

/// Where the handles of an HTTP request's labels sit in [`HotHandles::http`], when all three
/// labels are in the lists.
fn http_slot(route: Option<usize>, method: usize, status: u16) -> Option<usize> {
    let status = STATUS_LABELS.iter().position(|(code, _)| *code == status)?;
    Some((route? * METHOD_LABELS.len() + method) * STATUS_LABELS.len() + status)
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CONVERSATION_TURNS.to_owned()),
                        TURN_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CONVERSATION_HISTORY_TOKENS.to_owned()),
                        TOKEN_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program or test harness);
            // metrics then go there and /metrics renders what this handle saw.
            let _ = metrics::set_global_recorder(recorder);
            learning_chat_engine::metrics::describe();
            describe_http();
            learning_chat_engine::metrics::recorder_installed();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Rare events exported from the start, so a rate over them reads 0 rather than no data.
            for rare in [
                STREAMS_REFUSED,
                STREAM_BYTES,
                API_KEYS_OUT,
                CONVERSATIONS_CREATED,
                CONVERSATIONS_ERASED,
                CONVERSATIONS_EVICTED,
                CONVERSATION_TRUNCATIONS,
            ] {
                counter!(rare).increment(0);
            }
            for by in ["client", "upstream"] {
                counter!(STREAM_CANCELLATIONS, "by" => by).increment(0);
            }
            let _ = HOT.set(HotHandles {
                http_in_flight: gauge!(HTTP_IN_FLIGHT),
                http: (0..ROUTE_LABELS.len() * METHOD_LABELS.len() * STATUS_LABELS.len())
                    .map(|_| OnceLock::new())
                    .collect(),
            });
            handle
        })
        .clone()
}

/// Tracks HTTP requests in flight (+1 on entry, -1 on exit).
pub fn http_in_flight(delta: f64) {
    match HOT.get() {
        Some(hot) => hot.http_in_flight.increment(delta),
        None => gauge!(HTTP_IN_FLIGHT).increment(delta),
    }
}

/// Route templates and methods the service serves: their labels are built without allocating,
/// since this runs on every request (an owned label is still used for any other route).
const ROUTE_LABELS: &[&str] = &[
    routes::AGENT_CHAT,
    routes::AGENT_STREAM,
    routes::AGENTS,
    routes::CONVERSATION,
    routes::CONVERSATION_FEEDBACK,
    routes::HEALTH,
    routes::READY,
    routes::METRICS,
    routes::OPENAPI,
    routes::OPENAI_MODELS,
    routes::OPENAI_CHAT_COMPLETIONS,
    routes::UNMATCHED,
];

/// Any other method is counted as `other`, so clients cannot mint label values.
const METHOD_LABELS: &[&str] = &[
    "POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

const OTHER_METHOD: usize = METHOD_LABELS.len() - 1;

const STATUS_LABELS: &[(u16, &str)] = &[
    (200, "200"),
    (204, "204"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (499, "499"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// A route label, and its index when it is one of [`ROUTE_LABELS`].
fn route_label(route: &str) -> (SharedString, Option<usize>) {
    match ROUTE_LABELS.iter().position(|known| *known == route) {
        Some(index) => (SharedString::const_str(ROUTE_LABELS[index]), Some(index)),
        None => (SharedString::from(route.to_owned()), None),
    }
}

/// The index of a method in [`METHOD_LABELS`] (`other` for any unlisted one).
fn method_index(method: &str) -> usize {
    METHOD_LABELS[..OTHER_METHOD]
        .iter()
        .position(|known| *known == method)
        .unwrap_or(OTHER_METHOD)
}

/// Records one finished HTTP request.
fn record_http_request(
    route: &SharedString,
    route_index: Option<usize>,
    method_index: usize,
    status: u16,
    elapsed: Duration,
) {
    let make = || {
        let method = SharedString::const_str(METHOD_LABELS[method_index]);
        let status_label = match STATUS_LABELS.iter().find(|(code, _)| *code == status) {
            Some((_, text)) => SharedString::const_str(text),
            None => SharedString::from(status.to_string()),
        };
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        (
            counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status_label),
            histogram!(HTTP_DURATION, "route" => route.clone(), "method" => method, "status_class" => class),
        )
    };
    let slot = HOT.get().and_then(|hot| {
        let index = http_slot(route_index, method_index, status)?;
        hot.http.get(index)
    });
    let seconds = elapsed.as_secs_f64();
    match slot {
        Some(slot) => {
            let (requests, duration) = slot.get_or_init(make);
            requests.increment(1);
            duration.record(seconds);
        }
        None => {
            let (requests, duration) = make();
            requests.increment(1);
            duration.record(seconds);
        }
    }
}

/// The status recorded for a request whose client went away before the answer (nginx's code).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One HTTP request being served: counted in flight from [`HttpRequestTimer::start`] until
/// [`HttpRequestTimer::finish`] or drop, so a request abandoned mid-way (the client disconnects
/// and hyper drops the request's future, or a panic unwinds through it) never leaks the
/// in-flight gauge and is still counted, as 499 or 500.
#[derive(Debug)]
pub struct HttpRequestTimer {
    route: SharedString,
    route_index: Option<usize>,
    method_index: usize,
    started: std::time::Instant,
    done: bool,
}

impl HttpRequestTimer {
    /// Starts timing a request to `route` (the template, never the raw path).
    pub fn start(route: &str, method: &str) -> HttpRequestTimer {
        http_in_flight(1.0);
        let (route, route_index) = route_label(route);
        HttpRequestTimer {
            route,
            route_index,
            method_index: method_index(method),
            started: std::time::Instant::now(),
            done: false,
        }
    }

    /// Records the request as answered with `status`.
    pub fn finish(mut self, status: u16) {
        self.record(status);
    }

    fn record(&mut self, status: u16) {
        if !self.done {
            self.done = true;
            http_in_flight(-1.0);
            record_http_request(
                &self.route,
                self.route_index,
                self.method_index,
                status,
                self.started.elapsed(),
            );
        }
    }
}

impl Drop for HttpRequestTimer {
    fn drop(&mut self) {
        // Dropped unfinished: cancelled because the client closed the connection, or unwinding
        // from a panic outside the catch-panic layer (a handler's panic is answered 500 inside
        // it and finishes the timer normally).
        let status = if std::thread::panicking() {
            500
        } else {
            CLIENT_CLOSED_REQUEST
        };
        self.record(status);
    }
}

fn describe_http() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration.");
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being served now.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label names the running build."
    );
    crate::auth::metrics::describe();
    crate::serve::metrics::describe();
    crate::api::stream::metrics::describe();
    crate::api::feedback::describe();
}
