//! Known traffic through a running service moves the scraped counters, gauges and histograms
//! exactly as it should.
//!
//! The recorder is process-global. cargo-nextest gives each test its own process, but every
//! assertion is a delta between two scrapes of the same app (or a gauge that app just set), so
//! the tests also hold when another app in the same process recorded metrics before.

use crate::support::prom::{delta, scrape, scrape_until, Scrape};
use crate::support::{
    fixed_latency, offline_settings, settings_for, spawn_app, start_sim, TestApp,
};
use futures::future::join_all;
use gemini_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

pub const CHAT: &str = "/api/v1/agents/{agent_id}";
pub const HTTP: &str = "learning_chat_http_requests_total";
pub const HTTP_DURATION: &str = "learning_chat_http_request_duration_seconds";

pub async fn scrape_app(app: &TestApp) -> Scrape {
    scrape(&app.client, &app.metrics_base()).await
}

pub async fn get(app: &TestApp, path: &str) -> StatusCode {
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
    // Scrapes go to the metrics listener, outside the service's request metrics.
    assert_eq!(d(&[("route", "/metrics"), ("status", "200")]), 0.0);

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
    // Nothing is in flight (the scrape is not one of the service's requests).
    assert_eq!(
        after.value("learning_chat_http_requests_in_flight", &[]),
        0.0
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
async fn a_request_abandoned_by_its_client_leaves_the_in_flight_gauge_and_counts_as_499() {
    let sim = start_sim(SimConfig {
        latency: fixed_latency(2_000),
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app(settings_for(&sim)).await;
    let base = app.metrics_base();
    let before = scrape_app(&app).await;
    let url = app.url("/api/v1/agents/math");
    let impatient = tokio::spawn(async move {
        learning_chat_testkit::http::client_builder()
            .build()
            .unwrap()
            .post(url)
            .json(&serde_json::json!({"message": "I will not wait"}))
            .send()
            .await
    });
    // The client gives up once its question is with the model (not after a fixed time, which a
    // loaded machine could spend before the request even arrived).
    let guard = std::time::Instant::now() + Duration::from_secs(20);
    while sim.stats().in_flight < 1 {
        assert!(
            std::time::Instant::now() < guard,
            "the question never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !impatient.is_finished(),
        "answered before the 2 s model call"
    );
    impatient.abort();
    assert!(
        impatient.await.unwrap_err().is_cancelled(),
        "the client gave up first"
    );
    // Nothing is in flight once the server has noticed the disconnect.
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
        0.0
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
