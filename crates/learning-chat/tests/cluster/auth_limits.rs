//! Per-key limits across servers: request and token budgets hold on every server at once, and
//! a key offering ten times the load of another does not starve it (fair sharing).

use super::auth::{ask, auth_env, away_from_minute_end, create_key, server_url};
use crate::support::cluster::{Cluster, ClusterConfig};
use futures::future::join_all;
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn per_key_request_and_token_budgets_hold_across_servers() {
    let cluster = Cluster::start(ClusterConfig {
        server_env: auth_env(),
        ..ClusterConfig::default()
    })
    .await;
    let (_, limited) = create_key(&cluster, &["--name", "rpm", "--rpm", "10"]).await;
    away_from_minute_end(Duration::from_secs(15)).await;
    // 24 distinct questions spread over the three servers: exactly 10 answered.
    let mut ok = 0;
    let mut limited_replies = 0;
    for i in 0..24 {
        let reply = ask(
            &cluster,
            server_url(&cluster, i % 3, "math"),
            Some(&limited),
            &[],
            format!("rpm question {i}"),
        )
        .await;
        match reply.status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(reply.headers["ratelimit-limit"], "10");
                assert_eq!(
                    reply.headers["ratelimit-remaining"].to_str().unwrap(),
                    (10 - ok).to_string()
                );
                assert!(reply.headers.contains_key("ratelimit-reset"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                limited_replies += 1;
                assert_eq!(reply.body["error"]["code"], "key_rate_limited");
                assert!(reply.headers.contains_key("retry-after"));
                assert_eq!(reply.headers["ratelimit-remaining"], "0");
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!((ok, limited_replies), (10, 14));

    // A daily token budget: answered until the budget is spent, then refused everywhere.
    let before = cluster.sim_stats().await;
    let (_, budgeted) =
        create_key(&cluster, &["--name", "tokens", "--tokens-per-day", "1500"]).await;
    let mut spent = 0u64;
    let mut answered = 0u64;
    let mut refused_at = None;
    for i in 0..60 {
        let reply = ask(
            &cluster,
            server_url(&cluster, i % 3, "science"),
            Some(&budgeted),
            &[],
            format!("token question {i}"),
        )
        .await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.body["error"]["code"], "key_token_budget_exhausted");
            refused_at = Some(i);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["cached"], false);
        answered += 1;
        spent += reply.body["usage"]["prompt_tokens"].as_u64().unwrap()
            + reply.body["usage"]["output_tokens"].as_u64().unwrap();
    }
    assert!(
        refused_at.is_some(),
        "the budget never bound (spent {spent})"
    );
    // Refused as soon as the budget was spent, not before, and no later than one answer after.
    assert!(spent >= 1500, "refused early at {spent} tokens");
    let last = spent / answered;
    assert!(spent < 1500 + 2 * last, "overspent: {spent}");
    // Upstream saw exactly the calls the key was charged for.
    let after = cluster.sim_stats().await;
    assert_eq!(after.requests - before.requests, answered);
    // A cached answer is still served (it costs no tokens, only a request).
    let (_, fresh) = create_key(&cluster, &["--name", "cache", "--tokens-per-day", "1"]).await;
    let first = ask(
        &cluster,
        server_url(&cluster, 0, "science"),
        Some(&fresh),
        &[],
        "token question 0".into(),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["cached"], true);
    let second = ask(
        &cluster,
        server_url(&cluster, 1, "science"),
        Some(&fresh),
        &[],
        "token question 1".into(),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["cached"], true);

    // Per learner: one learner's limit does not stop another learner of the same key.
    let (_, class) = create_key(&cluster, &["--name", "learners", "--learner-rpm", "2"]).await;
    let as_learner = |who: &'static str, i: usize| {
        let cluster = &cluster;
        let class = class.clone();
        async move {
            ask(
                cluster,
                server_url(cluster, i % 3, "math"),
                Some(&class),
                &[("x-learner-id", who)],
                format!("learner {who} {i}"),
            )
            .await
        }
    };
    assert_eq!(as_learner("ana", 0).await.status, StatusCode::OK);
    assert_eq!(as_learner("ana", 1).await.status, StatusCode::OK);
    let third = as_learner("ana", 2).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.body["error"]["code"], "learner_rate_limited");
    assert_eq!(as_learner("ben", 3).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_key_offering_ten_times_the_load_of_another_does_not_starve_it() {
    const RPM: u64 = 60;
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--latency-ms".into(),
            "500".into(),
            "--rpm".into(),
            RPM.to_string(),
        ],
        rpm: RPM as u32,
        server_env: [
            auth_env(),
            vec![
                // Few slots, so requests queue: the queue's order is what is under test.
                ("LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY".into(), "4".into()),
                ("LEARNING_CHAT_UPSTREAM__MIN_CONCURRENCY".into(), "4".into()),
                // Only server 0 is asked: the whole quota is its share even if a Redis call
                // fails on a busy machine, and a slow Redis call is not a failure here.
                ("LEARNING_CHAT_REDIS__REPLICAS".into(), "1".into()),
                (
                    "LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS".into(),
                    "3000".into(),
                ),
            ],
        ]
        .concat(),
        ..ClusterConfig::default()
    })
    .await;
    let (_, a) = create_key(&cluster, &["--name", "noisy class"]).await;
    let (_, b) = create_key(&cluster, &["--name", "quiet class"]).await;
    let url = server_url(&cluster, 0, "math");
    // Key A: 200 distinct questions at once; key B: 20, arriving once A's are queued.
    let noisy = join_all((0..200).map(|i| {
        let (cluster, url, a) = (&cluster, url.clone(), a.clone());
        async move {
            ask(cluster, url, Some(&a), &[], format!("noisy {i}"))
                .await
                .status
        }
    }));
    let quiet = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        join_all((0..20).map(|i| {
            let (cluster, url, b) = (&cluster, url.clone(), b.clone());
            async move {
                ask(cluster, url, Some(&b), &[], format!("quiet {i}"))
                    .await
                    .status
            }
        }))
        .await
    };
    let (noisy, quiet) = tokio::join!(noisy, quiet);
    let count =
        |statuses: &[StatusCode], want: StatusCode| statuses.iter().filter(|s| **s == want).count();
    let a_ok = count(&noisy, StatusCode::OK);
    let b_ok = count(&quiet, StatusCode::OK);
    let stats = cluster.sim_stats().await;
    eprintln!(
        "fairness: A {a_ok}/200 answered, B {b_ok}/20 answered; upstream {} requests, {} 429",
        stats.requests, stats.rate_limited
    );
    assert_eq!(b_ok, 20, "the quiet key was starved: {quiet:?}");
    // A got the rest of the quota, and the quota was never exceeded upstream.
    assert_eq!(a_ok as u64 + b_ok as u64, stats.ok);
    assert!(
        stats.requests <= RPM,
        "upstream saw {} requests",
        stats.requests
    );
    assert_eq!(stats.rate_limited, 0);
    assert!(a_ok >= 30, "A should get the rest of the quota, got {a_ok}");
    // The rest of A's load was refused, not queued forever.
    assert_eq!(a_ok + count(&noisy, StatusCode::SERVICE_UNAVAILABLE), 200);
}
