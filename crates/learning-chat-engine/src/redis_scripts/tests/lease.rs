//! `lease_acquire.lua`, `lease_renew.lua`, `lease_release.lua` and `coalesce_look.lua` (which
//! takes the same lease through `lease.lua`).

use super::{call, Redis, SCRIPTS};
use std::time::Duration;

fn acquire(holder: &str, ms: u64, retake: bool) -> ::redis::ScriptInvocation<'static> {
    let retake = if retake { "1" } else { "0" };
    call(
        &SCRIPTS.lease_acquire,
        &["lease"],
        &[holder, &ms.to_string(), retake],
    )
}

#[tokio::test]
async fn lease_acquire_takes_a_free_or_expired_lease_and_repairs_one_that_never_expires() {
    let mut redis = Redis::start().await;
    let taken: (i64, i64) = redis.run(&acquire("a", 10_000, false)).await;
    assert_eq!(taken, (1, 0));
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "a");
    let ttl = redis.pttl("lease").await;
    assert!(ttl > 0 && ttl <= 10_000, "{ttl}");

    // Held: another holder waits; the holder itself only takes it back when asked to.
    let other: (i64, i64) = redis.run(&acquire("b", 10_000, false)).await;
    assert_eq!(other, (0, 0));
    let again: (i64, i64) = redis.run(&acquire("a", 10_000, false)).await;
    assert_eq!(again, (0, 0));
    let retaken: (i64, i64) = redis.run(&acquire("a", 10_000, true)).await;
    assert_eq!(retaken, (1, 0));
    let not_for_others: (i64, i64) = redis.run(&acquire("b", 10_000, true)).await;
    assert_eq!(not_for_others, (0, 0));
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "a");

    // Expired: free again.
    redis.cmd::<()>(&["SET", "lease", "a", "PX", "30"]).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let after_expiry: (i64, i64) = redis.run(&acquire("b", 10_000, false)).await;
    assert_eq!(after_expiry, (1, 0));
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "b");

    // No expiry, one far beyond any lease set, or another type: deleted, counted and taken.
    redis.cmd::<()>(&["SET", "lease", "stuck"]).await;
    let immortal: (i64, i64) = redis.run(&acquire("c", 10_000, false)).await;
    assert_eq!(immortal, (1, 1));
    redis
        .cmd::<()>(&["SET", "lease", "far", "PX", "50000"])
        .await;
    let far: (i64, i64) = redis.run(&acquire("c", 10_000, false)).await;
    assert_eq!(far, (1, 1));
    redis.cmd::<()>(&["DEL", "lease"]).await;
    redis.cmd::<()>(&["RPUSH", "lease", "x"]).await;
    redis.cmd::<()>(&["PEXPIRE", "lease", "5000"]).await;
    let mistyped: (i64, i64) = redis.run(&acquire("c", 10_000, false)).await;
    assert_eq!(mistyped, (1, 1));
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "c");
}

#[tokio::test]
async fn lease_renew_extends_only_the_holders_lease() {
    let mut redis = Redis::start().await;
    let renew = |holder: &str| call(&SCRIPTS.lease_renew, &["lease"], &[holder, "60000"]);
    let missing: i64 = redis.run(&renew("a")).await;
    assert_eq!(missing, 0);
    redis.cmd::<()>(&["SET", "lease", "a", "PX", "1000"]).await;
    let by_other: i64 = redis.run(&renew("b")).await;
    assert_eq!(by_other, 0);
    assert!(redis.pttl("lease").await <= 1_000);
    let by_holder: i64 = redis.run(&renew("a")).await;
    assert_eq!(by_holder, 1);
    assert!(redis.pttl("lease").await > 1_000);
    redis.cmd::<()>(&["DEL", "lease"]).await;
    redis.cmd::<()>(&["RPUSH", "lease", "a"]).await;
    let mistyped: i64 = redis.run(&renew("a")).await;
    assert_eq!(mistyped, 0);
}

#[tokio::test]
async fn lease_release_deletes_only_the_holders_lease() {
    let mut redis = Redis::start().await;
    let release = |holder: &str| call(&SCRIPTS.lease_release, &["lease"], &[holder]);
    redis.cmd::<()>(&["SET", "lease", "a", "PX", "10000"]).await;
    // A holder whose lease expired and was taken by another must not end the other's.
    let by_other: i64 = redis.run(&release("b")).await;
    assert_eq!(by_other, 0);
    assert!(redis.exists("lease").await);
    let by_holder: i64 = redis.run(&release("a")).await;
    assert_eq!(by_holder, 1);
    assert!(!redis.exists("lease").await);
    let gone: i64 = redis.run(&release("a")).await;
    assert_eq!(gone, 0);
}

fn look(holder: &str, retake: bool) -> ::redis::ScriptInvocation<'static> {
    let keys = ["answer", "outcome", "lease", "stream"];
    let retake = if retake { "1" } else { "0" };
    call(
        &SCRIPTS.coalesce_look,
        &keys,
        &[holder, "5000", "100", retake],
    )
}

#[tokio::test]
async fn coalesce_look_sees_the_answer_then_the_outcome_then_takes_or_waits_on_the_lease() {
    let mut redis = Redis::start().await;
    // Nothing there: the lease is taken and a dead holder's stream deleted with it.
    redis.cmd::<()>(&["XADD", "stream", "*", "p", "old"]).await;
    let first: (String, String, u64) = redis.run(&look("s1", false)).await;
    assert_eq!(first, ("holder".into(), String::new(), 0));
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "s1");
    assert!(!redis.exists("stream").await);
    let ttl = redis.pttl("lease").await;
    assert!(ttl > 0 && ttl <= 5_000, "{ttl}");

    // Another server waits; the holder takes its own lease back only after a failed look.
    let other: (String, String, u64) = redis.run(&look("s2", false)).await;
    assert_eq!(other.0, "wait");
    let same: (String, String, u64) = redis.run(&look("s1", false)).await;
    assert_eq!(same.0, "wait");
    let after_failure: (String, String, u64) = redis.run(&look("s1", true)).await;
    assert_eq!(after_failure.0, "holder");

    // A shared outcome comes before the lease, an answer before both.
    redis.cmd::<()>(&["SET", "outcome", "failed"]).await;
    let outcome: (String, String, u64) = redis.run(&look("s2", false)).await;
    assert_eq!(outcome, ("outcome".into(), "failed".into(), 0));
    redis.cmd::<()>(&["SET", "answer", "42"]).await;
    let answer: (String, String, u64) = redis.run(&look("s2", false)).await;
    assert_eq!(answer, ("answer".into(), "42".into(), 0));

    // Oversized values and a lease that never expires are dropped and counted, not waited on.
    let big = "x".repeat(101);
    redis.cmd::<()>(&["SET", "answer", &big]).await;
    redis.cmd::<()>(&["RPUSH", "outcome_list", "x"]).await;
    redis
        .cmd::<()>(&["RENAME", "outcome_list", "outcome"])
        .await;
    redis.cmd::<()>(&["SET", "lease", "stuck"]).await;
    let repaired: (String, String, u64) = redis.run(&look("s2", false)).await;
    assert_eq!(repaired, ("holder".into(), String::new(), 3));
    assert!(!redis.exists("answer").await && !redis.exists("outcome").await);
    assert_eq!(redis.cmd::<String>(&["GET", "lease"]).await, "s2");
}
