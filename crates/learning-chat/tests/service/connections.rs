//! Client connections: what a slow, silent or idle client can hold, the connection bound, the
//! drain's `Connection: close`, and how load shedding is logged. Raw TCP against the real
//! service on port 0, so the tests see exactly the bytes (and the closes) a client sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::logs::capture_logs;
use crate::support::{
    fixed_latency, offline_settings, settings_for, spawn_app, start_sim, TestApp,
};
use futures::future::join_all;
use gemini_sim::SimConfig;
use reqwest::StatusCode;
use std::num::NonZero;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hang guard only: every bound under test is a few hundred milliseconds.
const GUARD: Duration = Duration::from_secs(10);

/// A response as read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connects")
}

async fn send(stream: &mut TcpStream, bytes: &str) {
    stream.write_all(bytes.as_bytes()).await.expect("writes");
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn post_chat(message: &str) -> String {
    let body = serde_json::json!({ "message": message }).to_string();
    format!(
        "POST /api/v1/agents/math HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response (the service's all carry Content-Length); `None` if the connection
/// closed before a whole one arrived.
async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Reads a response, failing the test if none arrives within the guard.
async fn expect_response(stream: &mut TcpStream, what: &str) -> RawResponse {
    tokio::time::timeout(GUARD, read_response(stream))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {GUARD:?}"))
        .unwrap_or_else(|| panic!("{what}: connection closed without an answer"))
}

/// Waits for the server to close the connection: true on EOF or reset, false if it is still
/// open when the guard runs out. Any bytes the server sends first are ignored.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let until_closed = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(GUARD, until_closed).await.is_ok()
}

/// The value of one series in a scrape (0 when absent).
fn metric_value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test]
async fn a_stalled_body_gets_408_request_timeout_as_json() {
    let mut settings = offline_settings();
    settings.server.body_read_timeout = Duration::from_millis(300);
    let app = spawn_app(settings).await;
    let mut stream = connect(&app).await;
    // Headers promise 100 bytes; 12 arrive, then nothing.
    send(
        &mut stream,
        "POST /api/v1/agents/math HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"message\":",
    )
    .await;
    let response = expect_response(&mut stream, "stalled body").await;
    assert_eq!(response.status, 408, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(response.closes(), "{response:?}");
    assert!(closed_by_server(&mut stream).await);
    let metrics = metrics_text(&app).await;
    let series = "learning_chat_http_connection_timeouts_total{phase=\"body\"}";
    assert!(metric_value(&metrics, series) >= 1.0, "{metrics}");
    // A body that does arrive in time is served as before.
    let mut stream = connect(&app).await;
    send(&mut stream, &post_chat("What is 2+2?")).await;
    assert_eq!(expect_response(&mut stream, "whole body").await.status, 200);
}

#[tokio::test]
async fn partial_headers_and_silent_connections_are_disconnected() {
    let mut settings = offline_settings();
    settings.server.header_read_timeout = Duration::from_millis(300);
    let app = spawn_app(settings).await;
    let mut partial = connect(&app).await;
    send(&mut partial, "GET /health HTTP/1.1\r\nHost: test\r\n").await;
    let mut silent = connect(&app).await;
    assert!(
        closed_by_server(&mut partial).await,
        "partial headers held open for {GUARD:?}"
    );
    assert!(
        closed_by_server(&mut silent).await,
        "a connection that sent nothing held open for {GUARD:?}"
    );
    let metrics = metrics_text(&app).await;
    let series = "learning_chat_http_connection_timeouts_total{phase=\"header\"}";
    assert!(metric_value(&metrics, series) >= 1.0, "{metrics}");
    // Whole headers sent at once are unaffected.
    let mut stream = connect(&app).await;
    send(&mut stream, &get("/health")).await;
    assert_eq!(expect_response(&mut stream, "health").await.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_answer_is_not() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(800),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.server.keep_alive_idle_timeout = Duration::from_millis(300);
    // Far above the guard: only the idle bound can close this connection.
    settings.server.header_read_timeout = Duration::from_secs(60);
    let app = spawn_app(settings).await;
    let mut stream = connect(&app).await;
    // An answer slower than the idle bound is not cut: the connection is busy, not idle.
    send(&mut stream, &post_chat("a slow question")).await;
    let answer = expect_response(&mut stream, "slow answer").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!answer.closes(), "{answer:?}");
    // Kept alive for the next request...
    send(&mut stream, &get("/health")).await;
    assert_eq!(expect_response(&mut stream, "health").await.status, 200);
    // ... and closed once idle past the bound.
    assert!(
        closed_by_server(&mut stream).await,
        "idle keep-alive connection held open for {GUARD:?}"
    );
    let metrics = metrics_text(&app).await;
    let series = "learning_chat_http_connection_timeouts_total{phase=\"idle\"}";
    assert!(metric_value(&metrics, series) >= 1.0, "{metrics}");
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let mut settings = offline_settings();
    settings.server.max_connections = NonZero::new(2).unwrap();
    let app = spawn_app(settings).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for stream in [&mut first, &mut second] {
        send(stream, &get("/health")).await;
        assert_eq!(
            expect_response(stream, "within the bound").await.status,
            200
        );
    }
    // The kernel completes the handshake (backlog), but the service does not take it on.
    let mut third = connect(&app).await;
    send(&mut third, &get("/health")).await;
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "a connection beyond max_connections was served: {early:?}"
    );
    drop(first);
    let response = expect_response(&mut third, "after a connection closed").await;
    assert_eq!(response.status, 200);
    // Room for the scrape below.
    drop(second);
    drop(third);
    let metrics = metrics_text(&app).await;
    assert!(
        metric_value(&metrics, "learning_chat_http_connection_limit_waits_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "learning_chat_http_connections_limit"),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn while_draining_a_keep_alive_connection_is_answered_with_connection_close() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(800),
        ..SimConfig::default()
    })
    .await;
    let mut app = spawn_app(settings_for(&sim)).await;
    let mut stream = connect(&app).await;
    send(&mut stream, &get("/health")).await;
    let before = expect_response(&mut stream, "before the drain").await;
    assert_eq!(before.status, 200);
    assert!(!before.closes(), "{before:?}");
    // A request in flight on the kept-alive connection when the drain begins.
    send(&mut stream, &post_chat("asked just before SIGTERM")).await;
    let started = Instant::now();
    while sim.stats().in_flight < 1 {
        assert!(
            started.elapsed() < GUARD,
            "the request never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.signal_stop();
    let during = expect_response(&mut stream, "during the drain").await;
    assert_eq!(during.status, 200, "{during:?}");
    assert!(
        during.closes(),
        "no Connection: close while draining: {during:?}"
    );
    assert!(closed_by_server(&mut stream).await);
    let stopped = tokio::time::timeout(GUARD, app.handle).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test]
async fn shed_requests_are_logged_at_most_once_a_second_with_a_count() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    // One model call a minute: every other distinct question is shed at once.
    settings.upstream.rpm = 1;
    settings.server.request_timeout = Duration::from_secs(2);
    let captured = capture_logs(&settings);
    let app = spawn_app(settings).await;
    let started = Instant::now();
    let mut shed = 0usize;
    // Five bursts over about two seconds, so the limit is seen across several seconds.
    for wave in 0..5 {
        if wave > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let replies =
            join_all((0..60).map(|i| app.ask("math", format!("overload question {wave}-{i}"))))
                .await;
        shed += replies
            .iter()
            .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
            .count();
    }
    assert!(shed >= 250, "only {shed} of 300 were shed");
    // Let a line carrying the last burst's count be due.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    if app.ask("math", "one more, to log the tail").await.status()
        == StatusCode::SERVICE_UNAVAILABLE
    {
        shed += 1;
    }
    let seconds = started.elapsed().as_secs() as usize;
    let lines = captured.lines();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert!(
        failed.is_empty(),
        "shedding logged as failures: {} lines, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let shed_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("requests shed with 503"))
        .collect();
    assert!(!shed_lines.is_empty(), "shedding never logged");
    // One line a second at most (+1: the first line of a burst is not delayed).
    assert!(
        shed_lines.len() <= seconds + 1,
        "{} shed lines in {seconds} s: {shed_lines:#?}",
        shed_lines.len()
    );
    assert!(
        shed_lines.iter().all(|l| l.contains("WARN")),
        "{shed_lines:#?}"
    );
    let logged: usize = shed_lines
        .iter()
        .filter_map(|l| l.split("shed=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(
        (1..=shed).contains(&logged),
        "lines count {logged} sheds of {shed}"
    );
}

/// Settings with a `long` agent answering 8 MB (more than the kernel's send buffer can ever
/// hold: 4 MB at most by default), a 300 ms send stall bound, and the idle and header bounds
/// far above the guard, so only the stall bound can close a connection. The agents file lives
/// in `dir`.
pub(super) fn long_answer_settings(
    mut settings: learning_chat::config::Settings,
    dir: &std::path::Path,
) -> learning_chat::config::Settings {
    let agents = dir.join("agents.toml");
    std::fs::write(
        &agents,
        "[[agents]]\nid='long'\nname='Long'\ndescription='long answers'\n\
         model='gemini-2.5-flash'\nsystem_prompt='Say it all.'\nmax_output_tokens=3000000\n",
    )
    .unwrap();
    settings.agents.path = Some(agents);
    settings.offline.answer_tokens = 2_000_000;
    settings.server.send_stall_timeout = Duration::from_millis(300);
    settings.server.keep_alive_idle_timeout = Duration::from_secs(600);
    settings.server.header_read_timeout = Duration::from_secs(600);
    settings
}

/// A socket with a small receive window, so the kernel's buffers cannot take a whole long
/// answer either.
pub(super) async fn small_window_connection(app: &TestApp) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// Asks the `long` agent over `stream`, reads the answer's first bytes, then nothing for 3 s,
/// and asserts that the server closed the connection before the whole answer went out.
pub(super) async fn ask_long_then_read_nothing<S>(stream: &mut S, host: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let body = r#"{"message":"Explain fractions at length"}"#;
    let question = format!(
        "POST /api/v1/agents/long HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(question.as_bytes()).await.expect("writes");
    // The answer's first bytes: the server has made it (seconds of work for a debug build on
    // a busy machine) and is sending it.
    let mut received = vec![0u8; 1024];
    let first = tokio::time::timeout(GUARD * 3, stream.read(&mut received))
        .await
        .expect("no answer")
        .unwrap();
    received.truncate(first);
    // Then nothing read for well past the bound (seen at 1.5 × at the latest).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = tokio::time::timeout(GUARD, async {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "a client reading nothing was held open past {GUARD:?} ({} bytes read, then none)",
        received.len()
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        received.len() < 8_000_000,
        "the whole answer went out ({} bytes): the test did not stall the socket",
        received.len()
    );
}

/// A client that asks a question whose answer (8 MB) cannot all go out, then reads nothing.
/// hyper takes such an answer whole into its buffer, so no response body is left to wait on:
/// until the socket itself was watched, the connection was held until the idle bound (75 s by
/// default) rather than `server.send_stall_timeout_ms`.
#[tokio::test]
async fn a_client_that_reads_nothing_of_a_large_answer_is_closed_at_the_send_stall_bound() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(long_answer_settings(offline_settings(), dir.path())).await;
    let mut stream = small_window_connection(&app).await;
    ask_long_then_read_nothing(&mut stream, "test").await;
    let metrics = metrics_text(&app).await;
    let series = "learning_chat_http_stalled_connections_closed_total";
    assert!(metric_value(&metrics, series) >= 1.0, "{metrics}");
}
