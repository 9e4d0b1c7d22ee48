//! Prometheus metrics on their own listener (`metrics.bind`), never on the public service port
//! unless asked for (`metrics.on_service_port`): the series name API keys and their usage.

use crate::support::{offline_settings, spawn_app};
use learning_chat_testkit::process::{server_command, spawn_server};
use learning_chat_testkit::prom;
use reqwest::StatusCode;
use std::time::Duration;

fn client() -> reqwest::Client {
    learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_real_binary_serves_metrics_on_the_metrics_listener_and_404_on_the_service_port() {
    let (mut command, port) = server_command();
    command
        .env("LEARNING_CHAT_OFFLINE__LATENCY_MS", "0")
        .env("LEARNING_CHAT_DATABASE__URL", "none");
    let server = spawn_server(command, port);
    let client = client();
    let service = format!("http://127.0.0.1:{port}");
    let asked = client
        .post(format!("{service}/api/v1/agents/math"))
        .json(&serde_json::json!({ "message": "What is 2+2?" }))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::OK);

    let public = client
        .get(format!("{service}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = public.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let scrape = prom::scrape(&client, &server.metrics_base()).await;
    let chat = [
        ("route", "/api/v1/agents/{agent_id}"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        scrape.value("learning_chat_http_requests_total", &chat),
        1.0
    );
    for series in [
        "learning_chat_http_connections_open",
        "learning_chat_http_stalled_responses_total",
        "learning_chat_streams_open",
        "learning_chat_cache_lookups_total",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.name == series),
            "{series} is missing from the metrics listener"
        );
    }
    // The metrics listener serves nothing else.
    let other = client
        .get(format!("{}/api/v1/agents", server.metrics_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn on_service_port_serves_them_on_both_and_off_serves_no_listener() {
    let mut settings = offline_settings();
    settings.metrics.on_service_port = true;
    let app = spawn_app(settings).await;
    let both = [app.url("/metrics"), app.metrics_url()];
    for url in both {
        let page = app.client.get(&url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{url}");
        assert!(page.text().await.unwrap().contains("learning_chat_"));
    }
    app.stop().await.unwrap();

    for off in ["off", ""] {
        let mut settings = offline_settings();
        settings.metrics.bind = off.to_owned();
        let app = spawn_app(settings).await;
        assert_eq!(app.metrics_addr, None, "metrics.bind = {off:?}");
        let page = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        app.stop().await.unwrap();
    }
}
