//! Known traffic through a running service moves the scraped counters, gauges and histograms
//! exactly as it should.
//!
//! The recorder is process-global. cargo-nextest gives each test its own process, but every
//! assertion is a delta between two scrapes of the same app (or a gauge that app just set), so
//! the tests also hold when another app in the same process recorded metrics before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

mod common;
mod prom;

use common::{fixed_latency, offline_settings, settings_for, spawn_app, start_sim, TestApp};
use futures::future::join_all;
use gemini_sim::SimConfig;
use prom::{delta, scrape, scrape_until, Scrape};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const CHAT: &str = "/api/v1/agents/{agent_id}";
const HTTP: &str = "learning_chat_http_requests_total";
const HTTP_DURATION: &str = "learning_chat_http_request_duration_seconds";

async fn scrape_app(app: &TestApp) -> Scrape {
    scrape(&app.client, &app.url("")).await
}

async fn get(app: &TestApp, path: &str) -> StatusCode {
    app.client
        .get(app.url(path))
        .send()
        .await
        .expect("request reaches the service")
        .status()
}

#[tokio::test]
async fn http_requests_are_counted_by_route_template_method_and_status() {
    let app = spawn_app(offline_settings()).await;
    let before = scrape_app(&app).await;
    for _ in 0..3 {
        assert_eq!(get(&app, "/health").await, StatusCode::OK);
    }
    assert_eq!(get(&app, "/api/v1/agents").await, StatusCode::OK);
    assert_eq!(
        app.ask("no-such-agent", "hi").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.ask("other-missing", "hi").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&app, "/no/such/path/42").await, StatusCode::NOT_FOUND);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let reply = app
        .client
        .request(brew, app.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        app.ask("math", "   ").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let after = scrape_app(&app).await;

    let d = |labels: &[(&str, &str)]| delta(&before, &after, HTTP, labels);
    assert_eq!(
        d(&[("route", "/health"), ("method", "GET"), ("status", "200")]),
        3.0
    );
    assert_eq!(
        d(&[
            ("route", "/api/v1/agents"),
            ("method", "GET"),
            ("status", "200")
        ]),
        1.0
    );
    // Both unknown agents land on the one route template: the label set stays small.
    assert_eq!(
        d(&[("route", CHAT), ("method", "POST"), ("status", "404")]),
        2.0
    );
    assert_eq!(
        d(&[("route", CHAT), ("method", "POST"), ("status", "422")]),
        1.0
    );
    // Unmatched paths share one label value; the raw path never becomes a label.
    assert_eq!(d(&[("route", "unmatched"), ("status", "404")]), 1.0);
    assert!(!after
        .label_values(HTTP, "route")
        .iter()
        .any(|r| r.contains("42")));
    // An invented method is counted as `other`: clients cannot mint label values.
    assert_eq!(
        d(&[("route", "/health"), ("method", "other"), ("status", "405")]),
        1.0
    );
    assert!(!after.label_values(HTTP, "method").contains("BREW"));
    // The first scrape is counted once it has answered; the second renders before its own.
    assert_eq!(d(&[("route", "/metrics"), ("status", "200")]), 1.0);

    // The histogram counts the same requests, by status class, with buckets from 1 ms to 60 s.
    let count = format!("{HTTP_DURATION}_count");
    let bucket = format!("{HTTP_DURATION}_bucket");
    let health = [
        ("route", "/health"),
        ("method", "GET"),
        ("status_class", "2xx"),
    ];
    assert_eq!(delta(&before, &after, &count, &health), 3.0);
    let inf: Vec<_> = health.iter().copied().chain([("le", "+Inf")]).collect();
    assert_eq!(delta(&before, &after, &bucket, &inf), 3.0);
    let chat_4xx = [("route", CHAT), ("status_class", "4xx")];
    assert_eq!(delta(&before, &after, &count, &chat_4xx), 3.0);
    let les = after.label_values(&bucket, "le");
    for le in ["0.001", "0.25", "1", "30", "60", "+Inf"] {
        assert!(les.contains(le), "bucket le={le} missing: {les:?}");
    }
    assert_eq!(
        after.types.get(HTTP_DURATION).map(String::as_str),
        Some("histogram")
    );
    assert!(delta(&before, &after, &format!("{HTTP_DURATION}_sum"), &health) >= 0.0);
    // Only the scrape being rendered is in flight.
    assert_eq!(
        after.value("learning_chat_http_requests_in_flight", &[]),
        1.0
    );
}

