//! End to end: the service on port 0 against the Gemini simulator on port 0, over real HTTP,
//! asserting what the simulator saw (its /stats) as well as what the learner got.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use super::metrics::scrape_app;
use crate::support::prom::{delta, Scrape};
use crate::support::{
    fixed_latency, settings_for, spawn_app, start_sim, start_sim_with_latency, TestApp,
};
use futures::future::join_all;
use gemini_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::Value;
use std::num::NonZero;
use std::time::{Duration, Instant};

/// Retries the app scheduled since `before` (each is counted before its wait).
async fn retries_since(app: &TestApp, before: &Scrape) -> f64 {
    let after = scrape_app(app).await;
    delta(before, &after, "learning_chat_upstream_retries_total", &[])
}

#[tokio::test]
async fn a_repeated_question_makes_one_upstream_call() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    let first: Value = app.ask("math", "What is 2+2?").await.json().await.unwrap();
    let second: Value = app.ask("math", "What is 2+2?").await.json().await.unwrap();
    assert_eq!(first["cached"], false);
    assert_eq!(second["cached"], true);
    assert_eq!(first["response"], second["response"]);
    assert!(
        first["model"].as_str().unwrap().starts_with("gemini"),
        "{first}"
    );
    assert_eq!(sim.stats().requests, 1);
    // Another agent is another question.
    let other = app.ask("science", "What is 2+2?").await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn fifty_identical_concurrent_questions_make_one_upstream_call() {
    let sim = start_sim_with_latency(400).await;
    let app = spawn_app(settings_for(&sim)).await;
    let replies = join_all((0..50).map(|_| app.ask("history", "Who built the pyramids?"))).await;
    let mut texts = Vec::new();
    for reply in replies {
        assert_eq!(reply.status(), StatusCode::OK);
        let body: Value = reply.json().await.unwrap();
        texts.push(body["response"].as_str().unwrap().to_owned());
    }
    assert!(texts.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn when_the_shared_call_fails_every_waiter_gets_the_error() {
    let mut config = SimConfig::default();
    config.latency = fixed_latency(200);
    config.faults.error_500 = 1.0;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 1;
    let app = spawn_app(settings).await;
    let replies = join_all((0..20).map(|_| app.ask("math", "Is zero even?"))).await;
    // The shared call's own error, not a timeout: no waiter sat out its deadline.
    for reply in replies {
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_unavailable");
    }
    // One shared call, retried once.
    assert_eq!(sim.stats().requests, 2);
    // Failures are not cached: asking again goes upstream again.
    sim.update_config(|c| c.faults.error_500 = 0.0);
    assert_eq!(
        app.ask("math", "Is zero even?").await.status(),
        StatusCode::OK
    );
    assert_eq!(sim.stats().requests, 3);
}

#[tokio::test]
async fn past_the_semaphore_and_queue_requests_get_503_and_upstream_never_sees_more() {
    let sim = start_sim_with_latency(600).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_concurrency = NonZero::new(5).unwrap();
    settings.upstream.max_queue = 10;
    settings.upstream.max_queue_wait = Duration::from_secs(10);
    let app = spawn_app(settings).await;
    let replies = join_all((0..40).map(|i| app.ask("math", format!("Question number {i}")))).await;
    let mut ok = 0;
    let mut shed = 0;
    for reply in replies {
        match reply.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after = reply.headers()["retry-after"].to_str().unwrap().to_owned();
                assert!(retry_after.parse::<u64>().unwrap() >= 1);
                let body: Value = reply.json().await.unwrap();
                assert_eq!(body["error"]["code"], "overloaded");
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // 5 in flight + 10 queued are served; the other 25 are refused at once.
    assert_eq!(ok, 15, "shed = {shed}");
    assert_eq!(shed, 25);
    let stats = sim.stats();
    assert_eq!(stats.requests, 15);
    assert_eq!(stats.in_flight_peak, 5);
}

#[tokio::test]
async fn a_queued_question_waits_at_most_the_queue_limit() {
    let sim = start_sim_with_latency(3_000).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_concurrency = NonZero::new(1).unwrap();
    settings.upstream.max_queue = 5;
    settings.upstream.max_queue_wait = Duration::from_millis(300);
    let app = spawn_app(settings).await;
    let (first, second) = tokio::join!(app.ask("math", "slow one"), async {
        // Queued behind the slow one only once it holds the one slot (the guard bounds a hang).
        let guard = Instant::now() + Duration::from_secs(30);
        while sim.stats().in_flight < 1 {
            assert!(
                Instant::now() < guard,
                "the slow one never reached the model"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reply = app.ask("math", "queued one").await;
        // Refused while the slow one still holds the slot: it did not wait for the slot.
        (reply, sim.stats().in_flight)
    });
    assert_eq!(first.status(), StatusCode::OK);
    let (second, in_flight_when_refused) = second;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(in_flight_when_refused, 1);
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn a_slow_upstream_gives_504_at_the_deadline() {
    let sim = start_sim_with_latency(10_000).await;
    let mut settings = settings_for(&sim);
    settings.server.request_timeout = Duration::from_secs(1);
    let app = spawn_app(settings).await;
    let started = Instant::now();
    let reply = app.ask("math", "Take your time").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = reply.json().await.unwrap();
    assert!(
        body["error"]["code"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    // At the deadline, not before (a lower bound holds however loaded the machine is); not
    // after either: waiting for the model's 10 s answer would have made it a 200.
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}

#[tokio::test]
async fn overloaded_upstream_is_retried_and_recovers() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 3;
    let app = spawn_app(settings).await;
    sim.update_config(|c| c.faults.error_503 = 1.0);
    let asking = app.spawn_ask("science", "What is DNA?");
    // Let the first attempt fail, then heal the upstream while the service backs off.
    while sim.stats().requests < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.update_config(|c| c.faults.error_503 = 0.0);
    let reply = asking.await.unwrap().unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let stats = sim.stats();
    assert!(stats.faults.error_503 >= 1);
    assert_eq!(stats.ok, 1);
}

#[tokio::test]
async fn a_daily_quota_429_fails_at_once_without_retries() {
    let mut config = SimConfig::default();
    config.quota.rpd = 1;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 3;
    let app = spawn_app(settings).await;
    assert_eq!(app.ask("math", "first").await.status(), StatusCode::OK);
    let before = scrape_app(&app).await;
    let reply = app.ask("math", "second").await;
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers().contains_key("retry-after"));
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_quota");
    // At once: the only wait after a failed call is a retry's, and no retry was scheduled.
    assert_eq!(retries_since(&app, &before).await, 0.0);
    let stats = sim.stats();
    assert_eq!(stats.requests, 2, "no retry after a per-day 429");
    assert_eq!(stats.rate_limited, 1);
}

#[tokio::test]
async fn a_blocked_prompt_or_filtered_answer_is_422_with_the_reason_and_not_cached() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    // Remembered refusals are their own test (reliability.rs); here every ask goes upstream.
    settings.cache.refusal_ttl = Duration::ZERO;
    let app = spawn_app(settings).await;
    // The prompt blocked (promptFeedback), then the answer filtered (finishReason SAFETY).
    for (message, reason) in [
        ("Tell me something [[block]]", "PROHIBITED_CONTENT"),
        ("Write something [[unsafe]]", "SAFETY"),
    ] {
        for _ in 0..2 {
            let reply = app.ask("history", message).await;
            assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let body: Value = reply.json().await.unwrap();
            assert_eq!(body["error"]["code"], "blocked");
            assert!(body["error"]["message"].as_str().unwrap().contains(reason));
        }
    }
    assert_eq!(sim.stats().requests, 4);
}

#[tokio::test]
async fn a_truncated_answer_is_returned_but_not_cached() {
    let mut config = SimConfig::default();
    config.answer_tokens = 400;
    let sim = start_sim(config).await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        "[[agents]]\nid='brief'\nname='Brief'\ndescription='short answers'\nmodel='gemini-2.5-flash'\nsystem_prompt='Be brief.'\nmax_output_tokens=16\n",
    )
    .unwrap();
    let mut settings = settings_for(&sim);
    settings.agents.path = Some(agents);
    let app = spawn_app(settings).await;
    for _ in 0..2 {
        let body: Value = app
            .ask("brief", "Explain everything")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["finish_reason"], "MAX_TOKENS", "{body}");
        assert_eq!(body["cached"], false);
        assert_eq!(body["usage"]["output_tokens"], 16);
    }
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn a_rejected_api_key_is_a_502_that_leaks_nothing() {
    let mut config = SimConfig::default();
    config.api_keys = vec!["the-right-key".to_owned()];
    let sim = start_sim(config).await;
    let app = spawn_app(settings_for(&sim)).await;
    let reply = app.ask("math", "What is 2+2?").await;
    assert_eq!(reply.status(), StatusCode::BAD_GATEWAY);
    let text = reply.text().await.unwrap();
    assert!(!text.contains("test-key"), "{text}");
    assert!(!text.contains("API_KEY_INVALID"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert_eq!(sim.stats().requests, 1, "auth errors are not retried");
}

#[tokio::test]
async fn the_local_quota_spaces_requests_instead_of_collecting_429s() {
    let mut config = SimConfig::default();
    config.quota.rpm = 3;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.rpm = 3;
    settings.server.request_timeout = Duration::from_secs(2);
    let app = spawn_app(settings).await;
    let replies = join_all((0..5).map(|i| app.ask("math", format!("quota question {i}")))).await;
    let statuses: Vec<StatusCode> = replies.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "{statuses:?}"
    );
    for reply in replies.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = reply.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50..=61).contains(&retry_after), "{retry_after}");
    }
    let stats = sim.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.rate_limited, 0, "the simulator never had to refuse");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops() {
    let sim = start_sim_with_latency(800).await;
    let mut app = spawn_app(settings_for(&sim)).await;
    let in_flight = app.spawn_ask("math", "long one");
    while sim.stats().in_flight < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.signal_stop();
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let result = tokio::time::timeout(Duration::from_secs(10), app.handle).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    // New connections are refused once it has stopped.
    let refused = learning_chat_testkit::http::client()
        .get(format!("http://{}/health", app.addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn a_429_with_retry_delay_is_retried_after_that_delay() {
    let mut config = SimConfig::default();
    // One request per (compressed) 2 s "minute": the second question gets a 429 whose
    // RetryInfo.retryDelay says when the slot frees.
    config.quota.rpm = 1;
    config.quota.minute_ms = 2_000;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.rpm = 0; // the service's own limiter off: Gemini must be the one refusing
    settings.upstream.max_retries = 2;
    let app = spawn_app(settings).await;
    assert_eq!(app.ask("math", "first").await.status(), StatusCode::OK);
    let asked = Instant::now();
    let reply = app.ask("math", "second").await;
    let took = asked.elapsed();
    assert_eq!(reply.status(), StatusCode::OK);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 1, "{stats:?}");
    assert_eq!(stats.ok, 2);
    // The retry waited for the announced delay (about 2 s) instead of the 20-100 ms backoff.
    assert!(took >= Duration::from_millis(1_500), "{took:?}");
    let timeline = sim.timeline();
    let ok_times: Vec<u64> = timeline
        .arrival_ms
        .iter()
        .zip(&timeline.status)
        .filter(|(_, s)| **s == 200)
        .map(|(t, _)| *t)
        .collect();
    assert!(ok_times[1] - ok_times[0] >= 2_000, "{ok_times:?}");
}

#[tokio::test]
async fn a_429_whose_delay_passes_the_deadline_is_a_503_with_that_retry_after() {
    let mut config = SimConfig::default();
    config.quota.rpm = 1;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.rpm = 0;
    settings.server.request_timeout = Duration::from_secs(3);
    let app = spawn_app(settings).await;
    assert_eq!(app.ask("math", "first").await.status(), StatusCode::OK);
    let before = scrape_app(&app).await;
    let reply = app.ask("math", "second").await;
    // No pointless wait: the only wait after a failed call is a retry's, and none was scheduled.
    assert_eq!(retries_since(&app, &before).await, 0.0);
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = reply.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(sim.stats().rate_limited, 1);
}

#[tokio::test]
async fn a_client_that_accepts_no_coding_we_send_is_refused_before_the_model_is_asked() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    for accept in ["identity;q=0", "br, *;q=0"] {
        let reply = app
            .client
            .post(app.url("/api/v1/agents/math"))
            .header("accept-encoding", accept)
            .json(&serde_json::json!({"message": "What is a prime number?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_ACCEPTABLE, "{accept}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_acceptable", "{accept}: {body}");
    }
    // Refused up front: no answer was made (and charged) only to be thrown away.
    assert_eq!(sim.stats().requests, 0);
    // A client that takes gzip but not the plain body is answered.
    let reply = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .header("accept-encoding", "gzip, identity;q=0")
        .json(&serde_json::json!({"message": "What is a prime number?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(sim.stats().requests, 1);
}
