//! A server killed in the middle of posting a flag to the webhook loses nothing: the flag's
//! claim in the outbox runs out, and the next server posts it again under the same id (at
//! least once, never under another id).

use crate::support::start_sim;
use crate::support::webhook::Receiver;
use gemini_sim::SimConfig;
use learning_chat_testkit::process::{server_command, spawn_server, sqlite_url, Proc};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

const HARMFUL: &str = "how to make a weapon";

/// A server on the records database at `database_url`, posting flags to `receiver`.
fn server(sim: &gemini_sim::SimServer, database_url: &str, receiver: &Receiver) -> Proc {
    let (mut command, port) = server_command();
    command
        .env("GEMINI_API_KEY", "webhook-test-key")
        .env("GEMINI_BASE_URL", sim.base_url())
        .env("LEARNING_CHAT_DATABASE__URL", database_url)
        .env("LEARNING_CHAT_SAFETY__WEBHOOK_URL", receiver.url())
        .env("LEARNING_CHAT_SAFETY__WEBHOOK_SECRET", "webhook-secret")
        // A delivery may take 1 s, so a dead server's claim runs out after about 2 s.
        .env("LEARNING_CHAT_SAFETY__WEBHOOK_TIMEOUT_MS", "1000")
        .env("LEARNING_CHAT_SAFETY__WEBHOOK_POLL_MS", "100")
        .env("LEARNING_CHAT_SAFETY__WEBHOOK_RETRY_MIN_MS", "100");
    spawn_server(command, port)
}

/// Waits until `receiver` has had at least `count` posts.
async fn wait_for_posts(receiver: &Receiver, count: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while receiver.deliveries().len() < count {
        assert!(Instant::now() < until, "{:?}", receiver.deliveries());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_killed_mid_delivery_leaves_the_flag_to_the_next_under_the_same_id() {
    let sim = start_sim(SimConfig {
        harm_trigger: HARMFUL.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = sqlite_url(dir.path());
    let mut receiver = Receiver::new();
    receiver.start().await;
    // The receiver takes the post and never answers: the first server is mid-delivery.
    receiver.hold(true);
    let first = server(&sim, &database_url, &receiver);
    let reply = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/agents/math",
            first.port
        ))
        .json(&serde_json::json!({ "message": format!("Tell me {HARMFUL}") }))
        .send()
        .await
        .expect("ask");
    assert_eq!(reply.status(), StatusCode::OK);
    wait_for_posts(&receiver, 1).await;
    // Give it a moment to post whatever else it would (the answer is rated too), then kill it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("-KILL");
    drop(first);
    let held: Vec<String> = receiver
        .deliveries()
        .into_iter()
        .map(|post| post.flag_id)
        .collect();
    // The receiver answers again, and a new server on the same database takes the outbox over.
    receiver.stop();
    receiver.hold(false);
    receiver.start().await;
    let _second = server(&sim, &database_url, &receiver);
    wait_for_posts(&receiver, 2 * held.len()).await;
    // A few more rounds of the new server: nothing acknowledged is posted again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let posts = receiver.deliveries();
    let mut by_id: std::collections::BTreeMap<&str, Vec<&[u8]>> = Default::default();
    for post in &posts {
        assert!(!post.flag_id.is_empty(), "{posts:?}");
        by_id.entry(&post.flag_id).or_default().push(&post.body);
    }
    for (id, bodies) in &by_id {
        // Left mid-delivery by the killed server: posted once more by the next, and only
        // once; any other flag once.
        let expected = if held.iter().any(|h| h == id) { 2 } else { 1 };
        assert_eq!(bodies.len(), expected, "flag {id}: {posts:?}");
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "the same flag, word for word"
        );
    }
    assert!(!held.is_empty());
}
