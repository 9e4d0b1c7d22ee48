//! The multi-server topology (nginx in front, one shared Redis) with real processes on free
//! loopback ports: redis-server, gemini-sim, three learning-chat servers and nginx running
//! deploy/nginx/learning-chat.conf. N servers must behave like one: one cache, one upstream call
//! per distinct question, one quota, and no request lost when a server stops or Redis dies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::cluster::{Cluster, ClusterConfig};
use futures::future::join_all;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// Enough load ran, and every request of it was answered.
fn assert_all_answered_under_load(statuses: &[StatusCode]) {
    let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
    assert!(statuses.len() > 100, "too little load: {}", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

#[tokio::test]
async fn requests_spread_over_all_servers_and_each_distinct_question_costs_one_call() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    const DISTINCT: usize = 12;
    const ASKED: usize = 8;
    // Every question asked 8 times, in rounds of concurrent requests.
    let mut statuses = Vec::new();
    for _ in 0..ASKED {
        let asks = (0..DISTINCT).map(|q| cluster.ask("math", format!("distinct question {q}")));
        statuses.extend(join_all(asks).await);
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let stats = cluster.sim_stats().await;
    assert_eq!(
        stats.requests, DISTINCT as u64,
        "exactly one upstream call per distinct question"
    );
    for server in &cluster.servers {
        let served = cluster.chat_requests_served(server.metrics_port()).await;
        assert!(served > 0.0, "server {} got no requests", server.port);
    }
}

#[tokio::test]
async fn a_hundred_identical_new_questions_across_servers_make_one_upstream_call() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec!["--latency-ms".into(), "1500".into()],
        // Not a test of slow Redis (redis_slow.rs is): on a loaded machine a Redis reply slower
        // than the default 250 ms must not decide the count.
        server_env: vec![(
            "LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS".into(),
            "2000".into(),
        )],
        ..ClusterConfig::default()
    })
    .await;
    let asks =
        (0..100).map(|_| cluster.ask("history", "Why did the Roman Empire fall?".to_owned()));
    let statuses = join_all(asks).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(cluster.sim_stats().await.requests, 1);
    let mut busy_servers = 0;
    for server in &cluster.servers {
        if cluster.chat_requests_served(server.metrics_port()).await > 0.0 {
            busy_servers += 1;
        }
    }
    assert!(
        busy_servers >= 2,
        "the 100 requests reached only {busy_servers} server(s)"
    );
}

#[tokio::test]
async fn stopping_one_server_with_sigterm_mid_load_fails_no_request() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let statuses = cluster
        .load_while(12, Duration::from_secs(6), || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.servers[1].signal("-TERM");
        })
        .await;
    assert_all_answered_under_load(&statuses);
    let exit = cluster.servers[1].wait_exit(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the stopped server exits 0: {exit:?}"
    );
}

#[tokio::test]
async fn killing_redis_mid_load_fails_no_request_and_servers_reconnect() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let redis_port = cluster.redis.port;
    let statuses = cluster
        .load_while(12, Duration::from_secs(7), || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.redis.restart();
        })
        .await;
    assert_all_answered_under_load(&statuses);
    assert_eq!(cluster.redis.port, redis_port);
    for server in &cluster.servers {
        cluster.wait_redis_state(server.port, "up").await;
    }
}

#[tokio::test]
async fn the_cluster_never_exceeds_the_shared_quota_and_uses_it() {
    const RPM: u32 = 120;
    let cluster = Cluster::start(ClusterConfig {
        // The simulator enforces the same quota: any excess would show up as a 429.
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
    // Twice the quota offered for 60 s: 4 distinct questions per second.
    let started = Instant::now();
    let mut asks = Vec::new();
    for i in 0..240u64 {
        let due = started + Duration::from_millis(i * 250);
        let cluster = &cluster;
        asks.push(async move {
            tokio::time::sleep_until(due.into()).await;
            cluster.ask("writing", format!("quota question {i}")).await
        });
    }
    let statuses = join_all(asks).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        ok + shed,
        statuses.len(),
        "only answers and 503s: {statuses:?}"
    );
    let stats = cluster.sim_stats().await;
    assert_eq!(
        stats.rate_limited, 0,
        "the simulator never had to refuse: {stats:?}"
    );
    let timeline = cluster.sim_timeline().await;
    let busiest = timeline.max_in_window(60_000, |status| status != 429);
    assert!(
        busiest <= RPM as usize,
        "{busiest} requests within one 60 s window"
    );
    let first = timeline.arrival_ms.first().copied().unwrap_or(0);
    let in_first_minute = timeline
        .arrival_ms
        .iter()
        .filter(|t| **t < first + 60_000)
        .count();
    assert!(
        in_first_minute * 100 >= RPM as usize * 95,
        "only {in_first_minute} of {RPM} quota slots used in the first minute"
    );
    assert_eq!(ok as u64, stats.ok);
    eprintln!(
        "quota figures: offered {} answered {ok} shed {shed}; simulator saw {} requests, \
         {} rate-limited, busiest 60 s window {busiest}, first minute {in_first_minute} of {RPM}",
        statuses.len(),
        stats.requests,
        stats.rate_limited
    );
}

/// A conversation started through nginx is continued by every server of the cluster, each answering
/// with the earlier turns as context, and its erasure is seen by all of them.
#[tokio::test]
async fn every_server_behind_nginx_continues_a_conversation_with_its_context() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let first: serde_json::Value = cluster
        .http
        .post(cluster.nginx_url("/api/v1/agents/math"))
        .json(&serde_json::json!({"message": "What is a derivative?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(first["turn"], 1, "{first}");
    // Each server directly, so every one of them is shown to continue it.
    for (n, server) in cluster.servers.iter().enumerate() {
        let reply: serde_json::Value = cluster
            .http
            .post(format!("http://127.0.0.1:{}/api/v1/agents/math", server.port))
            .json(&serde_json::json!({"message": "Can you show me an example?", "conversation_id": id}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["conversation_id"], id.as_str(), "{reply}");
        assert_eq!(reply["turn"], 2 + n, "{reply}");
        // gemini-sim's answer to a follow-up names the conversation's first topic: the history
        // reached the model through whichever server took the message.
        let text = reply["response"].as_str().unwrap();
        assert!(text.starts_with("Following on from"), "server {n}: {text}");
    }
    let erased = cluster
        .http
        .delete(cluster.nginx_url(&format!("/api/v1/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    for server in &cluster.servers {
        let gone = cluster
            .http
            .get(format!(
                "http://127.0.0.1:{}/api/v1/conversations/{id}",
                server.port
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    }
}
