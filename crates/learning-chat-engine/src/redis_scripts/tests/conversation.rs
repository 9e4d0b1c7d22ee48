//! `conversation_load.lua`, `conversation_append.lua` and `conversation_active.lua`.

use super::{call, Redis, SCRIPTS};

fn append(expected: &str, turns: &[&str]) -> ::redis::ScriptInvocation<'static> {
    let mut args = vec!["60000", "id", "1000", expected, "header"];
    args.extend_from_slice(turns);
    call(&SCRIPTS.conversation_append, &["conv"], &args)
}

#[tokio::test]
async fn conversation_append_creates_then_appends_only_at_the_expected_length() {
    let mut redis = Redis::start().await;
    // Gone (never created) when turns are appended to it.
    let gone: i64 = redis.run(&append("3", &["t1"])).await;
    assert_eq!(gone, -2);
    // Created: the header, then the turns; with the TTL.
    let created: i64 = redis.run(&append("0", &["q1", "a1"])).await;
    assert_eq!(created, 3);
    let ttl = redis.pttl("conv").await;
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    // Created twice: the second write lost the race.
    let twice: i64 = redis.run(&append("0", &["q1", "a1"])).await;
    assert_eq!(twice, -1);
    // Appended at the expected length, refused at another (another write came first).
    let appended: i64 = redis.run(&append("3", &["q2", "a2"])).await;
    assert_eq!(appended, 5);
    let stale: i64 = redis.run(&append("3", &["q3", "a3"])).await;
    assert_eq!(stale, -1);
    let list: Vec<String> = redis.cmd(&["LRANGE", "conv", "0", "-1"]).await;
    assert_eq!(list, ["header", "q1", "a1", "q2", "a2"]);
    // Not a list: gone, never written over.
    redis.cmd::<()>(&["SET", "conv", "x"]).await;
    let mistyped: i64 = redis.run(&append("5", &["q3"])).await;
    assert_eq!(mistyped, -2);
}

#[tokio::test]
async fn conversation_load_returns_the_list_refreshing_its_ttl_and_drops_a_corrupt_one() {
    let mut redis = Redis::start().await;
    let load = call(&SCRIPTS.conversation_load, &["conv"], &["60000"]);
    let none: Vec<String> = redis.run(&load).await;
    assert!(none.is_empty());
    redis
        .cmd::<()>(&["RPUSH", "conv", "header", "q1", "a1"])
        .await;
    redis.cmd::<()>(&["PEXPIRE", "conv", "1000"]).await;
    let list: Vec<String> = redis.run(&load).await;
    assert_eq!(list, ["header", "q1", "a1"]);
    assert!(redis.pttl("conv").await > 1_000, "the TTL is refreshed");
    redis.cmd::<()>(&["DEL", "conv"]).await;
    redis.cmd::<()>(&["SET", "conv", "x"]).await;
    let corrupt: Vec<String> = redis.run(&load).await;
    assert_eq!(corrupt, ["corrupt"]);
    assert!(!redis.exists("conv").await);
}

#[tokio::test]
async fn conversation_active_counts_the_live_entries_and_drops_the_older() {
    let mut redis = Redis::start().await;
    redis
        .cmd::<()>(&["ZADD", "index", "100", "a", "200", "b", "300", "c"])
        .await;
    let active = call(&SCRIPTS.conversation_active, &["index"], &["200"]);
    let live: i64 = redis.run(&active).await;
    assert_eq!(live, 2, "an entry at the oldest live score still counts");
    let left: Vec<String> = redis.cmd(&["ZRANGE", "index", "0", "-1"]).await;
    assert_eq!(left, ["b", "c"]);
}
