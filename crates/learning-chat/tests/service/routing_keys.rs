//! Several Gemini API keys against the real service and gemini-sim's per-key quotas: three keys at
//! 60 RPM each carry 170 requests in a minute without one upstream 429, a key out of its per-day
//! quota leaves the rotation, and so does a key refused with 403.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use crate::support::{settings_for, spawn_app, start_sim, TestApp};
use futures::StreamExt;
use gemini_sim::{QuotaConfig, SimConfig, SimServer};
use learning_chat::config::{Secret, Settings};
use std::collections::BTreeMap;
use std::num::NonZero;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

/// Service settings with exactly these Gemini keys.
fn settings_with_keys(sim: &SimServer, names: &[&str]) -> Settings {
    let mut settings = settings_for(sim);
    settings.gemini.api_key = Secret::default();
    settings.gemini.api_keys = names.iter().map(|k| Secret::new(*k)).collect();
    settings
}

async fn ask_all(app: &TestApp, questions: Vec<String>, parallel: usize) -> Vec<u16> {
    futures::stream::iter(questions)
        .map(|q| async move { app.ask("math", q).await.status().as_u16() })
        .buffer_unordered(parallel)
        .collect()
        .await
}

async fn key_rotation(app: &TestApp) -> (u64, u64) {
    let ready = app.get_json("/ready").await;
    let keys = &ready["api_keys"];
    (
        keys["total"].as_u64().unwrap_or(0),
        keys["in_rotation"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn three_keys_at_60_rpm_carry_170_requests_a_minute_without_a_429() {
    let names = ["key-one-AAAAAAAA", "key-two-BBBBBBBB", "key-three-CCCCCC"];
    let sim = start_sim(SimConfig {
        api_keys: keys(&names),
        quota: QuotaConfig {
            rpm: 60,
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_with_keys(&sim, &names);
    settings.gemini.key_rpm = 60;
    let app = spawn_app(settings).await;

    // 170 distinct questions (no cache hit, no coalescing) within one minute, 20 at a time.
    let questions = (0..170)
        .map(|i| format!("What is {i} times {i}?"))
        .collect();
    let statuses = ask_all(&app, questions, 20).await;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for status in statuses {
        *by_status.entry(status).or_default() += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(200, 170)]));
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert_eq!(stats.requests, 170);
    // Each key carried its share, none beyond its 60.
    for name in names {
        let used = stats.per_key[name].requests;
        assert!((50..=60).contains(&used), "{name}: {used} ({stats:?})");
    }
    assert_eq!(key_rotation(&app).await, (3, 3));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_out_of_its_per_day_quota_leaves_the_rotation() {
    let names = ["key-daily-AAAAAAAA", "key-spare-BBBBBBBB"];
    let sim = start_sim(SimConfig {
        api_keys: keys(&names),
        key_quotas: BTreeMap::from([(
            names[0].to_owned(),
            QuotaConfig {
                rpd: 1,
                ..QuotaConfig::default()
            },
        )]),
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app(settings_with_keys(&sim, &names)).await;
    for i in 0..8 {
        let response = app.ask("math", format!("What is {i} cubed?")).await;
        assert_eq!(response.status(), 200);
    }
    let stats = sim.stats();
    // The first key answered once, was refused once (per day), and was not asked again: the
    // call it refused went to the other key at once.
    let daily = &stats.per_key[names[0]];
    assert_eq!(
        (daily.ok, daily.rate_limited, daily.requests),
        (1, 1, 2),
        "{stats:?}"
    );
    assert_eq!(stats.per_key[names[1]].ok, 7);
    assert_eq!(key_rotation(&app).await, (2, 1));
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
        metrics.contains("learning_chat_api_keys_out_total{reason=\"daily_quota\"} 1"),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_refused_with_403_leaves_the_rotation() {
    let names = ["key-leaked-AAAAAAAA", "key-good-BBBBBBBBB"];
    let sim = start_sim(SimConfig {
        api_keys: keys(&names),
        revoked_keys: keys(&names[..1]),
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app(settings_with_keys(&sim, &names)).await;
    for i in 0..6 {
        let response = app.ask("math", format!("What is {i} squared?")).await;
        assert_eq!(response.status(), 200);
    }
    let stats = sim.stats();
    // One 403, then only the good key.
    assert_eq!(stats.errors, 1, "{stats:?}");
    assert_eq!(stats.per_key[names[1]].ok, 6);
    assert_eq!(key_rotation(&app).await, (2, 1));
    app.stop().await.unwrap();
}

#[test]
fn numbered_environment_keys_join_the_list() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("GEMINI_API_KEY", "key-zero");
        jail.set_env("GEMINI_API_KEY_1", "key-one");
        jail.set_env("GEMINI_API_KEY_2", "key-two");
        jail.set_env("GEMINI_API_KEY_4", "after-a-gap");
        let settings = Settings::from_figment(Settings::figment(None)).unwrap();
        let keys: Vec<String> = settings
            .gemini_keys()
            .iter()
            .map(|k| k.expose().to_owned())
            .collect();
        assert_eq!(keys, ["key-zero", "key-one", "key-two"]);
        // Never printed.
        assert!(!settings.to_masked_toml().contains("key-one"));
        Ok(())
    });
}

#[tokio::test]
async fn two_servers_share_each_keys_quota_through_redis() {
    let redis = crate::support::processes::RedisProcess::start();
    let names = ["key-shared-AAAAAAAA", "key-shared-BBBBBBBB"];
    let sim = start_sim(SimConfig {
        api_keys: keys(&names),
        quota: QuotaConfig {
            rpm: 30,
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let server = || {
        let mut settings = settings_with_keys(&sim, &names);
        settings.gemini.key_rpm = 30;
        settings.redis.url = Secret::new(redis.url());
        settings.redis.replicas = NonZero::new(2).unwrap();
        settings
    };
    let (one, two) = (spawn_app(server()).await, spawn_app(server()).await);
    // 80 distinct questions, half to each server, against 2 keys x 30 RPM: alone, each server
    // would send its 40; sharing each key's window in Redis, the two send 60 at most and refuse
    // the rest (503) rather than let Gemini answer 429.
    let ask = |app: &TestApp, i: usize| {
        let request = app
            .client
            .post(app.url("/api/v1/agents/math"))
            .json(&serde_json::json!({ "message": format!("What is {i} plus {i}?") }));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let statuses: Vec<u16> = futures::stream::iter(0..80)
        .map(|i| ask(if i % 2 == 0 { &one } else { &two }, i))
        .buffer_unordered(16)
        .collect()
        .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!((50..=60).contains(&ok), "{ok} answered: {statuses:?}");
    assert_eq!(stats.requests as usize, ok);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}
