//! Redis Sentinel with real processes: a master, a replica and three `redis-server --sentinel`
//! on free ports, three service instances finding the master through the sentinels. The master
//! is SIGKILLed under an open load; the sentinels promote the replica and the service follows it.
//! Counted: failed requests (none allowed: quota refusals are the only documented non-200),
//! model calls against distinct questions, and the upstream's own quota count (no 429).

use super::ha_load::{assert_nothing_lost, question, quota_sim, server_settings};
use super::ha_load::{ARRIVAL, KILL_AT, POPULAR, REQUESTS, SERVERS};
use crate::support::redis_ha::{open_load, wait_all_redis, wait_until, SentinelGroup, MASTER_NAME};
use crate::support::{spawn_app, TestApp};
use futures::future::join_all;
use learning_chat::config::Secret;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn servers(group: &SentinelGroup, sim: &gemini_sim::SimServer) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..SERVERS {
        let mut settings = server_settings(sim);
        settings.redis.sentinels = group
            .sentinel_addrs()
            .into_iter()
            .map(Secret::new)
            .collect();
        settings.redis.sentinel_master = MASTER_NAME.to_owned();
        apps.push(spawn_app(settings).await);
    }
    assert!(
        wait_all_redis(&apps, "up", Duration::from_secs(15)).await,
        "the servers never found the master through the sentinels"
    );
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_costs_no_request_and_the_service_follows_the_new_master() {
    let group = Arc::new(
        tokio::task::spawn_blocking(SentinelGroup::start)
            .await
            .expect("sentinel group"),
    );
    let sim = quota_sim().await;
    let apps = servers(&group, &sim).await;
    let old_master = group.master.port;
    let new_master = group.replica.port;

    let load = open_load(&apps, REQUESTS, ARRIVAL, question);
    let failover = async {
        tokio::time::sleep(KILL_AT).await;
        let killed = Instant::now();
        group.master.kill();
        // When the sentinels name the replica, then when every server uses Redis again.
        let watched = group.clone();
        let promoted = tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(30), || {
                watched.master_port() == Some(watched.replica.port)
            })
        })
        .await
        .expect("watcher");
        let promoted_after = killed.elapsed();
        // Give the servers time to notice (calls fail, marked down), then wait for all up.
        let followed = wait_all_redis(&apps, "up", Duration::from_secs(30)).await;
        (promoted, promoted_after, followed, killed.elapsed())
    };
    let (report, (promoted, promoted_after, followed, followed_after)) =
        tokio::join!(load, failover);
    let stats = sim.stats();
    eprintln!(
        "sentinel failover: replica promoted {promoted_after:?} after the kill, servers on it \
         {followed_after:?} after; {report:?}; upstream requests {} (429: {}), distinct answered \
         {}",
        stats.requests, stats.rate_limited, report.distinct_answered
    );
    assert!(promoted, "the sentinels never promoted the replica");
    assert!(followed, "the servers never used the new master");
    assert_ne!(old_master, new_master);
    assert_nothing_lost(&report, &stats);

    // The shared state now lives on the promoted replica: the quota's reservations, and
    // answers written after the failover (the quota being spent, popular answers are asked for).
    let promoted_node = &group.replica;
    let quota = promoted_node.cli(&[
        "ZCARD",
        "learning-chat:quota:{model:gemini-2.5-flash}:requests",
    ]);
    // Every call sent is counted there (lost un-replicated entries were written back).
    let counted = quota.parse::<u64>().unwrap_or(0);
    assert!(
        counted >= stats.requests,
        "quota on the new master: {quota}"
    );
    let before = sim.stats().requests;
    let asks = (0..30).map(|i| apps[i % SERVERS].ask("math", question(4 * (i as u64 % POPULAR))));
    for reply in join_all(asks).await {
        assert_eq!(reply.status(), StatusCode::OK);
    }
    assert_eq!(
        sim.stats().requests,
        before,
        "popular answers come from the cache"
    );
    let answers = promoted_node.cli(&["--scan", "--pattern", "learning-chat:answer:*"]);
    assert!(
        answers.lines().count() >= POPULAR as usize,
        "answers on the new master: {answers}"
    );
}
