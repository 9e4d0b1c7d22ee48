//! Streamed answers: the service on port 0 against gemini-sim's `streamGenerateContent`, read as a
//! client reads them, event by event.
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::sse::{eventually, metrics, paced, stream, stream_request, SseReader};
use crate::support::{offline_settings, settings_for, spawn_app, start_sim};
use reqwest::StatusCode;
use serde_json::Value;
use std::num::NonZero;
use std::time::Duration;

#[tokio::test]
async fn streamed_pieces_in_order_make_the_non_streamed_answer_and_the_cache_streams_it() {
    let sim = start_sim(paced(0, 10)).await;
    let streaming = spawn_app(settings_for(&sim)).await;
    let (deltas, done) = stream(&streaming, "math", "What is a prime number?")
        .await
        .rest()
        .await;
    assert_eq!(done.event, "done", "{done:?}");
    let done = done.json();
    assert!(deltas.len() > 3, "the answer came in pieces: {deltas:?}");
    assert_eq!(done["response"].as_str().unwrap(), deltas.concat());
    assert_eq!(done["cached"], false);
    assert_eq!(done["finish_reason"], "STOP");
    assert_eq!(done["agent_id"], "math");
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(done["latency_ms"].is_u64());
    assert!(done["conversation_id"].is_string());
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.streams), (1, 1));

    // Another server (no shared cache) asked the same without streaming: the same text.
    let plain = spawn_app(settings_for(&sim)).await;
    let json: Value = plain
        .ask("math", "What is a prime number?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["response"].as_str().unwrap(), deltas.concat());

    // The streamed answer was cached like a JSON one: both endpoints serve it without a call.
    let cached: Value = streaming
        .ask("math", "What is a prime number?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cached["cached"], true);
    assert_eq!(cached["response"].as_str().unwrap(), deltas.concat());
    let (again, done) = stream(&streaming, "math", "What is a prime number?")
        .await
        .rest()
        .await;
    assert_eq!(again.concat(), deltas.concat());
    assert_eq!(done.json()["cached"], true);
    assert_eq!(
        sim.stats().requests,
        2,
        "one call per server, none for the cache hits"
    );
    let text = metrics(&streaming).await;
    assert!(
        text.contains(
            r#"learning_chat_stream_time_to_first_token_seconds_count{source="cached"} 1"#
        ),
        "{text}"
    );
    assert!(text
        .contains(r#"learning_chat_stream_time_to_first_token_seconds_count{source="fresh"} 1"#));
    assert!(text.contains("learning_chat_stream_bytes_total"));
}

#[tokio::test]
async fn the_offline_model_streams_word_by_word_and_the_answer_continues_the_conversation() {
    let mut settings = offline_settings();
    settings.offline.latency = Duration::from_millis(200);
    let app = spawn_app(settings).await;
    let (deltas, done) = stream(&app, "science", "Why is the sky blue?")
        .await
        .rest()
        .await;
    assert!(deltas.len() > 10, "{deltas:?}");
    let done = done.json();
    assert_eq!(done["response"].as_str().unwrap(), deltas.concat());
    let id = done["conversation_id"].as_str().unwrap().to_owned();
    // The streamed exchange was stored: a follow-up, streamed too, is turn 2 of it.
    let mut follow_up = SseReader::new(
        stream_request(
            &app,
            "science",
            serde_json::json!({"message": "And at sunset?", "conversation_id": id}),
        )
        .await,
    );
    let (_, done) = follow_up.rest().await;
    let done = done.json();
    assert_eq!(done["turn"], 2, "{done}");
    assert_eq!(done["conversation_id"].as_str(), Some(id.as_str()));
    let conversation = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(conversation["turns"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_is_not_cached() {
    let mut config = paced(0, 30);
    config.faults.stream_cut = 1.0;
    let sim = start_sim(config).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_retries = 0;
    let app = spawn_app(settings).await;
    let (deltas, end) = stream(&app, "history", "Who was Hannibal?")
        .await
        .rest()
        .await;
    assert!(!deltas.is_empty(), "the cut came after some text");
    assert_eq!(end.event, "error", "{end:?}");
    let error = end.json();
    assert_eq!(error["error"]["code"], "upstream_unavailable", "{error}");
    assert!(error["error"]["message"].is_string());
    assert_eq!(sim.stats().stream_cut, 1);
    // Nothing was cached: the next ask calls the model again.
    sim.update_config(|c| c.faults.stream_cut = 0.0);
    let json: Value = app
        .ask("history", "Who was Hannibal?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["cached"], false, "{json}");
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn a_late_joiner_gets_the_prefix_replayed_then_the_live_pieces_from_one_call() {
    let sim = start_sim(paced(0, 60)).await;
    let app = spawn_app(settings_for(&sim)).await;
    let mut first = stream(&app, "math", "Explain fractions slowly").await;
    let mut seen = String::new();
    for _ in 0..3 {
        let event = first.next_event().await.unwrap();
        assert_eq!(event.event, "delta");
        seen.push_str(event.json()["text"].as_str().unwrap());
    }
    let mut late = stream(&app, "math", "Explain fractions slowly").await;
    let replay = late.next_event().await.unwrap();
    let replayed = replay.json()["text"].as_str().unwrap().to_owned();
    assert!(
        replayed.starts_with(&seen),
        "the late joiner's first piece holds everything sent before it joined: {replayed:?} vs {seen:?}"
    );
    let (rest_first, done_first) = first.rest().await;
    let (rest_late, done_late) = late.rest().await;
    let whole = format!("{seen}{}", rest_first.concat());
    assert_eq!(format!("{replayed}{}", rest_late.concat()), whole);
    assert_eq!(done_first.json()["response"].as_str().unwrap(), whole);
    assert_eq!(done_late.json()["response"].as_str().unwrap(), whole);
    assert_eq!(sim.stats().requests, 1, "one upstream stream for both");
    let text = metrics(&app).await;
    assert!(
        text.contains(
            r#"learning_chat_stream_time_to_first_token_seconds_count{source="coalesced"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_disconnect_cancels_the_upstream_stream_when_no_one_else_listens_and_nothing_is_cached() {
    let mut config = paced(0, 100);
    config.answer_tokens = 400;
    let sim = start_sim(config).await;
    let app = spawn_app(settings_for(&sim)).await;
    let mut reader = stream(&app, "history", "Tell me all about Rome").await;
    assert_eq!(reader.next_event().await.unwrap().event, "delta");
    drop(reader);
    eventually("the model stream is cancelled", || async {
        sim.stats().cancelled == 1
    })
    .await;
    eventually("the cancellation is counted", || async {
        let text = metrics(&app).await;
        text.contains(r#"learning_chat_stream_cancellations_total{by="upstream"} 1"#)
            && text.contains(r#"learning_chat_stream_cancellations_total{by="client"} 1"#)
            && text.contains("learning_chat_streams_open 0")
    })
    .await;
    // Not cached: a later question pays for a new call (documented: output tokens cost money,
    // and nobody was left to read them).
    sim.update_config(|c| c.stream.chunk_delay_ms = 0);
    let json: Value = app
        .ask("history", "Tell me all about Rome")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["cached"], false);
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn a_disconnect_keeps_the_upstream_stream_for_the_others_and_the_answer_is_cached() {
    let sim = start_sim(paced(0, 40)).await;
    let app = spawn_app(settings_for(&sim)).await;
    let mut leaving = stream(&app, "math", "What is a ratio?").await;
    let mut staying = stream(&app, "math", "What is a ratio?").await;
    assert_eq!(leaving.next_event().await.unwrap().event, "delta");
    drop(leaving);
    let (deltas, done) = staying.rest().await;
    assert_eq!(done.event, "done");
    assert_eq!(done.json()["response"].as_str().unwrap(), deltas.concat());
    let json: Value = app
        .ask("math", "What is a ratio?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["cached"], true);
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.cancelled), (1, 0));
}

#[tokio::test]
async fn errors_before_the_stream_keep_their_status_and_json_body() {
    let sim = start_sim(paced(2_000, 50)).await;
    let mut settings = settings_for(&sim);
    settings.stream.max_open = NonZero::new(1).unwrap();
    settings.stream.keepalive = Duration::from_millis(50);
    let app = spawn_app(settings).await;
    let unknown = stream_request(&app, "astrology", serde_json::json!({"message": "hi"})).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_agent");
    let missing = stream_request(&app, "math", serde_json::json!({})).await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // One stream open (waiting 2 s for its first chunk) fills `stream.max_open = 1`.
    let holder = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/v1/agents/math/stream");
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"message": "hold the only stream"}))
                .send()
                .await
        }
    });
    eventually("one stream open", || async {
        metrics(&app).await.contains("learning_chat_streams_open 1")
    })
    .await;
    let refused = stream_request(&app, "math", serde_json::json!({"message": "another"})).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    // The held stream goes on, with `: ping` comments between its slow pieces.
    let mut held = SseReader::new(holder.await.unwrap().unwrap());
    let mut pings = 0;
    loop {
        let event = held.next().await.expect("the stream ends with done");
        match event.event.as_str() {
            ":" => {
                assert_eq!(event.data, "ping");
                pings += 1;
            }
            "done" => break,
            _ => {}
        }
    }
    assert!(pings > 0, "no keep-alive comment in a slow stream");
    assert!(metrics(&app)
        .await
        .contains("learning_chat_streams_refused_total 1"));
}

#[tokio::test]
async fn an_overloaded_server_answers_503_before_any_stream() {
    let sim = start_sim(paced(3_000, 0)).await;
    let mut settings = settings_for(&sim);
    settings.upstream.max_concurrency = NonZero::new(1).unwrap();
    settings.upstream.max_queue = 0;
    let app = spawn_app(settings).await;
    let _busy = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/v1/agents/math/stream");
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"message": "the one slot"}))
                .send()
                .await
        }
    });
    eventually("a model call in flight", || async {
        sim.stats().in_flight == 1
    })
    .await;
    let shed = stream_request(&app, "math", serde_json::json!({"message": "no room"})).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(shed.headers().contains_key("retry-after"));
    let body: Value = shed.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
}

