//! Injected faults, switched on at run time through `POST /config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gemini_sim::SimConfig;
use gemini_wire::sse::{SseDecoder, SseItem};
use gemini_wire::GenerateContentResponse;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn error_faults_have_gemini_bodies() {
    let sim = start(SimConfig::default()).await;
    post_config(&sim, json!({"faults": {"error_500": 1.0}})).await;
    let reply = generate(&sim, &request("hi")).await;
    assert_eq!(reply.status, 500);
    let error = reply.error();
    assert_eq!(error.status, "INTERNAL");
    assert_eq!(
        error.message,
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
    );

    post_config(
        &sim,
        json!({"faults": {"error_500": 0.0, "error_503": 1.0}}),
    )
    .await;
    let reply = generate(&sim, &request("hi")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json(), fixture_json("error_503_overloaded.json"));

    post_config(
        &sim,
        json!({"faults": {"error_503": 0.0, "error_504": 1.0}}),
    )
    .await;
    let reply = generate(&sim, &request("hi")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error().status, "DEADLINE_EXCEEDED");

    post_config(&sim, json!({"faults": {"error_504": 0.0}})).await;
    assert_eq!(generate(&sim, &request("hi")).await.status, 200);

    let stats = sim.stats();
    assert_eq!((stats.errors, stats.ok), (3, 1));
    assert_eq!(
        (
            stats.faults.error_500,
            stats.faults.error_503,
            stats.faults.error_504
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn fault_rates_are_probabilities() {
    let sim = start(SimConfig::default()).await;
    post_config(&sim, json!({"faults": {"error_503": 0.5}})).await;
    let mut unavailable = 0;
    for _ in 0..200 {
        if generate(&sim, &request("hi")).await.status == 503 {
            unavailable += 1;
        }
    }
    // Binomial(200, 0.5): 60..140 fails with probability ~1e-8.
    assert!((60..140).contains(&unavailable), "{unavailable}");
    // Invalid rates are refused and change nothing.
    let resp = client()
        .post(format!("{}/config", sim.base_url()))
        .json(&json!({"faults": {"error_503": 1.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(sim.config().faults.error_503, 0.5);
}

#[tokio::test]
async fn hang_lasts_until_the_client_gives_up() {
    let sim = start(SimConfig::default()).await;
    post_config(&sim, json!({"faults": {"hang": 1.0}})).await;
    let url = model_url(&sim, MODEL, "generateContent");
    let asking = tokio::spawn(async move {
        client()
            .post(url)
            .header("x-goog-api-key", KEY)
            .json(&request("hi"))
            .send()
            .await
    });
    // Hung: rolled, in flight and unanswered (the guard only bounds a hang of the test itself).
    let guard = Instant::now() + Duration::from_secs(30);
    while sim.stats().in_flight != 1 || sim.stats().faults.hang != 1 {
        assert!(Instant::now() < guard, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!asking.is_finished(), "a hung request must not be answered");
    // The client gives up.
    asking.abort();
    assert!(asking.await.unwrap_err().is_cancelled());
    // The server notices the client left: the request is no longer in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = sim.stats();
        if stats.in_flight == 0 && stats.cancelled == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "hung request leaked: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hang is bounded: with a short bound the client gets a 504.
    post_config(&sim, json!({"hang_max_ms": 100})).await;
    let reply = generate(&sim, &request("hi")).await;
    assert_eq!(reply.status, 504);
}

#[tokio::test]
async fn stream_cut_closes_without_finish_reason() {
    let sim = start(SimConfig::default()).await;
    post_config(
        &sim,
        json!({"faults": {"stream_cut": 1.0}, "stream": {"chunk_tokens": 10, "chunk_delay_ms": 5}}),
    )
    .await;
    let mut resp = client()
        .post(format!(
            "{}?alt=sse",
            model_url(&sim, MODEL, "streamGenerateContent")
        ))
        .header("x-goog-api-key", KEY)
        .json(&request("What is gravity?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let broke = loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => events.extend(decoder.push(&bytes).unwrap()),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        broke,
        "a cut stream must end with a broken connection, not a clean end"
    );
    assert!(!events.is_empty(), "some chunks arrive before the cut");
    let mut received = String::new();
    for event in &events {
        let SseItem::Event(event) = event else {
            panic!("a comment in Gemini's stream: {event:?}")
        };
        let parsed: GenerateContentResponse = serde_json::from_str(&event.data).unwrap();
        assert!(parsed.finish_reason().is_none());
        received.push_str(&parsed.text());
    }
    // The answer in 10-token (40-character) chunks, cut after half of them.
    let stats = sim.stats();
    let whole: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("What is gravity?")).await.text).unwrap();
    let whole = whole.text();
    let chunks = whole.chars().count().div_ceil(40);
    assert!(chunks >= 4, "{whole}");
    assert_eq!(events.len(), chunks / 2);
    assert!(whole.starts_with(&received));
    assert_eq!(
        (stats.stream_cut, stats.faults.stream_cut, stats.ok),
        (1, 1, 0)
    );
    // generateContent is not affected by the stream-cut rate.
    assert_eq!(sim.stats().ok, 1);
}

#[tokio::test]
async fn injected_429_has_the_recorded_quota_body_and_consumes_no_quota() {
    let sim = start(SimConfig {
        quota: gemini_sim::QuotaConfig {
            rpm: 3,
            free_tier: true,
            ..gemini_sim::QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    post_config(
        &sim,
        json!({"faults": {"error_429": 1.0, "error_429_retry_delay_ms": 20_000}}),
    )
    .await;
    for _ in 0..5 {
        let reply = generate(&sim, &request("hi")).await;
        assert_eq!(reply.status, 429, "{}", reply.text);
        assert!(
            reply.headers.get("retry-after").is_none(),
            "Gemini sends no Retry-After"
        );
        // Same paths and detail order as the recorded 429.
        assert_eq!(
            key_paths(&reply.json()),
            key_paths(&fixture_json("error_429_quota.json"))
        );
        let raw = reply.json();
        assert_eq!(raw["error"]["details"][2]["retryDelay"], "20s");
        let error = reply.error();
        assert_eq!(error.status, "RESOURCE_EXHAUSTED");
        assert_eq!(
            error.message,
            fixture_json("error_429_quota.json")["error"]["message"]
        );
        assert_eq!(error.retry_delay(), Some(Duration::from_secs(20)));
        assert_eq!(
            error.quota_ids(),
            vec!["GenerateRequestsPerMinutePerProjectPerModel-FreeTier".to_owned()]
        );
        assert!(!error.is_daily_quota());
        assert_eq!(
            raw["error"]["details"][0]["violations"][0]["quotaValue"],
            "3"
        );
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.requests, stats.rate_limited, stats.faults.error_429),
        (5, 5, 5)
    );
    // The injected refusals took nothing from the simulator's own quota: all 3 slots are free.
    post_config(&sim, json!({"faults": {"error_429": 0.0}})).await;
    for _ in 0..3 {
        assert_eq!(generate(&sim, &request("hi")).await.status, 200);
    }
    assert_eq!(generate(&sim, &request("hi")).await.status, 429);
    assert_eq!(sim.stats().faults.error_429, 5);
    // Invalid rates are refused.
    let resp = client()
        .post(format!("{}/config", sim.base_url()))
        .json(&json!({"faults": {"error_429": -0.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