#[tokio::test]
async fn cache_lookups_count_hits_and_misses_and_entries() {
    let app = spawn_app(offline_settings()).await;
    let before = scrape_app(&app).await;
    for (question, cached) in [
        ("Q one", false),
        ("Q one", true),
        ("Q two", false),
        ("Q one", true),
    ] {
        let reply: Value = app.ask("math", question).await.json().await.unwrap();
        assert_eq!(reply["cached"], cached, "{question}: {reply}");
    }
    let after = scrape_app(&app).await;
    let lookups = "learning_chat_cache_lookups_total";
    assert_eq!(
        delta(
            &before,
            &after,
            lookups,
            &[("tier", "memory"), ("result", "hit")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            lookups,
            &[("tier", "memory"), ("result", "miss")]
        ),
        2.0
    );
    // Without Redis there is no Redis tier at all.
    assert_eq!(delta(&before, &after, lookups, &[("tier", "redis")]), 0.0);
    // moka counts entries lazily (pending writes are applied on later cache activity), so the
    // gauge may lag behind but never runs ahead.
    let entries = after.value("learning_chat_cache_entries", &[("tier", "memory")]);
    assert!(after.has("learning_chat_cache_entries", &[("tier", "memory")]));
    assert!(entries <= 2.0, "{entries}");
}

#[tokio::test]
async fn identical_questions_in_flight_are_coalesced_and_counted() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(400),
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app(settings_for(&sim)).await;
    let before = scrape_app(&app).await;
    let replies = join_all((0..10).map(|_| app.ask("history", "Who built Rome?"))).await;
    assert!(replies.iter().all(|r| r.status() == StatusCode::OK));
    let after = scrape_app(&app).await;
    let lookups = "learning_chat_cache_lookups_total";
    let hits = delta(&before, &after, lookups, &[("result", "hit")]);
    let misses = delta(&before, &after, lookups, &[("result", "miss")]);
    let coalesced = delta(
        &before,
        &after,
        "learning_chat_coalesced_requests_total",
        &[("scope", "local")],
    );
    let upstream_ok = delta(
        &before,
        &after,
        "learning_chat_upstream_requests_total",
        &[("outcome", "ok")],
    );
    // Every request looked the answer up once; each miss either joined the call in flight or
    // made one, and every call made is one the simulator saw. (How the ten split between
    // hits and joins depends on arrival times, so only the bookkeeping is asserted.)
    assert_eq!(hits + misses, 10.0);
    assert_eq!(misses, coalesced + upstream_ok);
    assert_eq!(upstream_ok, sim.stats().requests as f64);
}

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
    settings.upstream.max_concurrency = 1;
    settings.upstream.max_queue = 1;
    settings.upstream.max_queue_wait_ms = 20_000;
    let app = spawn_app(settings).await;
    let base = app.url("");
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
    settings.server.request_timeout_ms = 5_000;
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

#[tokio::test]
async fn a_request_abandoned_by_its_client_leaves_the_in_flight_gauge_and_counts_as_499() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(2_000),
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app(settings_for(&sim)).await;
    let base = app.url("");
    let before = scrape_app(&app).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url("/api/v1/agents/math"))
        .json(&serde_json::json!({"message": "I will not wait"}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    // Only this scrape is in flight once the server has noticed the disconnect.
    let after = scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "the abandoned request counted",
        |s| delta(&before, s, HTTP, &[("route", CHAT), ("status", "499")]) == 1.0,
    )
    .await;
    assert_eq!(
        after.value("learning_chat_http_requests_in_flight", &[]),
        1.0
    );
    // The model call goes on, so the answer is cached for when the learner asks again.
    scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "the upstream call finished",
        |s| {
            delta(
                &before,
                s,
                "learning_chat_upstream_requests_total",
                &[("outcome", "ok")],
            ) == 1.0
        },
    )
    .await;
    let again: Value = app
        .ask("math", "I will not wait")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["cached"], true);
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn process_metrics_report_cpu_memory_and_file_descriptors() {
    let app = spawn_app(offline_settings()).await;
    let scraped = scrape_app(&app).await;
    assert!(scraped.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(scraped.value("process_open_fds", &[]) > 0.0);
    assert!(scraped.has("process_cpu_seconds_total", &[]));
    assert!(scraped.has("process_threads", &[]));
    assert_eq!(
        scraped.value(
            "learning_chat_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        scraped
            .types
            .get("process_cpu_seconds_total")
            .map(String::as_str),
        Some("counter")
    );
}
