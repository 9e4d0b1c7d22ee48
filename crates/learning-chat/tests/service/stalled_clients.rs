//! Clients that never take the data they asked for: an HTTP/2 peer announcing
//! `SETTINGS_INITIAL_WINDOW_SIZE = 0` and never sending a `WINDOW_UPDATE` gets the response
//! headers of every stream it opens and not one byte of a body. Against the real binary (the
//! testkit's `learning-chat serve` on a free port), such a peer must not keep other learners
//! from a stream slot nor `/health` from answering once `server.send_stall_timeout_ms` passes,
//! and the slots it held must be free again.

use axum::body::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use learning_chat_testkit::process::{server_command, spawn_server, Proc};
use learning_chat_testkit::prom;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Hang guard only: how long a test waits for something that must happen before failing.
const GUARD: Duration = Duration::from_secs(40);

/// The stall bound the tests run with (the default is 10 s).
const STALL_MS: &str = "2000";

/// The server binary with the offline model (no latency) and these settings.
fn start_server(env: &[(&str, &str)]) -> Proc {
    let (mut command, port) = server_command();
    command
        .env("LEARNING_CHAT_OFFLINE__LATENCY_MS", "0")
        // Nothing here is stored: no records file shared with other tests.
        .env("LEARNING_CHAT_DATABASE__URL", "none")
        .env("LEARNING_CHAT_SERVER__SEND_STALL_TIMEOUT_MS", STALL_MS)
        .envs(env.iter().copied());
    spawn_server(command, port)
}

/// An HTTP/2 connection (h2c, prior knowledge) whose peer never opens a stream's flow-control
/// window: every response body it is sent stays unsent. The task ends when the connection does.
async fn stalling_connection(port: u16) -> (SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(0);
    let (sender, connection) = builder
        .handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

fn chat(path: &str, message: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({ "message": message }).to_string();
    Request::post(format!("http://test{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// Opens one stream and returns its response (headers only: the body is never read, and with a
/// zero window it could not arrive anyway).
async fn open_stalled(
    sender: &SendRequest<Full<Bytes>>,
    path: &str,
    message: &str,
) -> Response<hyper::body::Incoming> {
    let mut sender = sender.clone();
    tokio::time::timeout(GUARD, async {
        sender.ready().await.expect("connection ready");
        sender.send_request(chat(path, message)).await
    })
    .await
    .expect("hang guard")
    .expect("response headers")
}

fn value(scrape: &prom::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

async fn ended_within(driver: JoinHandle<()>, within: Duration) -> bool {
    tokio::time::timeout(within, driver).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_opens_its_window_cannot_keep_other_learners_from_a_stream() {
    let server = start_server(&[("LEARNING_CHAT_STREAM__MAX_OPEN", "4")]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let client = learning_chat_testkit::http::client_builder()
        .timeout(GUARD)
        .build()
        .unwrap();

    // Every slot of stream.max_open taken by streams whose bodies can never be sent.
    let (stalled, driver) = stalling_connection(server.port).await;
    let mut held = Vec::new();
    for n in 0..4 {
        let response = open_stalled(
            &stalled,
            "/api/v1/agents/math/stream",
            &format!("stalled question {n}"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let legit = || {
        client
            .post(format!("{base}/api/v1/agents/math/stream"))
            .json(&serde_json::json!({ "message": "What is 2+2?" }))
            .send()
    };
    // The attack works: right now another learner is refused.
    let refused = legit().await.expect("the server answers");
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");

    // Once the stall bound passes, the stalled streams are dropped and a learner streams.
    let until = Instant::now() + GUARD;
    let answer = loop {
        let response = legit().await.expect("the server answers");
        if response.status() == reqwest::StatusCode::OK {
            break response.text().await.expect("the whole stream");
        }
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "only refused while the slots are held"
        );
        assert!(
            Instant::now() < until,
            "the stalled peer kept every stream slot for {GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answer.contains("event: done"), "{answer}");

    // The peer that stalled every stream it opened lost its connection (a GOAWAY, then closed).
    assert!(
        ended_within(driver, GUARD).await,
        "the stalled connection is still open"
    );
    drop(held);
    let scrape = prom::scrape_until(
        &client,
        &server.metrics_base(),
        GUARD,
        "no stream open",
        |s| value(s, "learning_chat_streams_open") == 0.0,
    )
    .await;
    assert!(value(&scrape, "learning_chat_http_stalled_responses_total") >= 4.0);
    assert!(
        value(
            &scrape,
            "learning_chat_http_stalled_connections_closed_total"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peers_holding_every_connection_do_not_keep_health_from_answering() {
    let server = start_server(&[("LEARNING_CHAT_SERVER__MAX_CONNECTIONS", "4")]);
    let base = format!("http://127.0.0.1:{}", server.port);

    // server.max_connections connections, each with a few JSON answers it never takes.
    let mut peers = Vec::new();
    for c in 0..4 {
        let (sender, driver) = stalling_connection(server.port).await;
        let mut held = Vec::new();
        for n in 0..3 {
            let response =
                open_stalled(&sender, "/api/v1/agents/math", &format!("question {c}.{n}")).await;
            assert_eq!(response.status(), StatusCode::OK);
            held.push(response);
        }
        peers.push((sender, driver, held));
    }

    // A new connection waits in the accept backlog until the stalled ones are closed; it must
    // then be served.
    let client = learning_chat_testkit::http::client_builder()
        .timeout(GUARD)
        .build()
        .unwrap();
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("/health answers while stalled peers hold every connection");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    for (_, driver, _) in peers {
        assert!(
            ended_within(driver, GUARD).await,
            "a stalled connection is still open"
        );
    }
    let scrape = prom::scrape(&client, &server.metrics_base()).await;
    assert!(value(&scrape, "learning_chat_http_stalled_responses_total") >= 12.0);
    assert!(
        value(
            &scrape,
            "learning_chat_http_stalled_connections_closed_total"
        ) >= 4.0
    );
}
