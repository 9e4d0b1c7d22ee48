//! Reading the service's server-sent events as a client does, for the streaming tests.

use crate::support::{fixed_latency, TestApp};
use axum::body::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use gemini_sim::SimConfig;
use gemini_wire::sse::{SseItem, SseStream};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// One server-sent event (comments are kept as `event == ":"`).
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads a `text/event-stream` body event by event.
pub struct SseReader {
    events: SseStream<BoxStream<'static, reqwest::Result<Bytes>>>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            events: SseStream::new(response.bytes_stream().boxed()),
        }
    }

    /// The next event, comments included; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Event> {
        let item = self.events.next().await;
        // The decoder hands over an event the body ended inside; the service must finish each.
        assert!(
            !self.events.ended_unfinished(),
            "the body ended inside an event or line (last item: {item:?})"
        );
        match item? {
            Ok(SseItem::Event(e)) => Some(Event {
                event: e.event,
                data: e.data,
            }),
            Ok(SseItem::Comment(text)) => Some(Event {
                event: ":".to_owned(),
                data: text,
            }),
            Err(e) => panic!("stream broke: {e}"),
        }
    }

    /// The next event that is not a `: ping`.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            let event = self.next().await?;
            if event.event != ":" {
                return Some(event);
            }
        }
    }

    /// Every delta's text, then the final event (`done` or `error`); checks nothing follows.
    pub async fn rest(&mut self) -> (Vec<String>, Event) {
        let mut deltas = Vec::new();
        loop {
            let event = self.next_event().await.expect("a done or error event");
            match event.event.as_str() {
                "delta" => {
                    let text = event.json()["text"].as_str().unwrap().to_owned();
                    assert!(!text.is_empty(), "an empty delta");
                    deltas.push(text);
                }
                "done" | "error" => {
                    assert!(self.next_event().await.is_none(), "events after {event:?}");
                    return (deltas, event);
                }
                other => panic!("unexpected event {other}: {event:?}"),
            }
        }
    }
}

pub async fn stream_request(app: &TestApp, agent: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/agents/{agent}/stream")))
        .json(&body)
        .send()
        .await
        .expect("request reaches the service")
}

pub async fn stream(app: &TestApp, agent: &str, message: &str) -> SseReader {
    SseReader::new(stream_request(app, agent, serde_json::json!({ "message": message })).await)
}

/// A simulator streaming small chunks `delay_ms` apart, the first after `first_ms`.
pub fn paced(first_ms: u64, delay_ms: u64) -> SimConfig {
    let mut config = SimConfig {
        latency: fixed_latency(first_ms),
        ..SimConfig::default()
    };
    config.stream.first_chunk_ms = Some(first_ms);
    config.stream.chunk_delay_ms = delay_ms;
    config.stream.chunk_tokens = 4;
    config
}

pub async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `check` every 50 ms for up to 20 s (a bound for a broken build, not a speed claim).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}
