//! Redis Cluster with real processes: three masters with a replica each, made by
//! `redis-cli --cluster create` on free ports, and three service instances using it through
//! `redis.cluster_nodes`. Every script's keys carry one hash tag, so they share a slot (a
//! CROSSSLOT error would send every call to its fallback and show as model calls). The master
//! holding the quota's slot is SIGKILLed under an open load; its replica takes over.

use super::ha_load::{assert_nothing_lost, question, quota_sim, server_settings};
use super::ha_load::{ARRIVAL, KILL_AT, REQUESTS, SERVERS};
use crate::support::redis_ha::{open_load, wait_all_redis, wait_until, RedisCluster};
use crate::support::{fixed_latency, spawn_app, start_sim, TestApp};
use futures::future::join_all;
use gemini_sim::SimConfig;
use learning_chat::config::Secret;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The key of the quota's requests, whose slot's master is killed.
const QUOTA_KEY: &str = "learning-chat:quota:{model:gemini-2.5-flash}:requests";

async fn servers(cluster: &RedisCluster, sim: &gemini_sim::SimServer) -> Vec<TestApp> {
    servers_with(cluster, sim, |_| {}).await
}

/// As [`servers`], with `tweak` applied to every server's settings.
async fn servers_with(
    cluster: &RedisCluster,
    sim: &gemini_sim::SimServer,
    tweak: impl Fn(&mut learning_chat::Settings),
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..SERVERS {
        let mut settings = server_settings(sim);
        settings.redis.cluster_nodes = cluster.addrs().into_iter().map(Secret::new).collect();
        tweak(&mut settings);
        apps.push(spawn_app(settings).await);
    }
    assert!(
        wait_all_redis(&apps, "up", Duration::from_secs(15)).await,
        "the servers never connected to the cluster"
    );
    apps
}

async fn start_cluster() -> Arc<RedisCluster> {
    Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .expect("cluster"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_on_a_cluster_one_call_per_question_and_one_quota() {
    let cluster = start_cluster().await;
    let sim = start_sim(SimConfig {
        latency: fixed_latency(300),
        ..SimConfig::default()
    })
    .await;
    // Not a test of slow Redis: on a loaded machine a reply slower than the default 250 ms would
    // count as a failure below, which is about scripts the cluster refuses (CROSSSLOT).
    let apps = servers_with(&cluster, &sim, |s| {
        s.redis.command_timeout = Duration::from_secs(2)
    })
    .await;
    let asks = (0..60).map(|i| apps[i % SERVERS].ask("science", "How do vaccines work?"));
    for reply in join_all(asks).await {
        assert_eq!(reply.status(), StatusCode::OK);
    }
    assert_eq!(
        sim.stats().requests,
        1,
        "one model call for 60 asks on 3 servers"
    );
    // The answer, and the question's lease/outcome keys, live in the slot of its hash tag.
    let answers: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| {
            n.cli(&["--scan", "--pattern", "learning-chat:answer:*"])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!answers.is_empty(), "the answer is in the cluster");
    assert!(
        answers.iter().all(|k| k.contains(":{") && k.ends_with('}')),
        "{answers:?}"
    );
    // Nothing went to a fallback: a CROSSSLOT script would have failed over to local mode.
    let metrics = apps[0]
        .client
        .get(apps[0].metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("learning_chat_redis_failures_total"))
        .collect();
    assert!(
        failures.iter().all(|l| l.ends_with(" 0")),
        "redis failures: {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_costs_no_request_and_its_replica_takes_over() {
    let cluster = start_cluster().await;
    let sim = quota_sim().await;
    let apps = servers(&cluster, &sim).await;
    let victim = cluster
        .nodes
        .iter()
        .position(|n| {
            cluster
                .master_of(QUOTA_KEY)
                .is_some_and(|m| m.port == n.port)
        })
        .expect("a master for the quota slot");

    let load = open_load(&apps, REQUESTS, ARRIVAL, question);
    let failover = async {
        tokio::time::sleep(KILL_AT).await;
        let killed = Instant::now();
        cluster.nodes[victim].kill();
        let watched = cluster.clone();
        let healed = tokio::task::spawn_blocking(move || {
            // Until a live node serves the slot as master and the cluster says it is whole.
            wait_until(Duration::from_secs(30), || {
                watched.master_of(QUOTA_KEY).is_some() && watched.all_ok()
            })
        })
        .await
        .expect("watcher");
        let healed_after = killed.elapsed();
        let followed = wait_all_redis(&apps, "up", Duration::from_secs(30)).await;
        (healed, healed_after, followed, killed.elapsed())
    };
    let (report, (healed, healed_after, followed, followed_after)) = tokio::join!(load, failover);
    let stats = sim.stats();
    eprintln!(
        "cluster failover: slot served again {healed_after:?} after the kill, servers up \
         {followed_after:?} after; {report:?}; upstream requests {} (429: {}), distinct \
         answered {}",
        stats.requests, stats.rate_limited, report.distinct_answered
    );
    assert!(healed, "the replica never took over");
    assert!(followed, "the servers never used the cluster again");
    assert_nothing_lost(&report, &stats);
    let new_master = cluster.master_of(QUOTA_KEY).expect("quota slot served");
    let counted: u64 = new_master.cli(&["ZCARD", QUOTA_KEY]).parse().unwrap_or(0);
    assert!(
        counted >= stats.requests,
        "quota on the new master: {counted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_the_quota_slot_under_load_costs_no_request() {
    let cluster = start_cluster().await;
    let sim = quota_sim().await;
    let apps = servers(&cluster, &sim).await;
    let from = cluster.master_of(QUOTA_KEY).expect("quota master").port;

    let load = open_load(&apps, REQUESTS, ARRIVAL, question);
    let reshard = async {
        tokio::time::sleep(KILL_AT).await;
        let moving = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let masters = moving.masters();
            let source = masters.iter().find(|m| m.port == from).expect("source");
            let target = masters.iter().find(|m| m.port != from).expect("target");
            let moved = moving.reshard_all(source, target);
            (moved, target.port)
        })
        .await
        .expect("reshard")
    };
    let (report, (moved, target)) = tokio::join!(load, reshard);
    let stats = sim.stats();
    eprintln!(
        "cluster resharding: {report:?}; upstream requests {} (429: {}), distinct answered {}",
        stats.requests, stats.rate_limited, report.distinct_answered
    );
    assert!(moved, "redis-cli --cluster reshard failed");
    let owner = cluster.master_of(QUOTA_KEY).expect("quota slot served");
    assert_eq!(owner.port, target, "the quota slot moved");
    assert_nothing_lost(&report, &stats);
    let counted: u64 = owner.cli(&["ZCARD", QUOTA_KEY]).parse().unwrap_or(0);
    assert!(counted >= stats.requests, "quota after the move: {counted}");
}
