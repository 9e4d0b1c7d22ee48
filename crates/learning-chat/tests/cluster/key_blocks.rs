//! Blocks of a busy key's requests: with Redis deciding, a key whose minute is large takes its
//! requests from Redis in blocks (one round trip each) and spends them here, so a busy key does
//! not cost a Redis script per request; its minute still holds exactly across servers, and what
//! a block leaves unspent goes back to the key within about a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use super::key_limits_cluster::limiter_of;
use learning_chat::auth::keys::KeyLimits;
use learning_chat::auth::limits::{KeyLimiter, Subject};
use learning_chat::config::{Secret, Settings};
use learning_chat_testkit::redis::RedisProcess;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One "server" on `redis`, for a cluster of two.
async fn server(redis: &RedisProcess) -> KeyLimiter {
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    limiter_of(&settings).await
}

/// Scripts Redis has run so far (every window decision is one).
fn scripts_run(redis: &RedisProcess) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?.split(',').next()?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

fn limits(rpm: u32) -> KeyLimits {
    KeyLimits {
        rpm,
        tokens_per_day: 1_000_000_000,
        ..KeyLimits::default()
    }
}

/// Numbers every request's member, so no two are alike.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Asks `n` times as `key`, taking the servers in turn; returns how many were granted.
async fn ask(servers: &[KeyLimiter], key: &str, limits: &KeyLimits, n: usize) -> usize {
    let mut granted = 0;
    for i in 0..n {
        let subject = Subject {
            key_id: key.to_owned(),
            learner: None,
            member: format!("{key}-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        };
        let decision = servers[i % servers.len()].acquire(limits, &subject).await;
        assert!(!decision.local, "request {i} was decided without Redis");
        if decision.refused.is_none() {
            granted += 1;
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_takes_its_minute_in_blocks_and_two_servers_grant_exactly_its_limit() {
    let redis = RedisProcess::start();
    let servers = [server(&redis).await, server(&redis).await];
    let key = "key_blocks000001";
    let before = scripts_run(&redis);
    // 400 a minute over two servers: blocks of up to 50. 600 asked, 200 of them too many.
    let granted = ask(&servers, key, &limits(400), 600).await;
    let scripts = scripts_run(&redis) - before;
    println!("{scripts} scripts for 600 requests");
    assert_eq!(granted, 400, "exactly the key's minute across both servers");
    // One script per request would be 600: the 400 granted came in blocks (a refused key is
    // decided one request at a time, as without blocks).
    assert!(scripts < 300, "{scripts} scripts for 600 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_block_leaves_unspent_goes_back_to_the_key() {
    let redis = RedisProcess::start();
    let servers = [server(&redis).await, server(&redis).await];
    let key = "key_blocks000002";
    let limits = limits(128);
    // The first server spends a few requests of its blocks and goes quiet.
    let first = ask(&servers[..1], key, &limits, 4).await;
    assert_eq!(first, 4);
    // Within about a second its unspent requests are given back: the other server gets the
    // rest of the minute, to the request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = [server(&redis).await, server(&redis).await];
    let rest = ask(&second, key, &limits, 200).await;
    assert_eq!(
        first + rest,
        128,
        "the key's whole minute, no more, no less"
    );
}
