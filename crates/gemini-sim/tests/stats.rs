//! Statistics: accounting of outcomes, in-flight peak, reset, timeline, run-time config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gemini_sim::{Latency, QuotaConfig, SimConfig, Stats, Timeline};
use serde_json::json;
use std::time::{Duration, Instant};

/// A GET of one of the simulator's JSON control endpoints (`/stats`, `/config`, ...).
async fn get_json<T: serde::de::DeserializeOwned>(sim: &gemini_sim::SimServer, path: &str) -> T {
    client()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn http_stats(sim: &gemini_sim::SimServer) -> Stats {
    get_json(sim, "/stats").await
}

/// A simulator that admits 25 requests a minute, each sleeping `latency_ms`: 30 at once are 25
/// in flight and 5 rate limited.
async fn start_with_rpm_25(latency_ms: u64) -> gemini_sim::SimServer {
    start(SimConfig {
        latency: Latency::Fixed { ms: latency_ms },
        quota: QuotaConfig {
            rpm: 25,
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await
}

#[tokio::test]
async fn stats_count_every_outcome() {
    let sim = start_with_rpm_25(300).await;
    // 30 concurrent requests: 25 admitted, 5 rate limited.
    let started = Instant::now();
    let statuses = concurrent_generates(model_url(&sim, MODEL, "generateContent"), 30).await;
    // Every admitted request slept its latency (a lower bound: it cannot fail on a slow machine).
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 25);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
    // One error and one countTokens call.
    generate_with_model(&sim, "no-such-model").await;
    let count = post_raw(
        &client(),
        &model_url(&sim, MODEL, "countTokens"),
        Some(KEY),
        request("x").to_string(),
    )
    .await;
    assert_eq!(count.status, 200);

    let stats = http_stats(&sim).await;
    assert_eq!(stats, sim.stats_without_clock(&stats));
    assert_eq!(stats.requests, 32);
    assert_eq!(stats.ok, 26);
    assert_eq!(stats.rate_limited, 5);
    assert_eq!(stats.errors, 1);
    assert_eq!(stats.in_flight, 0);
    assert!(
        stats.in_flight_peak >= 1 && stats.in_flight_peak <= 30,
        "{}",
        stats.in_flight_peak
    );
    assert_eq!(stats.count_tokens, 1);
    assert!(stats.prompt_tokens > 0 && stats.output_tokens >= 25 * 90);
    assert_eq!(stats.per_minute.iter().map(|m| m.requests).sum::<u64>(), 32);
    assert_eq!(stats.per_key[KEY].requests, 32);
    assert_eq!(stats.per_key[KEY].rate_limited, 5);

    // The timeline holds every request with its status.
    let timeline: Timeline = get_json(&sim, "/stats/timeline").await;
    assert_eq!(timeline.arrival_ms.len(), 32);
    assert_eq!(timeline.status.iter().filter(|s| **s == 429).count(), 5);
    assert_eq!(timeline.max_in_window(60_000, |s| s == 200), 26);
    assert!(timeline.arrival_ms.windows(2).all(|w| w[0] <= w[1]));
}

/// `n` generate requests to `url` sent at once; their statuses.
async fn concurrent_generates(url: String, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                post_raw(
                    &client(),
                    &url,
                    Some(KEY),
                    request(&format!("q{i}")).to_string(),
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn the_in_flight_gauge_and_peak_show_requests_sleeping_together() {
    // Asleep until shutdown wakes them: all 25 are in flight together however slowly the
    // machine delivers them, so no deadline is needed.
    let sim = start_with_rpm_25(600_000).await;
    let asking = tokio::spawn(concurrent_generates(
        model_url(&sim, MODEL, "generateContent"),
        30,
    ));
    // While they sleep, the live gauge shows them (the guard only bounds a hang).
    let guard = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = sim.stats();
        if stats.in_flight == 25 && stats.rate_limited == 5 {
            break;
        }
        assert!(Instant::now() < guard, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = http_stats(&sim).await;
    assert_eq!(stats.requests, 30);
    assert_eq!(stats.in_flight, 25);
    assert_eq!(stats.ok, 0);
    assert!(
        stats.in_flight_peak >= 25 && stats.in_flight_peak <= 30,
        "{}",
        stats.in_flight_peak
    );
    // Shutdown wakes the sleepers: 503s, while the 5 refused kept their 429s.
    tokio::time::timeout(Duration::from_secs(30), sim.shutdown())
        .await
        .unwrap();
    let statuses = tokio::time::timeout(Duration::from_secs(30), asking)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 25);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
}

async fn generate_with_model(sim: &gemini_sim::SimServer, model: &str) {
    let reply = post_raw(
        &client(),
        &model_url(sim, model, "generateContent"),
        Some(KEY),
        request("x").to_string(),
    )
    .await;
    assert_eq!(reply.status, 404);
}

trait ClockFree {
    fn stats_without_clock(&self, http: &Stats) -> Stats;
}

impl ClockFree for gemini_sim::SimServer {
    /// The library snapshot with the HTTP snapshot's clock field, so the two compare equal.
    fn stats_without_clock(&self, http: &Stats) -> Stats {
        Stats {
            since_reset_ms: http.since_reset_ms,
            ..self.stats()
        }
    }
}

#[tokio::test]
async fn stats_reset_zeroes_counters_but_keeps_quota_windows() {
    let sim = start(SimConfig {
        quota: QuotaConfig {
            rpm: 1,
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(generate(&sim, &request("a")).await.status, 200);
    assert_eq!(generate(&sim, &request("a")).await.status, 429);
    assert_eq!(sim.stats().requests, 2);
    let resp = client()
        .post(format!("{}/stats/reset", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = http_stats(&sim).await;
    assert_eq!(
        (
            stats.requests,
            stats.ok,
            stats.rate_limited,
            stats.in_flight_peak
        ),
        (0, 0, 0, 0)
    );
    assert!(stats.per_key.is_empty() && stats.per_minute.is_empty());
    assert!(sim.timeline().arrival_ms.is_empty());
    // Quota windows survive a stats reset.
    assert_eq!(generate(&sim, &request("a")).await.status, 429);
    sim.reset_stats();
    assert_eq!(sim.stats().requests, 0);
}

#[tokio::test]
async fn post_config_changes_latency_at_run_time() {
    let sim = start(SimConfig::default()).await;
    // By default there is no latency to wait for (the sampler returns zero for `none`; see
    // latency.rs): the run-time change below is what makes answers slow.
    assert_eq!(
        current_config(&sim).await["latency"],
        json!({"kind": "none"})
    );
    assert_eq!(generate(&sim, &request("a")).await.status, 200);

    let config = post_config(&sim, json!({"latency": {"kind": "fixed", "ms": 400}})).await;
    assert_eq!(config["latency"]["ms"], 400);
    let current = current_config(&sim).await;
    assert_eq!(current["latency"], json!({"kind": "fixed", "ms": 400}));
    // Untouched settings keep their values.
    assert_eq!(current["answer_tokens"], 120);
    let t = Instant::now();
    assert_eq!(generate(&sim, &request("a")).await.status, 200);
    // Lower bounds only: a loaded machine may add any delay, never remove one.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");

    // Streams: time to first chunk plus a delay per chunk.
    let config = post_config(
        &sim,
        json!({"latency": {"kind": "none"}, "stream": {"first_chunk_ms": 100, "chunk_delay_ms": 50, "chunk_tokens": 40}}),
    )
    .await;
    assert_eq!(
        config["stream"],
        json!({"first_chunk_ms": 100, "chunk_delay_ms": 50, "chunk_tokens": 40})
    );
    let t = Instant::now();
    let reply = post_raw(
        &client(),
        &format!(
            "{}?alt=sse",
            model_url(&sim, MODEL, "streamGenerateContent")
        ),
        Some(KEY),
        request("a").to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    // 120 tokens / 40 = 3 chunks: 100 + 2 * 50 ms.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert_eq!(
        gemini_wire::sse::parse_events(&reply.text).unwrap().len(),
        3
    );

    // Uniform latency through the library API.
    sim.update_config(|c| {
        c.latency = Latency::Uniform {
            min_ms: 50,
            max_ms: 100,
        }
    });
    assert_eq!(
        current_config(&sim).await["latency"],
        json!({"kind": "uniform", "min_ms": 50, "max_ms": 100})
    );
    let t = Instant::now();
    assert_eq!(generate(&sim, &request("a")).await.status, 200);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(50), "{took:?}");
}

async fn current_config(sim: &gemini_sim::SimServer) -> serde_json::Value {
    get_json(sim, "/config").await
}

#[tokio::test]
async fn seed_preset_is_2800_ms_and_shutdown_wakes_sleepers() {
    assert_eq!(
        SimConfig::seed_preset().latency,
        Latency::Fixed { ms: 2800 }
    );
    // The preset with a sleep that only shutdown can end: a 503 (not a 200 after the sleep,
    // nor a dropped connection after shutdown's 5 s grace) shows the sleeper was woken.
    let sim = start(SimConfig {
        latency: Latency::Fixed { ms: 600_000 },
        ..SimConfig::seed_preset()
    })
    .await;
    let url = model_url(&sim, MODEL, "generateContent");
    let pending = tokio::spawn(async move {
        post_raw(&client(), &url, Some(KEY), request("a").to_string())
            .await
            .status
    });
    let guard = Instant::now() + Duration::from_secs(60);
    while sim.stats().in_flight != 1 {
        assert!(Instant::now() < guard, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The timeouts only bound a hang.
    tokio::time::timeout(Duration::from_secs(60), sim.shutdown())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503);
}