#[tokio::test]
async fn a_streamed_answer_is_charged_to_its_key_when_the_stream_ends() {
    use learning_chat::auth::keys::KeyLimits;
    let sim = start_sim(paced(0, 20)).await;
    let mut settings = settings_for(&sim);
    crate::support::require_keys(&mut settings, "streaming-pepper-0123456");
    let secret = crate::support::add_key(&settings, |key| {
        key.name = "streamer".into();
        // A day's budget spent by the first streamed answer.
        key.limits = KeyLimits {
            tokens_per_day: 1,
            ..KeyLimits::default()
        };
    })
    .await;
    let app = spawn_app(settings).await;
    let ask = |message: String| {
        app.client
            .post(app.url("/api/v1/agents/math/stream"))
            .bearer_auth(&secret)
            .json(&serde_json::json!({ "message": message }))
            .send()
    };
    let (_, done) = SseReader::new(ask("What is a vector?".into()).await.unwrap())
        .rest()
        .await;
    assert_eq!(done.event, "done");
    // The charge lands just after the stream's end; the next question finds the budget spent.
    let mut n = 0;
    loop {
        n += 1;
        let reply = ask(format!("Another question #{n}")).await.unwrap();
        if reply.status() == StatusCode::TOO_MANY_REQUESTS {
            let body: Value = reply.json().await.unwrap();
            assert_eq!(body["error"]["code"], "key_token_budget_exhausted");
            break;
        }
        assert_eq!(reply.status(), StatusCode::OK);
        let _ = SseReader::new(reply).rest().await;
        assert!(n < 5, "the streamed answer's tokens were never charged");
    }
}
