//! The cluster quota across Redis trouble, measured from outside: three servers behind the shipped
//! nginx config, one Redis, a simulator enforcing the same requests-per-minute quota, an open load
//! above the quota; Redis is SIGKILLed, restarted empty, then one server is SIGKILLed. The upstream
//! must never see more than the quota in any 60 s window, so it never answers 429.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::cluster::{Cluster, ClusterConfig};
use futures::future::join_all;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// The quota of the simulator and of the service (small, so a run fits in two minutes).
const RPM: u32 = 120;
/// Offered load: 5 requests a second, two and a half times the quota.
const ARRIVAL_MS: u64 = 200;
/// Length of the load; more than one quota window after Redis came back.
const LOAD: Duration = Duration::from_secs(95);

/// Question `i` of the load: mostly distinct (each costs one upstream call), every fourth one of
/// a few popular questions, more popular the lower its rank (answered from the cache once known).
fn question(i: u64) -> String {
    if i.is_multiple_of(4) {
        // Zipf-ish: of every 16 popular picks, 8 are question 0, 3 question 1, 1 question 15.
        let popular = 16 / ((i / 4) % 16 + 1) - 1;
        format!("popular question {popular}")
    } else {
        format!("distinct question {i}")
    }
}

#[tokio::test]
async fn redis_killed_restarted_empty_and_a_server_killed_never_push_the_upstream_past_its_quota() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--latency-ms".into(),
            "200".into(),
            "--rpm".into(),
            RPM.to_string(),
        ],
        rpm: RPM,
        request_timeout_secs: 5,
        ..ClusterConfig::default()
    })
    .await;
    let started = Instant::now();
    let count = LOAD.as_millis() as u64 / ARRIVAL_MS;
    // An open load: each request leaves at its time, whether or not earlier ones were answered.
    let asks = join_all((0..count).map(|i| {
        let cluster = &cluster;
        async move {
            let due = started + Duration::from_millis(i * ARRIVAL_MS);
            tokio::time::sleep_until(due.into()).await;
            cluster.ask("writing", question(i)).await
        }
    }));
    let trouble = async {
        tokio::time::sleep_until((started + Duration::from_secs(10)).into()).await;
        cluster.redis.kill();
        tokio::time::sleep_until((started + Duration::from_secs(25)).into()).await;
        // No persistence: it comes back empty, the quota window forgotten.
        cluster.redis.restart();
        assert_eq!(cluster.redis.cli(&["DBSIZE"]), "0");
        tokio::time::sleep_until((started + Duration::from_secs(35)).into()).await;
        cluster.servers[0].signal("-KILL");
    };
    let (statuses, ()) = tokio::join!(asks, trouble);

    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let stats = cluster.sim_stats().await;
    let timeline = cluster.sim_timeline().await;
    let busiest = timeline.max_in_window(60_000, |status| status != 429);
    let busiest_all = timeline.max_in_window(60_000, |_| true);
    eprintln!(
        "cluster quota figures: offered {} answered {ok} shed {shed} other {}; upstream saw {} \
         requests, {} answered 429, busiest 60 s window {busiest} admitted ({busiest_all} with \
         429s), quota {RPM}",
        statuses.len(),
        statuses.len() - ok - shed,
        stats.requests,
        stats.rate_limited
    );
    assert_eq!(
        stats.rate_limited, 0,
        "the upstream had to refuse requests: {stats:?}"
    );
    assert!(
        busiest_all <= RPM as usize,
        "{busiest_all} upstream requests within one 60 s window (quota {RPM})"
    );
    // The fallback was really taken and the restored window really rebuilt (server 0 is gone).
    let mut local_decisions = 0.0;
    let mut republished = 0.0;
    for server in &cluster.servers[1..] {
        local_decisions += cluster
            .metric_sum(
                server.metrics_port(),
                "learning_chat_quota_local_decisions_total",
                "",
            )
            .await;
        republished += cluster
            .metric_sum(
                server.metrics_port(),
                "learning_chat_quota_republished_total",
                "",
            )
            .await;
    }
    eprintln!("surviving servers: {local_decisions} local quota decisions, {republished} calls re-published");
    assert!(local_decisions > 0.0, "no quota decision was taken locally");
    assert!(
        republished > 0.0,
        "no call was written back into the restarted Redis"
    );
    // The quota was still used, not just refused: well over one window's worth of calls ran.
    assert!(
        stats.ok >= u64::from(RPM),
        "only {} upstream calls answered in {LOAD:?}",
        stats.ok
    );
}
