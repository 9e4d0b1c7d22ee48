//! Marking Redis up and down, against a real redis-server: one slow answer must not switch a
//! server (its quota, coalescing and cache) to local mode, and a Redis that answers again is
//! trusted only after several probes in a row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::processes::RedisProcess;
use learning_chat::config::{RedisSettings, Secret};
use learning_chat::redis_link::RedisLink;

fn link_to(redis: &RedisProcess) -> RedisLink {
    let mut settings = RedisSettings::default();
    settings.url = Secret::new(redis.url());
    RedisLink::new(&settings).expect("valid settings")
}

/// One PING through the link, as every request-path call goes.
async fn ping(link: &RedisLink) -> bool {
    link.run("test_ping", |mut conn| async move {
        ::redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await
    .is_ok()
}

/// Calls that each start after the previous one failed: Redis stays up until the
/// `down_after_failures`-th, which marks it down.
async fn fail_in_a_row_until_down(link: &RedisLink) {
    let down_after = RedisSettings::default().down_after_failures.get();
    for failure in 1..down_after {
        assert!(!ping(link).await);
        assert!(link.is_up(), "marked down after only {failure} failure(s)");
    }
    assert!(!ping(link).await);
    assert!(!link.is_up(), "failures in a row mark Redis down");
}

#[tokio::test]
async fn one_timeout_does_not_mark_redis_down_but_a_few_in_a_row_do() {
    let redis = RedisProcess::start();
    let link = link_to(&redis);
    let defaults = RedisSettings::default();
    assert!(link.probe().await);
    assert!(link.is_up(), "the first connection is trusted at once");

    // A frozen Redis answers nothing: the call times out and takes its fallback.
    redis.freeze();
    assert!(!ping(&link).await, "a frozen Redis must time out");
    assert!(link.is_up(), "one timeout must not mark Redis down");
    redis.thaw();
    assert!(ping(&link).await, "Redis answers again");

    // The success reset the count: it takes `down_after_failures` failures in a row.
    redis.freeze();
    fail_in_a_row_until_down(&link).await;
    redis.thaw();

    // Back, but only trusted after `up_after_probes` successful probes in a row.
    for probe in 1..defaults.up_after_probes.get() {
        assert!(link.probe().await, "Redis answers probe {probe}");
        assert!(!link.is_up(), "trusted again after only {probe} probe(s)");
    }
    assert!(link.probe().await);
    assert!(link.is_up(), "trusted after enough probes in a row");
}

#[tokio::test]
async fn calls_stalled_together_by_one_slow_spell_count_as_one_failure() {
    let redis = RedisProcess::start();
    let link = link_to(&redis);
    let defaults = RedisSettings::default();
    assert!(link.probe().await);
    // A busy server: many calls in flight when Redis stalls. They all time out, but for one
    // reason: one failure, not one per call (each takes its own fallback all the same).
    redis.freeze();
    let calls = (defaults.down_after_failures.get() * 4) as usize;
    let results = futures::future::join_all((0..calls).map(|_| ping(&link))).await;
    assert!(results.iter().all(|ok| !ok), "a frozen Redis must time out");
    assert!(
        link.is_up(),
        "{calls} calls stalled together marked Redis down"
    );
    redis.thaw();
    assert!(ping(&link).await, "Redis answers again");

    // Calls that each start after the previous one failed are failures in a row.
    redis.freeze();
    fail_in_a_row_until_down(&link).await;
    redis.thaw();
}

#[tokio::test]
async fn a_failed_probe_restarts_the_count_before_redis_is_trusted_again() {
    let redis = RedisProcess::start();
    let link = link_to(&redis);
    let defaults = RedisSettings::default();
    assert!(link.probe().await);
    redis.kill();
    for _ in 0..defaults.down_after_failures.get() {
        assert!(!ping(&link).await);
    }
    assert!(!link.is_up());
    redis.restart();
    // The connection is re-established in the background: the first probes may still fail.
    let mut reconnected = false;
    for _ in 0..100 {
        if link.probe().await {
            reconnected = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        reconnected,
        "the link never reconnected to the restarted Redis"
    );
    for _ in 2..defaults.up_after_probes.get() {
        assert!(link.probe().await);
    }
    assert!(!link.is_up(), "one probe short of trusted");
    redis.freeze();
    assert!(!link.probe().await, "a frozen Redis fails the probe");
    redis.thaw();
    for probe in 1..defaults.up_after_probes.get() {
        assert!(link.probe().await);
        assert!(
            !link.is_up(),
            "the failed probe did not restart the count ({probe})"
        );
    }
    assert!(link.probe().await);
    assert!(link.is_up());
}
