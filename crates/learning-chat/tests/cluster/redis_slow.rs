//! A slow Redis is not a down Redis: replies slower than `redis.command_timeout_ms` must not send
//! every server to the model for the same question while Redis still counts as up.

use crate::support::cluster::{Cluster, ClusterConfig};
use futures::future::join_all;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// Lease looks of one server that failed or timed out, from its own /metrics.
async fn lease_look_failures(cluster: &Cluster, port: u16) -> f64 {
    cluster
        .metric_sum(
            port,
            "learning_chat_redis_failures_total",
            r#"operation="lease_look""#,
        )
        .await
}

#[tokio::test]
async fn identical_questions_while_redis_is_frozen_briefly_make_one_call_once_it_resumes() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec!["--latency-ms".into(), "300".into()],
        server_env: vec![
            // The default: the freeze below outlasts it.
            (
                "LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS".into(),
                "250".into(),
            ),
            // Slow, not down: this many timeouts in a row would switch a server to local
            // mode (its own model call, the documented degraded behaviour), which the freeze
            // below never reaches.
            (
                "LEARNING_CHAT_REDIS__DOWN_AFTER_FAILURES".into(),
                "1000".into(),
            ),
        ],
        ..ClusterConfig::default()
    })
    .await;
    cluster.redis.freeze();
    // The same new question on each server, directly (not through nginx), so all three wait.
    let asks = cluster.servers.iter().map(|server| {
        let url = format!("http://127.0.0.1:{}/api/v1/agents/history", server.port);
        let http = cluster.http.clone();
        async move {
            http.post(url)
                .json(&serde_json::json!({"message": "Why did the Bronze Age collapse?"}))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    let asking = tokio::spawn(join_all(asks));
    // Thaw only once every server has seen a lease look time out: before the fix, each of them
    // asked the model right after that one slow reply.
    let until = Instant::now() + Duration::from_secs(60);
    for server in &cluster.servers {
        while lease_look_failures(&cluster, server.metrics_port()).await < 1.0 {
            assert!(
                Instant::now() < until,
                "server {} never timed out on a lease look",
                server.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let during = cluster.sim_stats().await.requests;
    cluster.redis.thaw();
    let statuses = asking.await.expect("asks");
    for status in &statuses {
        assert_eq!(status.as_ref().ok(), Some(&StatusCode::OK), "{statuses:?}");
    }
    assert_eq!(
        during, 0,
        "a server asked the model while Redis was only slow"
    );
    assert_eq!(cluster.sim_stats().await.requests, 1);
    for server in &cluster.servers {
        cluster.wait_redis_state(server.port, "up").await;
    }
}
