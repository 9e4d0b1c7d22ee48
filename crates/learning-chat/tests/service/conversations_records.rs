//! The state model (issue 22) for conversations: a one-shot question stores nothing anywhere
//! beyond the answer cache; its signed id starts the conversation on a follow-up, on any
//! server; stored conversations live in the records database (SQLite, PostgreSQL), survive a
//! Redis flush, and a database outage costs follow-ups a 503, never a stored turn. Erasing
//! never evicts an answer other callers share.

#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use super::conversations::{delete, get, send, start, wait_redis, FIRST, FOLLOW_UP};
use crate::support::processes::RedisProcess;
use crate::support::{fresh_records_url, offline_settings, settings_for, spawn_app, start_sim};
use gemini_sim::SimConfig;
use learning_chat::config::{DatabaseUrl, Secret};
use learning_chat_testkit::postgres::PostgresProcess;
use reqwest::StatusCode;
use std::collections::BTreeSet;

/// Every Redis key, sorted.
fn redis_keys(redis: &RedisProcess) -> BTreeSet<String> {
    redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.is_empty())
        .collect()
}

#[tokio::test]
async fn a_thousand_cached_one_shot_answers_write_nothing_but_the_cache() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.redis.url = Secret::new(redis.url());
    let app = spawn_app(settings).await;
    wait_redis(&app, "up").await;
    // The first asks: the answers are made and cached (in Redis too, off the request path).
    let questions = ["What is 2+2?", "What is a prime?", "What is a fraction?"];
    for question in questions {
        start(&app, "math", question).await;
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while redis_keys(&redis)
        .iter()
        .filter(|k| k.contains(":answer:"))
        .count()
        < questions.len()
    {
        assert!(
            std::time::Instant::now() < until,
            "answers never reached Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = redis_keys(&redis);
    let mut ids = BTreeSet::new();
    for n in 0..1000 {
        let (status, body, _) = send(&app, "math", questions[n % questions.len()], None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["cached"], true, "{body}");
        ids.insert(body["conversation_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1000, "every answer has its own conversation id");
    let after = redis_keys(&redis);
    let added: Vec<&String> = after.difference(&before).collect();
    // Only the quota's windows may come and go (cached answers make no model call).
    assert!(
        added.iter().all(|k| k.contains(":quota:")),
        "one-shot answers wrote {added:?}"
    );
    assert_eq!(
        app.state
            .records
            .as_ref()
            .unwrap()
            .conversation_count()
            .await
            .unwrap(),
        0,
        "nothing stored in the records database"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn without_redis_or_a_database_one_shot_answers_keep_no_conversation_in_memory() {
    let mut settings = offline_settings();
    settings.database.url = DatabaseUrl::new("none");
    let app = spawn_app(settings).await;
    for n in 0..200 {
        start(&app, "math", &format!("Question {}?", n % 5)).await;
    }
    let active = app.state.chat.conversations().store().active().await;
    assert_eq!(active, Ok(0), "no conversation kept per question");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_follow_up_after_many_one_shots_continues_on_another_server() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    // Two servers: one records database (a shared SQLite file), one Redis (the shared cache).
    let records = fresh_records_url();
    let settings = || {
        let mut settings = settings_for(&sim);
        settings.redis.url = Secret::new(redis.url());
        settings.database.url = records.clone();
        settings
    };
    let a = spawn_app(settings()).await;
    let b = spawn_app(settings()).await;
    wait_redis(&a, "up").await;
    wait_redis(&b, "up").await;
    for n in 0..20 {
        start(&a, "math", &format!("Warm-up question {n}?")).await;
    }
    let id = start(&a, "math", FIRST).await;
    for n in 0..20 {
        start(&a, "math", &format!("Another question {n}?")).await;
    }
    // The never-continued conversation shows its first exchange, on either server.
    let (status, first) = get(&b, &id).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["turns"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["turns"][0]["text"], FIRST);

    let (status, follow_up, _) = send(&b, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{follow_up}");
    assert_eq!(follow_up["turn"], 2, "{follow_up}");
    assert_eq!(follow_up["conversation_id"], id.as_str());
    let text = follow_up["response"].as_str().unwrap();
    assert!(
        text.starts_with("Following on from derivative"),
        "the first exchange went with the follow-up: {text}"
    );
    let (status, stored) = get(&a, &id).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["turns"].as_array().unwrap().len(), 4, "{stored}");
    let (_, third, _) = send(&a, "math", "And a harder one?", Some(&id)).await;
    assert_eq!(third["turn"], 3, "{third}");
    // Two calls for the follow-ups; the first answer was never asked again.
    assert_eq!(sim.stats().requests, 20 + 1 + 20 + 2);

    // Redis flushed in the middle: the stored conversation is untouched.
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let (status, fourth, _) = send(&b, "math", "One more?", Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{fourth}");
    assert_eq!(fourth["turn"], 4, "{fourth}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn erasing_a_conversation_never_evicts_an_answer_others_share() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    // A never-continued conversation: nothing stored, so nothing to erase but its id.
    let id = start(&app, "math", FIRST).await;
    assert_eq!(delete(&app, &id).await, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, &id).await.0, StatusCode::NOT_FOUND);
    let (status, body, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "erased for good: {body}");
    // A continued one: its own follow-up answers go, the shared first answer stays.
    let id = start(&app, "math", FIRST).await;
    let (status, _, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delete(&app, &id).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &id).await, StatusCode::NOT_FOUND);
    let calls = sim.stats().requests;
    let (_, again, _) = send(&app, "math", FIRST, None).await;
    assert_eq!(
        again["cached"], true,
        "the first answer is still shared: {again}"
    );
    assert_eq!(
        sim.stats().requests,
        calls,
        "no model call forced by the erasure"
    );
    // A forged or altered id names nothing.
    let mut forged = id.clone();
    forged.pop();
    forged.push(if id.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(get(&app, &forged).await.0, StatusCode::NOT_FOUND);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_postgresql_down_follow_ups_get_503_and_nothing_stored_is_lost() {
    let postgres = PostgresProcess::start();
    let sim = start_sim(SimConfig::default()).await;
    let url = postgres.fresh_database();
    let settings = || {
        let mut settings = settings_for(&sim);
        settings.database.url = DatabaseUrl::new(url.clone());
        settings.database.acquire_timeout = std::time::Duration::from_secs(1);
        settings
    };
    let a = spawn_app(settings()).await;
    let b = spawn_app(settings()).await;
    let id = start(&a, "math", FIRST).await;
    let (status, body, _) = send(&a, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Stored in PostgreSQL: the other server (its own cache, empty) reads it there.
    let (status, stored) = get(&b, &id).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["turns"].as_array().unwrap().len(), 4);

    postgres.kill();
    let (status, body, retry_after) = send(&b, "math", "And then?", Some(&id)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "conversation_store_unavailable");
    assert!(retry_after.is_some());
    // A one-shot question needs no store: still answered, with its id.
    let (status, body, _) = send(&b, "math", "What is a prime?", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["conversation_id"].as_str().is_some(), "{body}");

    postgres.restart();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let third = loop {
        let (status, body, _) = send(&b, "math", "And then?", Some(&id)).await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(std::time::Instant::now() < until, "never recovered: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        third["turn"], 3,
        "nothing stored before the outage was lost: {third}"
    );
    let (_, stored) = get(&a, &id).await;
    assert_eq!(stored["turns"].as_array().unwrap().len(), 6);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
