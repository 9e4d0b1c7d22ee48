//! HTTP/2 against the real service on port 0: h2c with prior knowledge next to HTTP/1.1 on the
//! plain port, many streams on one connection (coalescing still one model call), the bounds and
//! the drain on an HTTP/2 connection. (TLS, with ALPN `h2`, is in tls.rs; it shares the client
//! helpers here.)

use crate::support::{offline_settings, settings_for, spawn_app, start_sim, TestApp};
use axum::body::Bytes;
use futures::future::join_all;
use gemini_sim::SimConfig;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::num::NonZero;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Hang guard only; nothing here is timed.
pub const GUARD: Duration = Duration::from_secs(30);

pub fn chat_body(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

pub fn chat_request(message: &str) -> Request<Full<Bytes>> {
    Request::post("http://test/api/v1/agents/math")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(message))))
        .expect("request")
}

pub fn get_request(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://test{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// An HTTP/2 client connection over `io`; the task driving it ends when the connection does.
pub async fn h2_handshake<I>(io: I) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    // Pings from the client: bytes between streams, which must not count as a request head.
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true);
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

/// h2c with prior knowledge: one TCP connection, HTTP/2 from the first byte.
pub async fn h2c(app: &TestApp) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(app.addr).await.expect("connects");
    h2_handshake(tcp).await
}

/// Sends `request` on an HTTP/2 connection; status, version and body.
pub async fn send(
    sender: &SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, Version, String) {
    let mut sender = sender.clone();
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("hang guard")
        .expect("response");
    let status = response.status();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

pub fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl` POSTing a chat message; the body, then `status version` on the last line.
pub fn curl_chat(url: &str, extra: &[&str], message: &str) -> (u16, String, String) {
    let body = chat_body(message);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        "-w",
        "\n%{http_code} %{http_version}",
        url,
    ]);
    let (out, _) = curl(&args);
    let (body, last) = out.rsplit_once('\n').expect("status line");
    let (status, version) = last.split_once(' ').expect("status and version");
    (
        status.parse().expect("status"),
        version.to_owned(),
        body.to_owned(),
    )
}

pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| {
            let (n, v) = line.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_prior_knowledge_speaks_h2c_and_http1_still_works_on_the_same_port() {
    let app = spawn_app(offline_settings()).await;
    let url = app.url("/api/v1/agents/math");
    let (status, version, body) = tokio::task::spawn_blocking(move || {
        curl_chat(
            &url,
            &["--http2-prior-knowledge"],
            "What is a prime number?",
        )
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("\"response\""), "{body}");

    let url = app.url("/api/v1/agents/math");
    let (status, version, _) = tokio::task::spawn_blocking(move || {
        curl_chat(&url, &["--http1.1"], "What is a prime number?")
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "1.1"));
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection_are_each_answered_and_identical_questions_cost_one_call() {
    let sim = start_sim(SimConfig {
        // Long enough that every stream is open while the model answers.
        latency: crate::support::fixed_latency(800),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.server.http2_max_concurrent_streams = NonZero::new(256).unwrap();
    let app = spawn_app(settings).await;
    let (sender, _driver) = h2c(&app).await;

    const SAME: usize = 192;
    const DISTINCT: usize = 8;
    let mut requests = Vec::new();
    for _ in 0..SAME {
        requests.push(send(&sender, chat_request("Why is the sky blue?")));
    }
    for i in 0..DISTINCT {
        requests.push(send(
            &sender,
            chat_request(&format!("What is {i} times {i}, and why?")),
        ));
    }
    let answers = join_all(requests).await;
    for (status, version, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(*version, Version::HTTP_2);
    }
    assert_eq!(answers.len(), SAME + DISTINCT);
    assert_eq!(
        sim.stats().requests,
        (1 + DISTINCT) as u64,
        "one model call per distinct question"
    );
    // All of it over the one connection (the /metrics request below goes to the metrics
    // listener, which is not counted).
    assert_eq!(
        metric(&app, "learning_chat_http_connections_total").await,
        1.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_is_closed_by_the_idle_bound_but_not_by_the_header_bound_between_streams()
{
    let mut settings = offline_settings();
    // Pings every 100 ms arrive between streams: under HTTP/1.1 rules they would start a
    // request head and the connection would be cut at the header bound.
    settings.server.header_read_timeout = Duration::from_millis(300);
    settings.server.keep_alive_idle_timeout = Duration::from_secs(8);
    let app = spawn_app(settings).await;
    let (sender, driver) = h2c(&app).await;
    let (status, _, _) = send(&sender, get_request("/health")).await;
    assert_eq!(status, StatusCode::OK);
    // Several header bounds, well within the idle bound.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, _, _) = send(&sender, get_request("/health")).await;
    assert_eq!(status, StatusCode::OK, "the connection survived its pings");
    // Idle: the server sends GOAWAY and closes, the client's driver ends.
    tokio::time::timeout(GUARD, driver)
        .await
        .expect("closed by the idle bound")
        .expect("driver");
    assert!(
        metric(
            &app,
            "learning_chat_http_connection_timeouts_total{phase=\"idle\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &app,
            "learning_chat_http_connection_timeouts_total{phase=\"header\"}"
        )
        .await,
        0.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_lets_streams_in_flight_finish_then_closes_the_h2_connection() {
    let sim = start_sim(SimConfig {
        latency: crate::support::fixed_latency(1_000),
        ..SimConfig::default()
    })
    .await;
    let mut app = spawn_app(settings_for(&sim)).await;
    let (sender, driver) = h2c(&app).await;
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let sender = sender.clone();
            tokio::spawn(async move { send(&sender, chat_request(&format!("Drain {i}?"))).await })
        })
        .collect();
    // Every stream has reached the model before the drain begins.
    let until = Instant::now() + GUARD;
    while sim.stats().requests < 4 {
        assert!(Instant::now() < until, "requests never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.signal_stop();
    for request in in_flight {
        let (status, _, body) = request.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    tokio::time::timeout(GUARD, driver)
        .await
        .expect("GOAWAY, then closed")
        .expect("driver");
    tokio::time::timeout(GUARD, app.handle)
        .await
        .expect("the server exits")
        .expect("server task")
        .expect("server result");
}
