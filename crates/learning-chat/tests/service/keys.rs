//! API keys in one server: a key that requires a learner id, and a server whose records
//! database has been down since it started.

use crate::support::{add_key, offline_settings, require_keys, spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

async fn ask(
    app: &TestApp,
    secret: &str,
    learner: Option<&str>,
    message: &str,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "message": message }));
    if let Some(learner) = learner {
        request = request.header("x-learner-id", learner);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_key_that_requires_a_learner_refuses_requests_without_one() {
    let mut settings = offline_settings();
    require_keys(&mut settings, "learner-pepper-0123456789");
    let strict = add_key(&settings, |key| {
        key.require_learner = true;
        key.limits.learner_rpm = 1;
    })
    .await;
    let open = add_key(&settings, |_| {}).await;
    // Made before the start: the server's first read holds them.
    let app = spawn_app(settings).await;

    let (status, body) = ask(&app, &strict, None, "What is 2+2?").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "learner_id_required");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-Learner-Id"));
    // A blank header is no learner either; listing agents with the key needs one too.
    let (status, _) = ask(&app, &strict, Some("  "), "What is 2+2?").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let agents = app
        .client
        .get(app.url("/api/v1/agents"))
        .bearer_auth(&strict)
        .send()
        .await
        .unwrap();
    assert_eq!(agents.status(), StatusCode::BAD_REQUEST);

    // Named, the learner gets answered, and the per-learner limit applies to them.
    let (status, body) = ask(&app, &strict, Some("student-17"), "What is 2+2?").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ask(&app, &strict, Some("student-17"), "What is 3+3?").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "learner_rate_limited");
    let (status, _) = ask(&app, &strict, Some("student-18"), "What is 3+3?").await;
    assert_eq!(status, StatusCode::OK);

    // A key without the flag does not need the header.
    let (status, _) = ask(&app, &open, None, "What is 2+2?").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_database_down_since_start_keyed_requests_get_503_not_401() {
    let mut settings = offline_settings();
    settings.auth.mode = learning_chat::config::AuthMode::Required;
    settings.auth.pepper = learning_chat::config::Secret::new("down-pepper-0123456789");
    // Nothing listens on port 1.
    settings.database.url =
        learning_chat::config::DatabaseUrl::new("postgres://postgres@127.0.0.1:1/records");
    settings.database.acquire_timeout = Duration::from_millis(200);
    let app = spawn_app(settings).await;
    let (status, body) = ask(&app, "lc_some-key-the-server-cannot-check-yet", None, "hi").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "auth_unavailable");
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

/// Four `learning-chat keys create` processes started together on one new SQLite file, as a
/// cluster's servers start on a shared file: each migrated it at once and all but one failed
/// ("table api_keys already exists"; a CI run's "did not listen"). Now every one succeeds.
#[test]
fn processes_opening_one_new_sqlite_file_together_all_succeed() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records.db");
        let started: Vec<_> = (0..4)
            .map(|n| {
                std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
                    .args(["keys", "create", "--name", &format!("school-{n}")])
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("LEARNING_CHAT_AUTH__MODE", "required")
                    .env("LEARNING_CHAT_AUTH__PEPPER", crate::fair_queue::PEPPER)
                    .env(
                        "LEARNING_CHAT_DATABASE__URL",
                        crate::fair_queue::records_url(&records),
                    )
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("learning-chat keys create starts")
            })
            .collect();
        for child in started {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
