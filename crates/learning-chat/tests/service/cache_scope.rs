//! `cache.scope = "key"` against the real service and the simulator: keys never share answers
//! (nor calls in flight), one key's repeats still do; the shared default keeps sharing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::fair_queue::{ask_as, create_key, records_url, PEPPER};
use crate::support::{settings_for, spawn_app, start_sim_with_latency, TestApp};
use learning_chat::config::{AuthMode, CacheScope, Secret};
use reqwest::StatusCode;
use std::path::Path;

async fn app_with(scope: CacheScope, sim: &gemini_sim::SimServer, keys_file: &Path) -> TestApp {
    let mut settings = settings_for(sim);
    settings.auth.mode = AuthMode::Required;
    settings.auth.pepper = Secret::new(PEPPER);
    settings.database.url = learning_chat::config::DatabaseUrl::new(records_url(keys_file));
    settings.cache.scope = scope;
    spawn_app(settings).await
}

/// Asks `message` as `secret`; returns whether the answer came from the cache.
async fn cached(app: &TestApp, secret: &str, message: &str) -> bool {
    let (status, body) = ask_as(app, secret, message.to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["cached"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_key_scope_keys_never_share_answers_nor_calls_in_flight() {
    let sim = start_sim_with_latency(500).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_file = dir.path().join("records.db");
    let a = create_key(&keys_file, "school-a");
    let b = create_key(&keys_file, "school-b");
    let app = app_with(CacheScope::Key, &sim, &keys_file).await;

    // One at a time: each key pays for its own answer once, then has it cached.
    assert!(!cached(&app, &a, "What is 2+2?").await);
    assert!(
        !cached(&app, &b, "What is 2+2?").await,
        "B must not see A's answer"
    );
    assert!(cached(&app, &a, "What is 2+2?").await);
    assert!(cached(&app, &b, "What is 2+2?").await);
    assert_eq!(sim.stats().requests, 2);

    // At once: two keys make two calls; one key asking twice makes one.
    let (x, y) = tokio::join!(
        cached(&app, &a, "Why is the sky blue?"),
        cached(&app, &b, "Why is the sky blue?")
    );
    assert!(!x && !y);
    assert_eq!(sim.stats().requests, 4, "one call per key");
    let (x, y) = tokio::join!(
        cached(&app, &a, "What is a prime?"),
        cached(&app, &a, "What is a prime?")
    );
    assert!(!x && !y, "both waited on the one call");
    assert_eq!(sim.stats().requests, 5, "one call for the key's two askers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_scope_is_the_default_and_serves_every_key_one_answer() {
    assert_eq!(
        learning_chat::Settings::default().cache.scope,
        CacheScope::Shared
    );
    let sim = start_sim_with_latency(500).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_file = dir.path().join("records.db");
    let a = create_key(&keys_file, "school-a");
    let b = create_key(&keys_file, "school-b");
    let app = app_with(CacheScope::Shared, &sim, &keys_file).await;

    assert!(!cached(&app, &a, "What is 2+2?").await);
    assert!(cached(&app, &b, "What is 2+2?").await);
    let (x, y) = tokio::join!(
        cached(&app, &a, "Why is the sky blue?"),
        cached(&app, &b, "Why is the sky blue?")
    );
    assert!(!x && !y);
    assert_eq!(sim.stats().requests, 2, "one call for both keys");
}
