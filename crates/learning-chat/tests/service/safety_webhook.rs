//! Flags reach a teacher's webhook from the database outbox: signed, retried with backoff while
//! the receiver is down, each delivered once by its stable id when it is back.

use crate::safety::{ask_as, harm_sim, HARMFUL};
use crate::support::webhook::Receiver;
use crate::support::{prom, settings_for, spawn_app};
use learning_chat::safety::webhook::signature;
use reqwest::StatusCode;
use std::time::Duration;

const SECRET: &str = "webhook-secret";

#[tokio::test]
async fn a_receiver_down_for_a_while_then_up_gets_every_flag_once_signed() {
    let sim = harm_sim().await;
    let mut receiver = Receiver::new();
    let mut settings = settings_for(&sim);
    settings.safety.webhook_url = receiver.url();
    settings.safety.webhook_secret = learning_chat::config::Secret::new(SECRET);
    // The 10-minute outage of docs/safety.md, scaled down: the same schedule, shorter steps.
    settings.safety.webhook_poll = Duration::from_millis(50);
    settings.safety.webhook_retry_min = Duration::from_millis(50);
    settings.safety.webhook_retry_max = Duration::from_millis(200);
    settings.safety.webhook_timeout = Duration::from_millis(500);
    let app = spawn_app(settings).await;

    // Three harmful questions while the receiver is down: six flags (question and answer).
    for n in 0..3 {
        let (status, body) = ask_as(&app, None, &format!("{HARMFUL} #{n}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Several failed rounds of every flag: retried with backoff, nothing dropped.
    prom::scrape_until(
        &app.client,
        &app.metrics_base(),
        Duration::from_secs(20),
        "two failed attempts of every flag",
        |s| {
            s.value(
                "learning_chat_webhook_attempts_total",
                &[("outcome", "failed")],
            ) >= 12.0
        },
    )
    .await;
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    assert_eq!(scrape.value("learning_chat_webhook_pending", &[]), 6.0);
    assert!(receiver.deliveries().is_empty());

    receiver.start().await;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.deliveries().len() < 6 {
        assert!(
            std::time::Instant::now() < until,
            "{:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few more rounds: nothing is sent again once acknowledged.
    prom::scrape_until(
        &app.client,
        &app.metrics_base(),
        Duration::from_secs(20),
        "an empty outbox",
        |s| s.value("learning_chat_webhook_pending", &[]) == 0.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = receiver.deliveries();
    let mut ids: Vec<&str> = deliveries.iter().map(|d| d.flag_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "six distinct flags");
    assert_eq!(deliveries.len(), 6, "each once: {deliveries:?}");
    for delivery in &deliveries {
        let timestamp: u64 = delivery.timestamp.parse().unwrap();
        assert_eq!(
            delivery.signature,
            signature(SECRET.as_bytes(), timestamp, &delivery.body),
            "the signature verifies"
        );
        let flag: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(flag["id"], delivery.flag_id.as_str());
        assert_eq!(flag["category"], "HARM_CATEGORY_DANGEROUS_CONTENT");
    }
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    assert_eq!(
        scrape.value("learning_chat_webhook_delivery_lag_seconds_count", &[]),
        6.0
    );
    receiver.stop();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_servers_sharing_postgresql_deliver_each_flag_once() {
    let postgres = learning_chat_testkit::postgres::PostgresProcess::start();
    let sim = harm_sim().await;
    let mut receiver = Receiver::new();
    receiver.start().await;
    let url = postgres.fresh_database();
    let settings = || {
        let mut settings = settings_for(&sim);
        settings.database.url = learning_chat::config::DatabaseUrl::new(url.clone());
        settings.safety.webhook_url = receiver.url();
        settings.safety.webhook_secret = learning_chat::config::Secret::new(SECRET);
        settings.safety.webhook_poll = Duration::from_millis(20);
        settings
    };
    let a = spawn_app(settings()).await;
    let b = spawn_app(settings()).await;
    // Each server raises flags; both look at the one outbox every 20 ms.
    for n in 0..4 {
        let app = if n % 2 == 0 { &a } else { &b };
        let (status, body) = ask_as(app, None, &format!("{HARMFUL} #{n}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.deliveries().len() < 8 {
        assert!(
            std::time::Instant::now() < until,
            "{:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many more rounds of both servers: nothing is posted twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = receiver
        .deliveries()
        .into_iter()
        .map(|d| d.flag_id)
        .collect();
    assert_eq!(ids.len(), 8, "{ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "each flag once");
    receiver.stop();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
