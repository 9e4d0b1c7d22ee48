//! The state model across servers (issue 22): Redis is a cache and a coordinator that may be
//! flushed or squeezed at any moment; keys and conversations live in the records database, so
//! neither a `FLUSHALL` under load nor an `allkeys-lru` Redis full of answers costs a key, a turn
//! or a conversation, and the quota still holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::auth::{auth_env, create_key};
use crate::support::cluster::{Cluster, ClusterConfig};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One message through nginx with `secret`; the status and the body.
async fn say(
    cluster: &Cluster,
    secret: &str,
    message: &str,
    conversation: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = serde_json::json!({ "message": message });
    if let Some(id) = conversation {
        body["conversation_id"] = Value::from(id);
    }
    let reply = cluster
        .http
        .post(cluster.nginx_url("/api/v1/agents/math"))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .expect("nginx answers");
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn turns(cluster: &Cluster, secret: &str, id: &str) -> usize {
    let reply: Value = cluster
        .http
        .get(cluster.nginx_url(&format!("/api/v1/conversations/{id}")))
        .bearer_auth(secret)
        .send()
        .await
        .expect("nginx answers")
        .json()
        .await
        .expect("a conversation");
    reply["turns"].as_array().map_or(0, Vec::len)
}

/// Conversations started and continued once (so they are stored), through nginx.
async fn stored_conversations(cluster: &Cluster, secret: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let (status, first) = say(
            cluster,
            secret,
            &format!("Topic {n}: what is a prime?"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{first}");
        let id = first["conversation_id"].as_str().unwrap().to_owned();
        let (status, second) = say(cluster, secret, "Why?", Some(&id)).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(second["turn"], 2, "{second}");
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn flushall_under_load_loses_no_key_no_turn_and_keeps_the_quota() {
    const RPM: u32 = 30;
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--latency-ms".into(),
            "50".into(),
            "--rpm".into(),
            RPM.to_string(),
        ],
        rpm: RPM,
        request_timeout_secs: 10,
        server_env: auth_env(),
        ..ClusterConfig::default()
    })
    .await;
    let (_, secret) = create_key(&cluster, &["--name", "school"]).await;
    let ids = stored_conversations(&cluster, &secret, 3).await;
    let mut expected_turns = vec![4usize; ids.len()];
    let started = Instant::now();
    let mut unique = 0;
    // Bounded: 16 rounds, each a follow-up per conversation, cached one-shots and two new
    // questions, more model calls than the quota allows in a minute; Redis is flushed in the
    // middle. A refused message (503 for the quota) stores nothing; an answered one is a turn.
    for round in 0..16 {
        if round == 8 {
            assert_eq!(cluster.redis.cli(&["FLUSHALL"]), "OK");
        }
        for (n, id) in ids.iter().enumerate() {
            let (status, reply) =
                say(&cluster, &secret, &format!("And step {round}?"), Some(id)).await;
            match status {
                StatusCode::OK => {
                    expected_turns[n] += 2;
                    assert_eq!(
                        reply["turn"],
                        expected_turns[n] / 2,
                        "no turn lost: {reply}"
                    );
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(reply["error"]["code"], "overloaded", "{reply}")
                }
                _ => panic!("round {round}: {status} {reply}"),
            }
        }
        for _ in 0..5 {
            let (status, reply) = say(&cluster, &secret, "Topic 0: what is a prime?", None).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a cached answer, round {round}: {reply}"
            );
        }
        for _ in 0..2 {
            unique += 1;
            let (status, reply) =
                say(&cluster, &secret, &format!("New question {unique}?"), None).await;
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "answered or refused for the quota, never 401: {status} {reply}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "bounded in time"
        );
    }
    assert!(
        expected_turns.iter().sum::<usize>() > 4 * ids.len(),
        "some follow-ups were answered: {expected_turns:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            turns(&cluster, &secret, id).await,
            expected_turns[n],
            "conversation {n}"
        );
    }
    let stats = cluster.sim_stats().await;
    assert_eq!(
        stats.rate_limited, 0,
        "the quota held through the flush: {stats:?}"
    );
}

#[tokio::test]
async fn a_full_allkeys_lru_redis_evicts_answers_never_keys_or_conversations() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec!["--latency-ms".into(), "5".into()],
        request_timeout_secs: 10,
        server_env: auth_env(),
        ..ClusterConfig::default()
    })
    .await;
    // A small Redis that evicts whatever was used least recently, as deploy/ ships it.
    assert_eq!(
        cluster.redis.cli(&["CONFIG", "SET", "maxmemory", "20mb"]),
        "OK"
    );
    assert_eq!(
        cluster
            .redis
            .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]),
        "OK"
    );
    let (_, secret) = create_key(&cluster, &["--name", "class 7b"]).await;
    let ids = stored_conversations(&cluster, &secret, 3).await;
    // Flood Redis past its memory with answers (each question padded to ~3.5 KB, which the
    // cached answer keeps), 50 at a time, bounded at 10,000 questions.
    let pad = "x".repeat(3_500);
    let mut evicted = false;
    for batch in 0..200 {
        let replies = futures::future::join_all((0..50).map(|i| {
            let message = format!("Flood {batch}-{i} {pad}?");
            let (cluster, secret) = (&cluster, &secret);
            async move { say(cluster, secret, &message, None).await }
        }))
        .await;
        for (status, reply) in replies {
            assert_eq!(status, StatusCode::OK, "flood {batch}: {reply}");
        }
        if batch % 5 == 4 {
            let info = cluster.redis.cli(&["INFO", "stats"]);
            evicted = info
                .lines()
                .find_map(|l| l.strip_prefix("evicted_keys:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|v| v > 0);
            if evicted {
                break;
            }
        }
    }
    assert!(evicted, "Redis filled up and evicted");
    for id in &ids {
        let (status, reply) = say(&cluster, &secret, "And then?", Some(id)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the conversation continues: {reply}"
        );
        assert_eq!(reply["turn"], 3, "{reply}");
    }
}
