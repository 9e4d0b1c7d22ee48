//! `cache_get.lua` (with `read_capped.lua`).

use super::{call, Redis, SCRIPTS};

#[tokio::test]
async fn cache_get_returns_a_value_and_drops_one_too_big_or_of_another_type() {
    let mut redis = Redis::start().await;
    let get = |key: &str| call(&SCRIPTS.cache_get, &[key], &["10"]);

    let missing: (String, u64) = redis.run(&get("a")).await;
    assert_eq!(missing, (String::new(), 0));

    redis.cmd::<()>(&["SET", "a", "0123456789"]).await;
    let fits: (String, u64) = redis.run(&get("a")).await;
    assert_eq!(fits, ("0123456789".to_owned(), 0));

    redis.cmd::<()>(&["SET", "a", "0123456789X"]).await;
    let too_big: (String, u64) = redis.run(&get("a")).await;
    assert_eq!(too_big, (String::new(), 1));
    assert!(!redis.exists("a").await, "the oversized value is deleted");

    redis.cmd::<()>(&["RPUSH", "a", "x"]).await;
    let mistyped: (String, u64) = redis.run(&get("a")).await;
    assert_eq!(mistyped, (String::new(), 1));
    assert!(!redis.exists("a").await, "the list is deleted");
}
