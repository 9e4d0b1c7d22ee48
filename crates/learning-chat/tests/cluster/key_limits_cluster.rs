//! Per-key limits on a real Redis Cluster (three masters made by `redis-cli --cluster create`):
//! every window of a key and of its learners lives under the key id's hash tag, in ONE slot, so
//! the sliding-window script never spans slots (a CROSSSLOT error would make every check fall
//! back to this server alone, and two servers would let twice the limit through).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::redis_ha::RedisCluster;
use learning_chat::auth::keys::KeyLimits;
use learning_chat::auth::limits::{KeyLimiter, LimitKind, Subject};
use learning_chat::config::{AdmissionSettings, Secret, Settings};
use learning_chat::redis_link::RedisLink;
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
    let link = RedisLink::new(&settings.redis).expect("link");
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !link.probe().await {
        assert!(
            std::time::Instant::now() < until,
            "the cluster never answered"
        );
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
