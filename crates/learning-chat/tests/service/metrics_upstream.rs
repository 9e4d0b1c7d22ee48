//! Upstream and admission metrics: model calls, tokens, cost and quota gauges against what the
//! simulator saw, retries and failures by kind, and requests shed for a full queue or the quota.
//! (Deltas between two scrapes of the same app, as in metrics.rs.)

use super::metrics::{scrape_app, CHAT, HTTP};
use crate::support::prom::{delta, scrape_until};
use crate::support::{fixed_latency, settings_for, spawn_app, start_sim};
use gemini_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::Value;
use std::num::NonZero;
use std::time::{Duration, Instant};

#[tokio::test]
async fn upstream_calls_tokens_cost_and_quota_gauges_match_the_simulator() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.upstream.rpm = 1000;
    settings.telemetry.price_per_million_input_tokens = 0.30;
    settings.telemetry.price_per_million_output_tokens = 2.50;
    let started = Instant::now();
    let app = spawn_app(settings).await;
    let before = scrape_app(&app).await;
    let mut prompt = 0u64;
    let mut output = 0u64;
    let mut micro_usd = 0u64;
    for i in 0..5 {
        for _ in 0..2 {
            let reply: Value = app
                .ask("science", format!("Why is the sky blue? #{i}"))
                .await
                .json()
                .await
                .unwrap();
            if reply["cached"] == false {
                let p = reply["usage"]["prompt_tokens"].as_u64().unwrap();
                let o = reply["usage"]["output_tokens"].as_u64().unwrap();
                prompt += p;
                output += o;
                micro_usd += (p as f64 * 0.30 + o as f64 * 2.50).round() as u64;
            }
        }
    }
    let after = scrape_app(&app).await;
    let stats = sim.stats();
    assert_eq!(stats.requests, 5);
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d(
            "learning_chat_upstream_requests_total",
            &[("outcome", "ok")]
        ),
        stats.requests as f64
    );
    assert_eq!(
        d("learning_chat_upstream_requests_total", &[]),
        stats.requests as f64
    );
    assert_eq!(
        d(
            "learning_chat_upstream_request_duration_seconds_count",
            &[("outcome", "ok")]
        ),
        stats.requests as f64
    );
    assert_eq!(d("learning_chat_upstream_retries_total", &[]), 0.0);
    assert_eq!(
        d("learning_chat_upstream_tokens_total", &[("kind", "prompt")]),
        prompt as f64
    );
    assert_eq!(
        d("learning_chat_upstream_tokens_total", &[("kind", "output")]),
        output as f64
    );
    assert_eq!(prompt, stats.prompt_tokens);
    assert_eq!(output, stats.output_tokens);
    assert_eq!(
        d("learning_chat_upstream_cost_microusd_total", &[]),
        micro_usd as f64
    );
    // Quota usage is one division: calls this minute (or in the window) over the quota.
    assert_eq!(after.value("learning_chat_quota_rpm", &[]), 1000.0);
    // The limit in force is derived from the quota and the latency estimate, within the
    // default floor (32) and ceiling (1000); the estimate is capped at half the 30 s deadline.
    let limit = after.value("learning_chat_upstream_concurrency_limit", &[]);
    assert!((32.0..=1000.0).contains(&limit), "{limit}");
    let estimate = after.value("learning_chat_upstream_latency_estimate_seconds", &[]);
    assert!(estimate > 0.0 && estimate <= 15.0, "{estimate}");
    assert_eq!(after.value("learning_chat_queue_limit", &[]), 1000.0);
    assert_eq!(after.value("learning_chat_upstream_in_flight", &[]), 0.0);
    assert_eq!(after.value("learning_chat_queue_depth", &[]), 0.0);
    // Both count a minute; on a machine so slow that one passed, only an upper bound holds.
    let current_minute = after.value("learning_chat_upstream_requests_current_minute", &[]);
    let window = after.value("learning_chat_quota_window_requests", &[]);
    if started.elapsed() < Duration::from_secs(55) {
        assert_eq!(current_minute, 5.0);
        assert_eq!(window, 5.0);
    } else {
        assert!(current_minute <= 5.0 && window <= 5.0);
    }
}

