use super::scope::{OwnCall, Scope};
use super::*;

#[test]
fn while_redis_is_away_a_server_takes_its_share_of_what_the_cluster_left() {
    // 12 RPM over 3 servers; 6 calls known in the window (2 own, 4 of the others).
    let mut scope = Scope {
        others: vec![(0, 4)],
        ..Scope::default()
    };
    for i in 0..2 {
        scope.own.push_back(OwnCall {
            at: 0,
            member: format!("m{i}"),
            units: vec![("requests".to_owned(), 1)],
        });
    }
    assert!(scope.enter_local(3));
    let requests = [Window::counting("requests", 12, 60_000, 1)];
    let granted: Vec<u64> = (0..6)
        .map(|_| {
            let (at, _) = scope.local_earliest(&requests, 1_000);
            scope.local_record(&requests, at, 1_000, true);
            at
        })
        .collect();
    // A third of the 6 left now; the rest only when the known calls leave the window.
    assert_eq!(granted[..2], [1_000, 1_000]);
    assert!(granted[2..].iter().all(|&at| at >= 60_000), "{granted:?}");
}

#[tokio::test(start_paused = true)]
async fn windows_of_one_call_are_decided_together_and_name_the_one_that_refused() {
    let limiter = WindowLimiter::local(Options {
        remember: false,
        quota_metrics: false,
    });
    let windows = [
        Window::counting("rpm", 3, 60_000, 1),
        Window::charged("tokens", 100, 86_400_000),
        Window::counting("inflight", 1, 30_000, 1),
    ];
    let now = Instant::now();
    let first = limiter.reserve("k", "a", &windows, now).await.unwrap();
    assert_eq!(first.at, now);
    assert_eq!(first.windows[0].held, 1);
    assert_eq!(first.windows[0].reset, Duration::from_secs(60));
    // The request in progress holds the only slot; the refusal names it and records nothing.
    let busy = limiter.reserve("k", "b", &windows, now).await.unwrap_err();
    assert_eq!(busy.window, 2);
    assert_eq!(busy.windows[0].held, 1);
    // Done: its lease ends and its tokens are charged; the budget is spent for a day.
    let changes = [
        Change::Charge {
            window: 1,
            units: 150,
        },
        Change::Release { window: 2 },
    ];
    limiter
        .settle("k", "a", &windows, first.ticket, &changes)
        .await;
    let spent = limiter.reserve("k", "c", &windows, now).await.unwrap_err();
    assert_eq!(spent.window, 1);
    assert_eq!(spent.windows[1].wait, Duration::from_millis(86_400_000));
    // Another scope is untouched.
    assert!(limiter.reserve("other", "d", &windows, now).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_sliding_window_frees_each_slot_a_span_after_it_was_taken() {
    let limiter = WindowLimiter::local(Options {
        remember: false,
        quota_metrics: false,
    });
    let rpm = [Window::counting("rpm", 2, 60_000, 1)];
    assert!(limiter
        .reserve("k", "a", &rpm, Instant::now())
        .await
        .is_ok());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(limiter
        .reserve("k", "b", &rpm, Instant::now())
        .await
        .is_ok());
    let full = limiter
        .reserve("k", "c", &rpm, Instant::now())
        .await
        .unwrap_err();
    assert_eq!(full.wait, Duration::from_secs(30));
    // A fixed minute would have let two more through here; the window frees only the first.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(limiter
        .reserve("k", "d", &rpm, Instant::now())
        .await
        .is_ok());
    assert!(limiter
        .reserve("k", "e", &rpm, Instant::now())
        .await
        .is_err());
    assert_eq!(limiter.local_used("k", &rpm[0]), 2);
}

mod with_redis {
    use super::*;
    use crate::config::{RedisSettings, Secret};
    use learning_chat_testkit::redis::RedisProcess;

    const OPS: WindowOps = WindowOps {
        reserve: "test_window",
        record: "test_window",
        used: "test_window",
    };

    fn link(redis: &RedisProcess) -> RedisLink {
        let settings = RedisSettings {
            url: Secret::new(redis.url()),
            // Not a test of slow Redis.
            command_timeout: Duration::from_secs(5),
            ..RedisSettings::default()
        };
        RedisLink::new(&settings).unwrap()
    }

    async fn server(redis: &RedisProcess, options: Options) -> (RedisLink, WindowLimiter) {
        let link = link(redis);
        assert!(link.probe().await);
        let limiter = WindowLimiter::clustered(
            link.clone(),
            "limit",
            OPS,
            NonZeroU32::new(2).unwrap(),
            options,
        );
        (link, limiter)
    }

    const KEYS: Options = Options {
        remember: false,
        quota_metrics: false,
    };
    const QUOTA: Options = Options {
        remember: true,
        quota_metrics: false,
    };

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn servers_draw_from_one_window_and_take_their_share_when_redis_goes() {
        let redis = tokio::task::spawn_blocking(RedisProcess::start)
            .await
            .unwrap();
        let (_, a) = server(&redis, KEYS).await;
        let (_, b) = server(&redis, KEYS).await;
        let rpm = [Window::counting("rpm", 4, 60_000, 1)];
        let now = Instant::now;
        for (i, limiter) in [&a, &b, &a, &b].into_iter().enumerate() {
            let granted = limiter.reserve("k", &format!("m{i}"), &rpm, now()).await;
            let granted = granted.unwrap();
            assert!(!granted.ticket.local());
            assert_eq!(granted.windows[0].held, i as u64 + 1);
        }
        let full = b.reserve("k", "m4", &rpm, now()).await.unwrap_err();
        assert!(!full.local && full.wait > Duration::ZERO);

        // Redis gone: each of the 2 servers decides alone on half the limit.
        redis.kill();
        assert!(a
            .reserve("k", "m5", &rpm, now())
            .await
            .unwrap()
            .ticket
            .local());
        assert!(a.reserve("k", "m6", &rpm, now()).await.is_ok());
        let share = a.reserve("k", "m7", &rpm, now()).await.unwrap_err();
        assert!(share.local);
    }

    #[tokio::test]
    async fn a_remembering_server_writes_its_calls_back_into_a_redis_that_lost_them() {
        let redis = tokio::task::spawn_blocking(RedisProcess::start)
            .await
            .unwrap();
        let (link, quota) = server(&redis, QUOTA).await;
        let rpm = [Window::counting("requests", 100, 60_000, 1)];
        for i in 0..3 {
            let granted = quota.reserve("q", &format!("m{i}"), &rpm, later()).await;
            assert!(!granted.unwrap().ticket.local());
        }
        let key = link.grouped_key("limit", "q", "requests");
        assert_eq!(redis.cli(&["ZCARD", &key]), "3");

        // Restarted empty: the next calls write the three back before (or while) they count.
        redis.kill();
        redis.restart();
        let mut decided_in_redis = false;
        for i in 3..20 {
            if !link.is_up() {
                link.probe().await;
            }
            let granted = quota
                .reserve("q", &format!("m{i}"), &rpm, later())
                .await
                .unwrap();
            if !granted.ticket.local() {
                decided_in_redis = true;
                break;
            }
        }
        assert!(decided_in_redis, "Redis never decided again");
        let counted: u64 = redis.cli(&["ZCARD", &key]).parse().unwrap();
        assert!(
            counted >= 4,
            "the lost calls were not written back: {counted}"
        );
        let synced = link.grouped_key("limit", "q", "synced");
        assert!(!redis.cli(&["ZSCORE", &synced, link.server_id()]).is_empty());
    }
}
