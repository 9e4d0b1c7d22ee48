//! Request ids reach every log line of a request, even those logged by the upstream task.

use crate::support::logs::capture_logs;
use crate::support::{offline_settings, settings_for, spawn_app, start_sim};
use gemini_sim::SimConfig;
use learning_chat::config::LogFormat;
use learning_chat::telemetry;
use reqwest::StatusCode;
use serde_json::Value;

/// One question whose model call fails once and is retried (a warning logged inside the
/// spawned upstream task), then fails for good (errors logged by the handler and the trace layer).
async fn ask_with_a_retry(format: LogFormat, request_id: &str) -> Vec<String> {
    let mut config = SimConfig::default();
    config.faults.error_500 = 1.0;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 1;
    settings.telemetry.log_format = format;
    let logs = capture_logs(&settings);
    let app = spawn_app(settings).await;
    let reply = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .header("x-request-id", request_id)
        .json(&serde_json::json!({ "message": "Is zero even?" }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers()["x-request-id"], request_id);
    assert_eq!(sim.stats().requests, 2);
    let lines = logs.lines();
    assert!(
        lines.iter().any(|l| l.contains("retrying")),
        "no retry line in {lines:#?}"
    );
    assert!(lines.len() >= 3, "{lines:#?}");
    lines
}

#[tokio::test]
async fn every_json_log_line_of_a_request_carries_its_id_even_from_the_upstream_task() {
    let lines = ask_with_a_retry(LogFormat::Json, "obs-json-1").await;
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let spans = parsed["spans"]
            .as_array()
            .unwrap_or_else(|| panic!("no span list: {line}"));
        assert!(
            spans.iter().any(|s| s["name"] == "request"
                && s["request_id"] == "obs-json-1"
                && s["method"] == "POST"
                && s["path"] == "/api/v1/agents/math"),
            "a line without the request id, method and path: {line}"
        );
        assert_eq!(parsed["span"]["request_id"], "obs-json-1", "{line}");
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn every_text_log_line_of_a_request_carries_its_id_even_from_the_upstream_task() {
    let lines = ask_with_a_retry(LogFormat::Text, "obs-text-1").await;
    for line in &lines {
        assert!(
            line.contains("request{request_id=obs-text-1 method=POST path=/api/v1/agents/math}"),
            "a line without the request id, method and path: {line}"
        );
    }
}

#[tokio::test]
async fn request_ids_are_kept_when_usable_and_replaced_when_not() {
    let app = spawn_app(offline_settings()).await;
    let id_of = |value: String| {
        let app = &app;
        async move {
            let reply = app
                .client
                .get(app.url("/health"))
                .header("x-request-id", value)
                .send()
                .await
                .unwrap();
            reply.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        id_of("nginx-7f3a:9.1_x".to_owned()).await,
        "nginx-7f3a:9.1_x"
    );
    let long = "a".repeat(telemetry::MAX_REQUEST_ID_LEN + 1);
    let replaced = id_of(long.clone()).await;
    assert_ne!(replaced, long);
    assert_eq!(replaced.len(), 36, "a generated UUID: {replaced}");
    assert_ne!(id_of("two words".to_owned()).await, "two words");
    // Without one, each request gets its own.
    let a = app.client.get(app.url("/health")).send().await.unwrap();
    let b = app.client.get(app.url("/health")).send().await.unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}
