//! `window_reserve.lua`, `window_record.lua` and `window_used.lua` (with `window.lua`).

use super::{call, Redis, SCRIPTS};
use std::time::Duration;

/// One window: limit, span ms, units to fit, units to record.
type Spec = [u64; 4];

/// What a reservation asks besides its windows.
struct Ask<'a> {
    member: &'a str,
    max_wait: u64,
    not_before: u64,
    sync: bool,
    snapshot: bool,
    fresh: u64,
}

fn ask(member: &str) -> Ask<'_> {
    Ask {
        member,
        max_wait: 0,
        not_before: 0,
        sync: false,
        snapshot: false,
        fresh: 0,
    }
}

/// Reserves in windows `w1`, `w2`, ... of server `s1`.
fn reserve(ask: &Ask<'_>, windows: &[Spec]) -> ::redis::ScriptInvocation<'static> {
    let mut keys = vec!["synced".to_owned(), "totals".to_owned()];
    keys.extend((1..=windows.len()).map(|i| format!("w{i}")));
    let mut args = vec![
        "s1".to_owned(),
        ask.member.to_owned(),
        ask.max_wait.to_string(),
        ask.not_before.to_string(),
        u8::from(ask.sync).to_string(),
        u8::from(ask.snapshot).to_string(),
        ask.fresh.to_string(),
    ];
    args.extend(windows.iter().flatten().map(u64::to_string));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    call(&SCRIPTS.window_reserve, &keys, &args)
}

/// Index of window `i`'s (held, wait, reset) in a reply.
fn seen(reply: &[i64], i: usize) -> (i64, i64, i64) {
    (reply[3 + 3 * i], reply[4 + 3 * i], reply[5 + 3 * i])
}

#[tokio::test]
async fn window_reserve_grants_up_to_the_limit_then_refuses_or_reserves_a_later_slot() {
    let mut redis = Redis::start().await;
    let rpm: Spec = [2, 60_000, 1, 1];
    let a: Vec<i64> = redis.run(&reserve(&ask("s1:a"), &[rpm])).await;
    assert_eq!(a[..3], [0, 0, 0], "granted now");
    let (held, wait, reset) = seen(&a, 0);
    assert_eq!((held, wait), (1, 0));
    assert!((59_000..=60_000).contains(&reset), "{reset}");
    let b: Vec<i64> = redis.run(&reserve(&ask("s1:b"), &[rpm])).await;
    assert_eq!((b[1], seen(&b, 0).0), (0, 2));

    // Full: refused at once with the earliest slot as the hint, and nothing recorded.
    let c: Vec<i64> = redis.run(&reserve(&ask("s1:c"), &[rpm])).await;
    assert_eq!(c[1], 1);
    assert!((59_000..=60_000).contains(&c[0]), "{c:?}");
    assert_eq!(seen(&c, 0).0, 2);
    assert_eq!(redis.cmd::<i64>(&["ZCARD", "w1"]).await, 2);

    // Allowed to wait: the slot a minute after the oldest entry is reserved.
    let now = redis.now_ms().await;
    let waiting = Ask {
        max_wait: 120_000,
        ..ask("s1:d")
    };
    let d: Vec<i64> = redis.run(&reserve(&waiting, &[rpm])).await;
    assert_eq!(d[1], 0);
    assert!((59_000..=60_000).contains(&d[0]), "{d:?}");
    let score: f64 = redis.cmd(&["ZSCORE", "w1", "s1:d:1"]).await;
    assert!(
        (score as i64 - now - 60_000).abs() <= 1_000,
        "{score} vs {now}"
    );
    assert_eq!(redis.cmd::<String>(&["HGET", "totals", "w1"]).await, "3");

    // Never sooner than asked.
    let later = Ask {
        max_wait: 300_000,
        not_before: 150_000,
        ..ask("s1:e")
    };
    let e: Vec<i64> = redis.run(&reserve(&later, &[[10, 60_000, 1, 1]])).await;
    assert_eq!(e[..2], [150_000, 0]);
}

#[tokio::test]
async fn window_reserve_weighs_units_and_decides_several_windows_together() {
    let mut redis = Redis::start().await;
    let tokens = |units: u64| -> Spec { [100, 60_000, units, units] };
    let _: Vec<i64> = redis
        .run(&reserve(&ask("s1:a"), &[[10, 60_000, 1, 1], tokens(70)]))
        .await;
    let _: Vec<i64> = redis
        .run(&reserve(&ask("s1:b"), &[[10, 60_000, 1, 1], tokens(20)]))
        .await;
    // 30 more only fit once the 70 leave; the request window alone had room.
    let c: Vec<i64> = redis
        .run(&reserve(&ask("s1:c"), &[[10, 60_000, 1, 1], tokens(30)]))
        .await;
    assert_eq!(c[1], 1);
    let (held, wait, _) = seen(&c, 0);
    assert_eq!((held, wait), (2, 0));
    let (held, wait, _) = seen(&c, 1);
    assert_eq!(held, 90);
    assert!((59_000..=60_000).contains(&wait), "{wait}");
    assert_eq!(
        redis.cmd::<i64>(&["ZCARD", "w1"]).await,
        2,
        "nothing recorded"
    );
    // A call bigger than the whole limit counts as the limit: it waits for an empty window.
    let huge: Vec<i64> = redis
        .run(&reserve(&ask("s1:d"), &[[10, 60_000, 1, 1], tokens(500)]))
        .await;
    assert_eq!(huge[1], 1);
    // A window charged after the call: it goes while a unit is left and records nothing now.
    let charged: Vec<i64> = redis
        .run(&reserve(
            &ask("s1:e"),
            &[[10, 60_000, 1, 1], [100, 60_000, 1, 0]],
        ))
        .await;
    assert_eq!(charged[1], 0);
    assert_eq!(seen(&charged, 1).0, 90);
    assert_eq!(redis.cmd::<i64>(&["ZCARD", "w2"]).await, 2);
}

#[tokio::test]
async fn window_reserve_forgets_what_left_the_window_and_rebuilds_a_lost_total() {
    let mut redis = Redis::start().await;
    let short: Spec = [1, 200, 1, 1];
    let first: Vec<i64> = redis.run(&reserve(&ask("s1:a"), &[short])).await;
    assert_eq!(first[1], 0);
    let full: Vec<i64> = redis.run(&reserve(&ask("s1:b"), &[short])).await;
    assert_eq!(full[1], 1);
    let ttl = redis.pttl("w1").await;
    assert!(ttl > 0 && ttl <= 400, "a window lives two spans: {ttl}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<i64> = redis.run(&reserve(&ask("s1:c"), &[short])).await;
    assert_eq!((after[1], seen(&after, 0).0), (0, 1));
    assert_eq!(redis.cmd::<i64>(&["ZCARD", "w1"]).await, 1);

    // The totals lost (evicted): rebuilt from the entries.
    let wide: Spec = [5, 60_000, 1, 1];
    redis.cmd::<()>(&["DEL", "totals"]).await;
    let rebuilt: Vec<i64> = redis.run(&reserve(&ask("s1:d"), &[wide])).await;
    assert_eq!(seen(&rebuilt, 0).0, 2);
    // The window lost, its total left: the total goes with it.
    redis.cmd::<()>(&["DEL", "w1"]).await;
    let fresh: Vec<i64> = redis.run(&reserve(&ask("s1:e"), &[wide])).await;
    assert_eq!(seen(&fresh, 0).0, 1);
    // Something else under a window's name is replaced, not failed on.
    redis.cmd::<()>(&["DEL", "w1"]).await;
    redis.cmd::<()>(&["SET", "w1", "junk"]).await;
    let replaced: Vec<i64> = redis.run(&reserve(&ask("s1:f"), &[wide])).await;
    assert_eq!((replaced[1], seen(&replaced, 0).0), (0, 1));
}

#[tokio::test]
async fn window_reserve_asks_a_server_redis_lost_to_write_back_and_shows_the_others() {
    let mut redis = Redis::start().await;
    let rpm: Spec = [100, 60_000, 1, 1];
    let synced = Ask {
        sync: true,
        ..ask("s1:a")
    };
    // Redis does not know this server (it restarted empty): nothing reserved.
    let unsynced: Vec<i64> = redis.run(&reserve(&synced, &[rpm])).await;
    assert_eq!(unsynced, [0, 2, 0]);
    assert!(!redis.exists("w1").await);

    let now = redis.now_ms().await;
    let (old, recent) = ((now - 10_000).to_string(), (now - 1_000).to_string());
    redis
        .cmd::<()>(&["ZADD", "synced", &recent, "s1", &old, "s3"])
        .await;
    let (first, second) = ((now - 1_500).to_string(), (now - 1_400).to_string());
    redis
        .cmd::<()>(&["ZADD", "w1", &first, "s2:x:1", &second, "s2:y:2"])
        .await;
    let watching = Ask {
        sync: true,
        snapshot: true,
        fresh: 5_000,
        ..ask("s1:b")
    };
    let reply: Vec<i64> = redis.run(&reserve(&watching, &[rpm])).await;
    assert_eq!(reply[1], 0);
    assert_eq!(reply[2], 1, "only s1 was seen within 5 s");
    assert_eq!(seen(&reply, 0).0, 4);
    // The others' entries (not this server's own), each rounded up to a whole second.
    let others = &reply[6..];
    assert_eq!(others.chunks(2).map(|p| p[1]).sum::<i64>(), 3, "{others:?}");
    for pair in others.chunks(2) {
        assert!((-2_000..=-400).contains(&pair[0]), "{others:?}");
    }
    let seen_at: f64 = redis.cmd(&["ZSCORE", "synced", "s1"]).await;
    assert!(
        seen_at as i64 >= now,
        "the reservation counts as this server's last sign"
    );
}

/// Writes entries into windows `w1` and `w2` (spans of a minute).
fn record(
    server: &str,
    entries: &[(u64, i64, &str, u64, &str)],
) -> ::redis::ScriptInvocation<'static> {
    let mut args = vec![server.to_owned(), "60000".to_owned(), "60000".to_owned()];
    for (window, age, member, units, op) in entries {
        args.extend([
            window.to_string(),
            age.to_string(),
            (*member).to_owned(),
            units.to_string(),
            (*op).to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    call(
        &SCRIPTS.window_record,
        &["synced", "totals", "w1", "w2"],
        &args,
    )
}

#[tokio::test]
async fn window_record_adds_entries_once_removes_them_and_skips_what_already_left() {
    let mut redis = Redis::start().await;
    let now = redis.now_ms().await;
    let entries = [
        (1, 1_000, "s1:a", 1, "+"),
        (2, 1_000, "s1:a", 70, "+"),
        (1, 70_000, "s1:old", 1, "+"),
        (1, -5_000, "s1:ahead", 1, "+"),
    ];
    let added: Vec<i64> = redis.run(&record("s1", &entries)).await;
    assert_eq!(added, [2, 1]);
    let score: f64 = redis.cmd(&["ZSCORE", "w1", "s1:a:1"]).await;
    assert!(
        (score as i64 - (now - 1_000)).abs() <= 1_000,
        "{score} vs {now}"
    );
    let ahead: f64 = redis.cmd(&["ZSCORE", "w1", "s1:ahead:1"]).await;
    assert!(
        ahead as i64 > now,
        "a reservation still to come keeps its place"
    );
    let old: Option<f64> = redis.cmd(&["ZSCORE", "w1", "s1:old:1"]).await;
    assert_eq!(old, None, "already out of its window");
    assert_eq!(redis.cmd::<i64>(&["ZCARD", "w1"]).await, 2);
    assert_eq!(redis.cmd::<String>(&["HGET", "totals", "w2"]).await, "70");
    assert!(
        redis.pttl("w1").await > 120_000,
        "kept two spans past the latest entry"
    );
    assert_eq!(redis.cmd::<i64>(&["ZCARD", "synced"]).await, 1);

    // Written again (a second re-publish): nothing doubles.
    let again: Vec<i64> = redis.run(&record("", &entries)).await;
    assert_eq!(again, [0, 0]);
    assert_eq!(redis.cmd::<String>(&["HGET", "totals", "w1"]).await, "2");

    // A lease ended: its entry goes, once.
    let release = [(1, 0, "s1:ahead", 1, "-")];
    let removed: Vec<i64> = redis.run(&record("", &release)).await;
    assert_eq!(removed, [1, 0]);
    let twice: Vec<i64> = redis.run(&record("", &release)).await;
    assert_eq!(twice, [0, 0]);
    assert_eq!(redis.cmd::<String>(&["HGET", "totals", "w1"]).await, "1");
}

#[tokio::test]
async fn window_used_counts_the_units_of_the_last_span_without_reservations_to_come() {
    let mut redis = Redis::start().await;
    let now = redis.now_ms().await;
    let (gone, recent, ahead) = (
        (now - 70_000).to_string(),
        (now - 1_000).to_string(),
        (now + 5_000).to_string(),
    );
    redis
        .cmd::<()>(&["ZADD", "w1", &gone, "a:4", &recent, "b:3", &ahead, "c:1"])
        .await;
    let used: i64 = redis
        .run(&call(&SCRIPTS.window_used, &["w1"], &["60000"]))
        .await;
    assert_eq!(used, 3);
}
