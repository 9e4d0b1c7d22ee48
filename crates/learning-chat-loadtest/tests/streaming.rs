//! Streaming mode against a small scripted SSE server (axum on port 0): deltas with pauses,
//! `done`, `error`, pings, a cut connection, a clean end without `done`, a stall, and a 503 before
//! the stream. The recorder's and the report's counts must match the scripts.
//!
//! Times are only checked from below (a pause the script makes is a floor for what the client
//! measures), never from above: the machine is shared and noisy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use learning_chat_loadtest::recorder::Recorder;
use learning_chat_loadtest::stream::{self, AnswerSource, StreamEnd};
use learning_chat_loadtest::Report;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The pause before the first delta of `paced`.
const FIRST_MS: u64 = 200;
/// The pauses between `paced`'s first delta and its `done`.
const REST_MS: u64 = 300 + 100;

enum Step {
    Send(String),
    Sleep(u64),
    /// The connection breaks (hyper aborts it when the body stream fails).
    Cut,
}

fn delta(text: &str) -> Step {
    Step::Send(format!(
        "event: delta\ndata: {}\n\n",
        serde_json::json!({ "text": text })
    ))
}

fn done(cached: bool, extra: serde_json::Value) -> Step {
    let mut fields = serde_json::json!({
        "response": "Two plus two is four.",
        "cached": cached,
        "model": "gemini-2.5-flash",
        "usage": {"prompt_tokens": 10, "output_tokens": 6, "total_tokens": 16},
        "finish_reason": "STOP",
        "latency_ms": 42,
    });
    if let (Some(fields), Some(extra)) = (fields.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    Step::Send(format!("event: done\ndata: {fields}\n\n"))
}

fn script(agent: &str) -> Option<Vec<Step>> {
    Some(match agent {
        "paced" => vec![
            Step::Sleep(FIRST_MS),
            delta("Two"),
            Step::Send(": ping\n\n".into()),
            Step::Sleep(300),
            delta(" plus two"),
            Step::Sleep(100),
            done(false, serde_json::json!({"conversation_id": "conv-1"})),
        ],
        "cached" => vec![delta("Two plus two is four."), done(true, serde_json::json!({}))],
        // The service marks joiners of another learner's stream (if it says so).
        "joined" => vec![
            delta("Two"),
            done(false, serde_json::json!({"coalesced": true})),
        ],
        // An empty answer: `done` is the first token.
        "empty" => vec![Step::Sleep(150), done(false, serde_json::json!({}))],
        "failing" => vec![
            delta("Two"),
            Step::Send(": ping\n\n".into()),
            Step::Send(
                "event: error\ndata: {\"error\":{\"code\":\"upstream_error\",\"message\":\"the model failed mid-answer\"}}\n\n"
                    .into(),
            ),
        ],
        "cut" => vec![delta("Two"), Step::Sleep(50), Step::Cut],
        // The body ends cleanly but without `done`: the learner has no whole answer either.
        "closed" => vec![delta("Two"), Step::Send("event: delta\ndata: {\"te".into())],
        "stall" => vec![delta("Two"), Step::Sleep(30_000)],
        _ => return None,
    })
}

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    /// Requests sent with `"conversation_id": "conv-1"` (follow-ups).
    follow_ups: AtomicU64,
}

