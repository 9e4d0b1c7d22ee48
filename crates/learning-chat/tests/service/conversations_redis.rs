//! Conversations shared through Redis by several servers: another server continues one, erasure
//! reaches every server, concurrent messages wait their turn, a dead Redis never answers a
//! follow-up without its history, and stored conversations expire.

#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use super::conversations::{delete, get, redis_settings, send, start, stored_id, wait_redis};
use super::conversations::{FIRST, FOLLOW_UP};
use crate::support::processes::RedisProcess;
use crate::support::{settings_for, spawn_app, start_sim};
use futures::future::join_all;
use gemini_sim::SimConfig;
use learning_chat::providers::{ModelTurn, Role};
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn another_server_continues_the_conversation_and_erasure_reaches_every_server() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let a = spawn_app(redis_settings(&sim, &redis)).await;
    let b = spawn_app(redis_settings(&sim, &redis)).await;
    wait_redis(&a, "up").await;
    wait_redis(&b, "up").await;

    let id = start(&a, "math", FIRST).await;
    let (status, follow_up, _) = send(&b, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{follow_up}");
    assert_eq!(follow_up["turn"], 2);
    let text = follow_up["response"].as_str().unwrap();
    assert!(text.starts_with("Following on from derivative"), "{text}");
    let (_, third, _) = send(&a, "math", "And a harder one?", Some(&id)).await;
    assert_eq!(third["turn"], 3, "{third}");
    let (_, seen_by_a) = get(&a, &id).await;
    let (_, seen_by_b) = get(&b, &id).await;
    assert_eq!(seen_by_a, seen_by_b);
    assert_eq!(seen_by_a["turns"].as_array().unwrap().len(), 6);
    let key = format!("learning-chat:conversation:{{{}}}", stored_id(&id));
    assert_eq!(redis.cli(&["EXISTS", &key]), "1");
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 86_400,
        "refreshed to conversation.ttl_ms: {ttl}"
    );

    // The answers made from the conversation are in the shared cache until it is erased.
    let answers: Vec<String> = seen_by_a["turns"]
        .as_array()
        .unwrap()
        .chunks(2)
        .enumerate()
        .map(|(n, pair)| {
            let history: Vec<ModelTurn> = seen_by_a["turns"].as_array().unwrap()[..2 * n]
                .iter()
                .map(|t| ModelTurn {
                    role: if t["role"] == "user" {
                        Role::User
                    } else {
                        Role::Model
                    },
                    text: t["text"].as_str().unwrap().to_owned(),
                })
                .collect();
            let key = a
                .state
                .chat
                .cache_key_with_history("math", pair[0]["text"].as_str().unwrap(), &history)
                .unwrap();
            format!("learning-chat:answer:{{{key}}}")
        })
        .collect();
    // Written to Redis off the request path: wait for it (a hang guard, not a timing bound).
    let until = Instant::now() + Duration::from_secs(15);
    for answer in &answers {
        while redis.cli(&["EXISTS", answer]) != "1" {
            assert!(Instant::now() < until, "{answer} never cached");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    assert_eq!(delete(&b, &id).await, StatusCode::NO_CONTENT);
    // Only a marker stays (its header, no turn), so the token cannot start it again.
    assert_eq!(
        redis.cli(&["LLEN", &key]),
        "1",
        "its turns are gone from Redis"
    );
    // The first answer is everyone's who asks the first question: never evicted by an erasure.
    assert_eq!(
        redis.cli(&["EXISTS", &answers[0]]),
        "1",
        "the shared first answer stays"
    );
    for answer in &answers[1..] {
        assert_eq!(redis.cli(&["EXISTS", answer]), "0", "{answer} erased too");
    }
    for app in [&a, &b] {
        let (status, body) = get(app, &id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "unknown_conversation");
        let (status, body, _) = send(app, "math", FOLLOW_UP, Some(&id)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(delete(app, &id).await, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        redis.cli(&[
            "ZSCORE",
            "learning-chat:conversations:{active}",
            &stored_id(&id)
        ]),
        "",
        "no trace left in the active index"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_messages_on_one_conversation_wait_their_turn_on_any_server() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig {
        latency: crate::support::fixed_latency(30),
        ..SimConfig::default()
    })
    .await;
    let a = spawn_app(redis_settings(&sim, &redis)).await;
    let b = spawn_app(redis_settings(&sim, &redis)).await;
    wait_redis(&a, "up").await;
    wait_redis(&b, "up").await;
    let id = start(&a, "math", FIRST).await;
    const SENDS: usize = 8;
    let results = join_all((0..SENDS).map(|n| {
        let app = if n % 2 == 0 { &a } else { &b };
        let id = id.clone();
        async move { send(app, "math", &format!("Question number {n}?"), Some(&id)).await }
    }))
    .await;
    let mut exchanges = BTreeSet::new();
    for (status, body, _) in &results {
        assert_eq!(*status, StatusCode::OK, "waits for its turn: {body}");
        exchanges.insert(body["turn"].as_u64().unwrap());
    }
    assert_eq!(
        exchanges,
        (2..=SENDS as u64 + 1).collect(),
        "each its own turn"
    );
    let (_, conversation) = get(&b, &id).await;
    let turns = conversation["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2 * (SENDS + 1), "no turn lost");
    for (n, pair) in turns.chunks(2).enumerate() {
        assert_eq!(pair[0]["role"], "user", "turn {n} interleaved");
        assert_eq!(pair[1]["role"], "model", "turn {n} interleaved");
    }
    let asked: BTreeSet<String> = turns[2..]
        .iter()
        .step_by(2)
        .map(|t| t["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(asked.len(), SENDS);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_that_cannot_wait_gets_409_busy_and_loses_nothing() {
    let sim = start_sim(SimConfig {
        latency: crate::support::fixed_latency(300),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.conversation.busy_wait = Duration::ZERO;
    let app = spawn_app(settings).await;
    let id = start(&app, "math", FIRST).await;
    let results = join_all((0..4).map(|n| {
        let (app, id) = (&app, id.clone());
        async move { send(app, "math", &format!("Question number {n}?"), Some(&id)).await }
    }))
    .await;
    let mut answered = 0;
    let mut busy = 0;
    for (status, body, retry_after) in &results {
        match *status {
            StatusCode::OK => answered += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "conversation_busy", "{body}");
                assert!(retry_after.is_some(), "Retry-After on 409 busy");
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        answered >= 1 && busy >= 1,
        "{answered} answered, {busy} busy"
    );
    let (_, conversation) = get(&app, &id).await;
    assert_eq!(
        conversation["turns"].as_array().unwrap().len(),
        2 * (1 + answered),
        "every answered message stored, no refused one"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_redis_down_follow_ups_get_503_and_new_chats_still_work() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(redis_settings(&sim, &redis)).await;
    wait_redis(&app, "up").await;
    let id = start(&app, "math", FIRST).await;
    redis.kill();

    let (status, body, retry_after) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "conversation_store_unavailable");
    assert!(retry_after.is_some(), "Retry-After on 503");
    let (status, body, _) = send(&app, "math", "What is a prime number?", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["conversation_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("t1")),
        "a one-shot answer stores nothing, so it still gets its id: {body}"
    );
    assert_eq!(body["turn"], 1);
    // Asked again while Redis is known to be down: the same, without waiting on Redis.
    let (status, _, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    redis.restart();
    wait_redis(&app, "up").await;
    // The outage lost the conversation with the process (no persistence in this test);
    // a new one works again end to end.
    let id = start(&app, "math", FIRST).await;
    let (status, body, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_redis_conversation_expires_after_its_ttl() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = redis_settings(&sim, &redis);
    // Long enough for the follow-up that stores it to come within the token's lifetime.
    settings.conversation.ttl = Duration::from_secs(3);
    let app = spawn_app(settings).await;
    wait_redis(&app, "up").await;
    let id = start(&app, "math", FIRST).await;
    let key = format!("learning-chat:conversation:{{{}}}", stored_id(&id));
    assert_eq!(
        redis.cli(&["EXISTS", &key]),
        "0",
        "a one-shot answer stores nothing"
    );
    let (status, _, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK);
    let ttl_ms: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 3_000, "{ttl_ms}");
    // Wait for Redis to expire it (a hang guard, not a timing assertion).
    let until = Instant::now() + Duration::from_secs(30);
    while redis.cli(&["EXISTS", &key]) == "1" {
        assert!(Instant::now() < until, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_conversation");
    app.stop().await.unwrap();
}