#[tokio::test]
async fn retries_and_upstream_failures_are_counted_by_kind() {
    let mut config = SimConfig::default();
    config.faults.error_500 = 1.0;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 2;
    let app = spawn_app(settings).await;
    let before = scrape_app(&app).await;
    let reply = app.ask("math", "Is one prime?").await;
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let after = scrape_app(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    // The first attempt and two retries, all seen by the simulator.
    assert_eq!(sim.stats().requests, 3);
    assert_eq!(
        d(
            "learning_chat_upstream_requests_total",
            &[("outcome", "unavailable")]
        ),
        3.0
    );
    assert_eq!(
        d(
            "learning_chat_upstream_requests_total",
            &[("outcome", "ok")]
        ),
        0.0
    );
    assert_eq!(
        d(
            "learning_chat_upstream_retries_total",
            &[("cause", "unavailable")]
        ),
        2.0
    );
    assert_eq!(d(HTTP, &[("route", CHAT), ("status", "503")]), 1.0);
    assert_eq!(d("learning_chat_upstream_tokens_total", &[]), 0.0);
    // A failed answer is not a shed request: it reached the model.
    assert_eq!(d("learning_chat_requests_shed_total", &[]), 0.0);
}

#[tokio::test]
async fn requests_refused_for_a_full_queue_are_counted_as_shed() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(3_000),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_concurrency = NonZero::new(1).unwrap();
    settings.upstream.max_queue = 1;
    settings.upstream.max_queue_wait = Duration::from_secs(20);
    let app = spawn_app(settings).await;
    let base = app.metrics_base();
    let before = scrape_app(&app).await;
    // One call holds the only slot, one waits in the queue; a third finds the queue full.
    let holder = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/v1/agents/math");
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"message": "slow one"}))
                .send()
                .await
        }
    });
    scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "a call in flight",
        |s| s.value("learning_chat_upstream_in_flight", &[]) == 1.0,
    )
    .await;
    let waiter = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/v1/agents/math");
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"message": "queued one"}))
                .send()
                .await
        }
    });
    let queued = scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "one queued",
        |s| s.value("learning_chat_queue_depth", &[]) == 1.0,
    )
    .await;
    assert_eq!(
        queued.value("learning_chat_upstream_concurrency_limit", &[]),
        1.0
    );
    assert_eq!(queued.value("learning_chat_queue_limit", &[]), 1.0);
    let refused = app.ask("math", "one too many").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "overloaded"
    );
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(waiter.await.unwrap().unwrap().status(), StatusCode::OK);
    let after = scrape_app(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d(
            "learning_chat_requests_shed_total",
            &[("reason", "queue_full")]
        ),
        1.0
    );
    assert_eq!(d("learning_chat_requests_shed_total", &[]), 1.0);
    // Only the one that queued waited (the holder got its slot at once).
    assert_eq!(d("learning_chat_queue_wait_seconds_count", &[]), 1.0);
    assert_eq!(d(HTTP, &[("route", CHAT), ("status", "503")]), 1.0);
    assert_eq!(d(HTTP, &[("route", CHAT), ("status", "200")]), 2.0);
    assert_eq!(
        d(
            "learning_chat_upstream_requests_total",
            &[("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(after.value("learning_chat_queue_depth", &[]), 0.0);
    assert_eq!(after.value("learning_chat_upstream_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn requests_refused_by_the_quota_are_counted_as_shed() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.upstream.rpm = 2;
    // The next free slot is a minute away, past this deadline: refused at once.
    settings.server.request_timeout = Duration::from_secs(5);
    let app = spawn_app(settings).await;
    let before = scrape_app(&app).await;
    for i in 0..2 {
        assert_eq!(
            app.ask("math", format!("question {i}")).await.status(),
            StatusCode::OK
        );
    }
    let refused = app.ask("math", "question 2").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let after = scrape_app(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d("learning_chat_requests_shed_total", &[("reason", "quota")]),
        1.0
    );
    assert_eq!(d("learning_chat_upstream_requests_total", &[]), 2.0);
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(after.value("learning_chat_quota_rpm", &[]), 2.0);
    assert!(after.value("learning_chat_quota_window_requests", &[]) <= 2.0);
}
