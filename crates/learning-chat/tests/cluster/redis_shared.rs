//! Redis as the shared state, with several service instances in one process against one real
//! redis-server: one cache, one upstream call per question, one quota — and no request lost when
//! Redis fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::processes::RedisProcess;
use crate::support::{settings_for, spawn_app, start_sim, start_sim_with_latency, TestApp};
use futures::future::join_all;
use gemini_sim::{SimConfig, SimServer};
use learning_chat::config::Secret;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

fn redis_settings(sim: &SimServer, redis: &RedisProcess) -> learning_chat::Settings {
    let mut settings = settings_for(sim);
    settings.redis.url = Secret::new(redis.url());
    settings.redis.lease = Duration::from_millis(1_500);
    settings
}

async fn wait_ready_redis(app: &TestApp, want: &str) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let body = app.get_json("/ready").await;
        if body["redis"] == want {
            return;
        }
        assert!(Instant::now() < until, "redis never became {want}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_answer_cached_by_one_server_is_served_by_another() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let a = spawn_app(redis_settings(&sim, &redis)).await;
    let b = spawn_app(redis_settings(&sim, &redis)).await;
    wait_ready_redis(&a, "up").await;
    wait_ready_redis(&b, "up").await;
    let first: Value = a
        .ask("math", "What is a prime number?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["cached"], false);
    // The Redis write happens just after the answer; give it a moment (the bound only ends a
    // hang: it is long so a loaded machine cannot hit it).
    let until = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let body: Value = b
            .ask("math", "What is a prime number?")
            .await
            .json()
            .await
            .unwrap();
        if body["cached"] == true || Instant::now() > until {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["response"], first["response"]);
    assert_eq!(sim.stats().requests, 1);
    let keys = redis.cli(&["--scan", "--pattern", "learning-chat:answer:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let ttl: i64 = redis.cli(&["TTL", keys.trim()]).parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn identical_questions_on_three_servers_make_one_upstream_call() {
    let redis = RedisProcess::start();
    let sim = start_sim_with_latency(700).await;
    let mut settings = redis_settings(&sim, &redis);
    // Not a test of slow Redis (redis_slow.rs is): on a loaded machine a Redis reply slower
    // than the default 250 ms must not decide the count.
    settings.redis.command_timeout = Duration::from_secs(2);
    let mut apps = Vec::new();
    for _ in 0..3 {
        let app = spawn_app(settings.clone()).await;
        wait_ready_redis(&app, "up").await;
        apps.push(app);
    }
    let asks = (0..60).map(|i| apps[i % 3].ask("science", "How do vaccines work?"));
    let replies = join_all(asks).await;
    let mut texts = std::collections::HashSet::new();
    for reply in replies {
        assert_eq!(reply.status(), StatusCode::OK);
        let body: Value = reply.json().await.unwrap();
        texts.insert(body["response"].as_str().unwrap().to_owned());
    }
    assert_eq!(texts.len(), 1);
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn the_quota_is_shared_by_all_servers() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut settings = redis_settings(&sim, &redis);
        settings.upstream.rpm = 4;
        settings.server.request_timeout = Duration::from_secs(2);
        let app = spawn_app(settings).await;
        wait_ready_redis(&app, "up").await;
        apps.push(app);
    }
    let asks = (0..10).map(|i| apps[i % 2].ask("math", format!("distinct question {i}")));
    let replies = join_all(asks).await;
    let ok = replies
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 4, "one cluster budget of 4, not 4 per server");
    for reply in replies.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.headers().contains_key("retry-after"));
    }
    assert_eq!(sim.stats().requests, 4);
    assert_eq!(sim.stats().rate_limited, 0);
}

#[tokio::test]
async fn a_dead_lease_holder_only_delays_the_others_until_its_lease_expires() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(redis_settings(&sim, &redis)).await;
    wait_ready_redis(&app, "up").await;
    assert_eq!(app.ask("history", "warm-up").await.status(), StatusCode::OK);
    // Leases are released (just after the answer) once used (the bound only ends a hang).
    let until = Instant::now() + Duration::from_secs(30);
    while !redis
        .cli(&["--scan", "--pattern", "learning-chat:lease:*"])
        .is_empty()
    {
        assert!(Instant::now() < until, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crashed server's lease on the next question, keyed the way the service keys it.
    let key = app
        .state
        .chat
        .cache_key("history", "Who was Cleopatra?")
        .unwrap();
    let lease_key = format!("learning-chat:lease:{{{key}}}");
    assert_eq!(
        redis.cli(&["SET", &lease_key, "crashed-server", "PX", "1500"]),
        "OK"
    );
    let started = Instant::now();
    let reply = app.ask("history", "Who was Cleopatra?").await;
    let waited = started.elapsed();
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(1_000),
        "it waited for the lease: {waited:?}"
    );
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn redis_down_at_start_then_back_costs_no_request() {
    let redis = RedisProcess::start();
    redis.kill();
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(redis_settings(&sim, &redis)).await;
    let ready = app.get_json("/ready").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"], "down");
    for i in 0..5 {
        assert_eq!(
            app.ask("math", format!("no redis {i}")).await.status(),
            StatusCode::OK
        );
    }
    // The local cache still works while Redis is away.
    let again: Value = app.ask("math", "no redis 0").await.json().await.unwrap();
    assert_eq!(again["cached"], true);
    redis.restart();
    wait_ready_redis(&app, "up").await;
    assert_eq!(app.ask("math", "with redis").await.status(), StatusCode::OK);
    assert_eq!(sim.stats().requests, 6);
}

#[tokio::test]
async fn killing_or_freezing_redis_mid_load_fails_no_request() {
    let redis = RedisProcess::start();
    let sim = start_sim_with_latency(50).await;
    let mut settings = redis_settings(&sim, &redis);
    settings.redis.command_timeout = Duration::from_millis(100);
    let app = spawn_app(settings).await;
    wait_ready_redis(&app, "up").await;
    let mut failures = Vec::new();
    for phase in ["up", "killed", "restarted", "frozen", "thawed"] {
        match phase {
            "killed" => redis.kill(),
            "restarted" => redis.restart(),
            "frozen" => redis.freeze(),
            "thawed" => redis.thaw(),
            _ => {}
        }
        let asks = (0..20).map(|i| app.ask("science", format!("{phase} question {}", i % 10)));
        for reply in join_all(asks).await {
            if reply.status() != StatusCode::OK {
                failures.push((phase, reply.status()));
            }
        }
        if phase == "restarted" || phase == "thawed" {
            wait_ready_redis(&app, "up").await;
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    let metrics = app
        .client
        .get(app.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("learning_chat_redis_fallbacks_total"),
        "fallbacks are counted"
    );
}