async fn stream_endpoint(
    State(seen): State<Arc<Seen>>,
    Path(agent): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    if body["conversation_id"] == "conv-1" {
        seen.follow_ups.fetch_add(1, Ordering::Relaxed);
    }
    if agent == "busy" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(serde_json::json!({"error": {"code": "overloaded", "message": "too many open streams"}})),
        )
            .into_response();
    }
    let Some(steps) = script(&agent) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"code": "agent_not_found", "message": "no such agent"}})),
        )
            .into_response();
    };
    let body = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
        loop {
            match steps.next()? {
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Send(text) => return Some((Ok(Bytes::from(text)), steps)),
                Step::Cut => return Some((Err(std::io::Error::other("cut")), steps)),
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

struct Scripted {
    url: String,
    seen: Arc<Seen>,
}

async fn scripted_server() -> Scripted {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/api/v1/agents/{agent}/stream", post(stream_endpoint))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Scripted {
        url: format!("http://{addr}"),
        seen,
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    learning_chat_testkit::http::client_builder()
        .timeout(timeout)
        .build()
        .unwrap()
}

async fn one(url: &str, agent: &str, timeout: Duration) -> stream::StreamOutcome {
    let request = client(timeout)
        .post(format!("{url}{}", stream::stream_path(agent)))
        .json(&serde_json::json!({"message": "What is 2+2?"}));
    stream::send(request).await
}

fn code(outcome: &stream::StreamOutcome) -> Option<&str> {
    match &outcome.end {
        StreamEnd::Failed { code, .. } => Some(code),
        StreamEnd::Done { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_is_read_as_the_learner_saw_it() {
    let server = scripted_server().await;
    let url = &server.url;
    let t = Duration::from_secs(30);

    let paced = one(url, "paced", t).await;
    assert!(paced.completed(), "{paced:?}");
    assert_eq!((paced.status, paced.deltas, paced.pings), (200, 2, 1));
    let ttft = paced.ttft.unwrap();
    // The first token is the first delta (after its pause), not the end of the answer.
    assert!(ttft >= Duration::from_millis(FIRST_MS), "{paced:?}");
    // Both are measured from the send, so each bounds the server's pauses before it; the gap
    // between the two client-side readings has no such bound (each reading has its own jitter).
    assert!(
        paced.total >= Duration::from_millis(FIRST_MS + REST_MS) && paced.total > ttft,
        "{paced:?}"
    );
    assert_eq!(
        paced.end,
        StreamEnd::Done {
            source: AnswerSource::Fresh,
            conversation_id: Some("conv-1".into())
        }
    );

    let cached = one(url, "cached", t).await;
    assert!(cached.completed() && cached.cached(), "{cached:?}");
    assert_eq!(cached.deltas, 1);
    let joined = one(url, "joined", t).await;
    assert!(matches!(
        joined.end,
        StreamEnd::Done {
            source: AnswerSource::Coalesced,
            ..
        }
    ));

    let empty = one(url, "empty", t).await;
    assert!(empty.completed() && empty.deltas == 0, "{empty:?}");
    assert!(
        empty.ttft.unwrap() >= Duration::from_millis(150),
        "{empty:?}"
    );

    let failing = one(url, "failing", t).await;
    assert_eq!(code(&failing), Some("upstream_error"), "{failing:?}");
    assert_eq!((failing.status, failing.deltas, failing.pings), (200, 1, 1));
    assert!(failing.ttft.is_some());

    for agent in ["cut", "closed"] {
        let o = one(url, agent, t).await;
        assert_eq!(code(&o), Some(stream::codes::STREAM_CUT), "{agent}: {o:?}");
        assert_eq!((o.status, o.deltas), (200, 1), "{agent}: {o:?}");
    }

    // The client gives up long before the 30 s stall ends, and long after the first delta
    // could arrive even on a loaded machine (500 ms was not always enough for that delta).
    let stalled = one(url, "stall", Duration::from_secs(5)).await;
    assert_eq!(code(&stalled), Some(stream::codes::TIMEOUT), "{stalled:?}");
    assert_eq!(stalled.deltas, 1);

    let busy = one(url, "busy", t).await;
    assert_eq!(busy.status, 503);
    assert_eq!(code(&busy), Some("overloaded"));
    assert!(busy.ttft.is_none());
    assert!(matches!(
        busy.end,
        StreamEnd::Failed {
            mid_stream: false,
            ..
        }
    ));

    let unknown = one(url, "nobody", t).await;
    assert_eq!(
        (unknown.status, code(&unknown)),
        (404, Some("agent_not_found"))
    );

    // Nothing listens on port 1 of loopback.
    let nothing = one("http://127.0.0.1:1", "paced", t).await;
    assert_eq!(
        (nothing.status, code(&nothing)),
        (0, Some(stream::codes::NO_RESPONSE))
    );

    // The recorder and the report add them up.
    let recorder = Recorder::new();
    for o in [
        &paced, &cached, &joined, &empty, &failing, &stalled, &busy, &unknown, &nothing,
    ] {
        recorder.record_stream(o);
    }
    let report = Report::from_snapshot("test", "scripted".into(), &recorder.snapshot());
    assert_eq!((report.requests, report.ok, report.cached), (9, 4, 1));
    assert_eq!(report.failures, 5);
    assert_eq!(report.failures_by_status["503"], 1);
    assert_eq!(report.failures_by_status["404"], 1);
    assert_eq!(report.failures_by_status["0"], 1);
    // `failing` and `stalled` had a 200; their failures are the stream's.
    assert_eq!(report.failures_by_status["stream"], 2);
    assert_eq!(
        report.failures_by_status.values().sum::<u64>(),
        report.failures
    );
    let s = report.stream.clone().unwrap();
    assert_eq!((s.streams, s.completed, s.mid_stream_errors), (9, 4, 2));
    assert_eq!(s.by_source["cached"].completed, 1);
    assert_eq!(s.by_source["coalesced"].completed, 1);
    assert_eq!(s.by_source["fresh"].completed, 2);
    assert_eq!(s.errors_by_code["upstream_error"], 1);
    assert_eq!(s.errors_by_code["timeout"], 1);
    assert_eq!(s.errors_by_code["overloaded"], 1);
    assert_eq!(s.errors_by_code["agent_not_found"], 1);
    assert_eq!(s.errors_by_code["no_response"], 1);
    assert_eq!((s.deltas, s.pings), (2 + 1 + 1 + 1 + 1, 2));
    // The fresh answers are `paced` and `empty`: their first tokens came after 150 ms at least.
    assert!(s.by_source["fresh"].ttft_ms.p50 >= 150.0, "{s:?}");
    assert!(s.total_ms.max >= (FIRST_MS + REST_MS) as f64, "{s:?}");
    assert!(s.ttft_ms.p50 <= s.ttft_ms.p99 && s.ttft_ms.p99 <= s.ttft_ms.max);
    let text = report.to_text();
    for needle in [
        "ttft (ms):",
        "upstream_error: 1",
        "cached      1 completed",
        "failed mid-stream: 2",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);
}

/// Runs the real binary with `args` plus `--summary-json`; returns its report.
async fn loadtest(args: &[&str]) -> Report {
    let dir = std::env::temp_dir().join(format!(
        "loadtest-streaming-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let summary = dir.join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_learning-chat-loadtest"))
        .args(args)
        .arg("--summary-json")
        .arg(&summary)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ttft (ms):"), "{stdout}");
    let report = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generator_streams() {
    let server = scripted_server().await;
    let url = server.url.as_str();

    // burst: 6 learners at once on a paced stream.
    let report = loadtest(&[
        "burst", "--stream", "--url", url, "--agent", "paced", "--count", "6", "--mode", "fixed",
    ])
    .await;
    let s = report.stream.clone().unwrap();
    assert_eq!(
        (report.requests, report.ok, s.completed),
        (6, 6, 6),
        "{report:?}"
    );
    assert_eq!((s.deltas, s.pings), (12, 6));
    assert!(s.ttft_ms.p50 >= FIRST_MS as f64, "{s:?}");
    assert!(s.total_ms.p50 >= (FIRST_MS + REST_MS) as f64, "{s:?}");
    // The report's latency of a stream is its total time.
    assert!(report.latency_ms.p50 >= s.ttft_ms.p50);

    // burst: a 503 before every stream.
    let report = loadtest(&[
        "burst", "--stream", "--url", url, "--agent", "busy", "--count", "4",
    ])
    .await;
    assert_eq!((report.ok, report.failures), (0, 4));
    assert_eq!(report.failures_by_status["503"], 4);
    assert_eq!(report.stream.unwrap().errors_by_code["overloaded"], 4);

    // open-loop: cut streams are failures even with a 200.
    let report = loadtest(&[
        "open-loop",
        "--stream",
        "--url",
        url,
        "--agent",
        "cut",
        "--rate",
        "10",
        "--duration",
        "0.5",
        "--progress-every",
        "0",
    ])
    .await;
    let s = report.stream.clone().unwrap();
    assert_eq!((report.requests, report.ok, report.failures), (5, 0, 5));
    assert_eq!(report.failures_by_status["stream"], 5, "{report:?}");
    assert_eq!(
        (s.errors_by_code["stream_cut"], s.mid_stream_errors),
        (5, 5)
    );

    // goose: 2 learners, conversations of 2 questions: each follow-up carries the
    // conversation_id of the first answer's `done`.
    let before = server.seen.follow_ups.load(Ordering::Relaxed);
    let report = loadtest(&[
        "--stream",
        "--host",
        url,
        "--agents",
        "paced",
        "--users",
        "2",
        "--increase-rate",
        "2",
        "--iterations",
        "2",
        "--wait",
        "0",
        "--conversation",
        "2",
        "--progress-every",
        "0",
        "--no-print-metrics",
    ])
    .await;
    let s = report.stream.clone().unwrap();
    assert_eq!(
        (report.requests, report.ok, s.completed),
        (4, 4, 4),
        "{report:?}"
    );
    assert_eq!(s.by_source["fresh"].completed, 4);
    assert!(s.ttft_ms.p50 >= FIRST_MS as f64, "{s:?}");
    assert_eq!(report.extra["follow_ups_ok"], 2.0, "{report:?}");
    assert_eq!(server.seen.follow_ups.load(Ordering::Relaxed) - before, 2);

    // Streaming makes no sense against Gemini itself.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_learning-chat-loadtest"))
        .args(["burst", "--stream", "--target", "gemini", "--url", url])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--stream needs --target service"));
}
