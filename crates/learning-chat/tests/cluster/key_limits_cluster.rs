//! Per-key limits on a real Redis Cluster (three masters made by `redis-cli --cluster create`):
//! every window of a key and of its learners lives under the key id's hash tag, in ONE slot, so
//! the sliding-window script never spans slots (a CROSSSLOT error would make every check fall
//! back to this server alone, and two servers would let twice the limit through). Checked on
//! the limiter itself and end to end: keys required (made by the real `keys` CLI in the records
//! database both servers share), a 10/min key across two servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::auth::{create_key_on, PEPPER};
use crate::support::redis_ha::{wait_all_redis, RedisCluster};
use crate::support::{offline_settings, spawn_app, TestApp};
use learning_chat::auth::keys::KeyLimits;
use learning_chat::auth::limits::{KeyLimiter, LimitKind, Subject};
use learning_chat::config::{AdmissionSettings, Secret, Settings};
use learning_chat::config::{AuthMode, DatabaseUrl};
use learning_chat::redis_link::RedisLink;
use reqwest::StatusCode;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

async fn start_cluster() -> Arc<RedisCluster> {
    Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
            .await
            .expect("cluster"),
    )
}

/// One "server": its own link to the cluster and its own limiter.
async fn limiter(cluster: &RedisCluster) -> KeyLimiter {
    let mut settings = Settings::default();
    settings.redis.cluster_nodes = cluster.addrs().into_iter().map(Secret::new).collect();
    settings.redis.command_timeout = Duration::from_secs(2);
    limiter_of(&settings).await
}

/// A limiter of one of two servers on the Redis of `settings`, once that Redis answers.
pub(crate) async fn limiter_of(settings: &Settings) -> KeyLimiter {
    let link = RedisLink::new(&settings.redis).expect("link");
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !link.probe().await {
        assert!(std::time::Instant::now() < until, "Redis never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    KeyLimiter::new(
        Some(link),
        NonZeroU32::new(2).unwrap(),
        Duration::from_secs(35),
        &AdmissionSettings::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_windows_share_one_slot_and_two_servers_grant_exactly_its_limit() {
    let cluster = start_cluster().await;
    let servers = [limiter(&cluster).await, limiter(&cluster).await];
    let limits = KeyLimits {
        rpm: 10,
        tokens_per_day: 1_000_000,
        concurrency: 50,
        learner_rpm: 100,
        learner_tokens_per_day: 1_000_000,
    };
    let mut granted = 0;
    let mut refused = Vec::new();
    for i in 0..30 {
        let subject = Subject {
            key_id: "key_0123456789ab".into(),
            learner: Some(format!("{:032x}", i % 3)),
            member: format!("request-{i}"),
        };
        let server = &servers[i % 2];
        let decision = server.acquire(&limits, &subject).await;
        // Decided by Redis for the whole cluster, never by one server alone.
        assert!(
            !decision.local,
            "request {i} was decided locally: a script failed"
        );
        match decision.refused {
            None => {
                granted += 1;
                server.finish(&limits, &subject, &decision, 10).await;
            }
            Some(kind) => refused.push(kind),
        }
    }
    assert_eq!(
        granted, 10,
        "exactly the key's 10 a minute across both servers"
    );
    assert!(
        refused.iter().all(|k| *k == LimitKind::KeyRpm),
        "{refused:?}"
    );

    // Every key the limits wrote (the key's windows, its learners', the totals) is in one slot.
    let keys: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| {
            n.cli(&["--scan", "--pattern", "learning-chat:limit:*"])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(keys.len() >= 5, "{keys:?}");
    assert!(keys.iter().any(|k| k.contains(":learner:")), "{keys:?}");
    let slots: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|k| cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", k]))
        .collect();
    assert_eq!(slots.len(), 1, "{keys:?} in slots {slots:?}");
}

/// The sum of `learning_chat_redis_failures_total{operation="key_limit"}` on `app`'s metrics
/// listener (0 when the series was never made).
async fn key_limit_failures(app: &TestApp) -> f64 {
    let text = app
        .client
        .get(app.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("learning_chat_redis_failures_total{"))
        .filter(|l| l.contains(r#"operation="key_limit""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_a_minute_key_gets_exactly_10_answers_across_two_servers_on_a_redis_cluster() {
    let cluster = start_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let records = format!("sqlite://{}", dir.path().join("records.db").display());
    let (_, secret) = create_key_on(&records, &["--name", "cluster-school", "--rpm", "10"]);
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut settings = offline_settings();
        settings.auth.mode = AuthMode::Required;
        settings.auth.pepper = Secret::new(PEPPER);
        settings.database.url = DatabaseUrl::new(records.clone());
        settings.redis.cluster_nodes = cluster.addrs().into_iter().map(Secret::new).collect();
        settings.redis.replicas = NonZeroU32::new(2).unwrap();
        // Not a test of slow Redis: a reply slower than the default on a loaded machine would
        // count as the failure this test is about.
        settings.redis.command_timeout = Duration::from_secs(2);
        apps.push(spawn_app(settings).await);
    }
    assert!(
        wait_all_redis(&apps, "up", Duration::from_secs(15)).await,
        "the servers never connected to the cluster"
    );
    let mut answered = 0;
    for i in 0..30 {
        let app = &apps[i % 2];
        let reply = app
            .client
            .post(app.url("/api/v1/agents/math"))
            .bearer_auth(&secret)
            .json(&serde_json::json!({ "message": format!("Question {i}") }))
            .send()
            .await
            .expect("the server answers");
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        match status {
            StatusCode::OK => answered += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "key_rate_limited", "{body}");
            }
            other => panic!("request {i}: {other} {body}"),
        }
    }
    assert_eq!(
        answered, 10,
        "exactly the key's 10 a minute across both servers"
    );
    for app in &apps {
        assert_eq!(
            key_limit_failures(app).await,
            0.0,
            "no limit check failed over to one server alone"
        );
    }
}
