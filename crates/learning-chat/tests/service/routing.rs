//! Model routing against the real service on port 0 and gemini-sim: the fallback chain (503 at 100%
//! on the primary, a per-day 429), the circuit breaker opening and closing, and an
//! OpenAI-compatible agent (gemini-sim's `/v1/chat/completions`) answering, caching and streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::model_clients::request;
use crate::support::{settings_for, spawn_app, start_sim, TestApp};
use futures::StreamExt;
use gemini_sim::{FaultConfig, QuotaConfig, SimConfig, SimServer};
use learning_chat::config::{Secret, Settings};
use learning_chat::providers::{OpenAiClient, ProviderError, StreamPiece};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

const PRIMARY: &str = "gemini-2.5-flash";
const FALLBACK: &str = "gemini-2.5-flash-lite";

/// An agents file with one tutor and the given extra TOML lines (its models).
fn agents_file(extra: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[[agents]]\nid = 'tutor'\nname = 'Tutor'\ndescription = 'd'\n\
             system_prompt = 'You are a tutor.'\n{extra}\n"
        ),
    )
    .unwrap();
    file
}

fn chain_settings(sim: &SimServer, agents: &tempfile::NamedTempFile) -> Settings {
    let mut settings = settings_for(sim);
    settings.agents.path = Some(agents.path().to_owned());
    settings
}

fn overloaded(model: &str) -> impl FnOnce(&mut SimConfig) + '_ {
    move |config: &mut SimConfig| {
        config.model_faults.insert(
            model.to_owned(),
            FaultConfig {
                error_503: 1.0,
                ..FaultConfig::default()
            },
        );
    }
}

async fn ask(app: &TestApp, message: &str) -> Value {
    let response = app.ask("tutor", message).await;
    assert_eq!(response.status(), 200, "{message}");
    response.json().await.unwrap()
}

fn calls(sim: &SimServer, model: &str) -> u64 {
    sim.stats().per_model.get(model).map_or(0, |s| s.requests)
}

#[tokio::test]
async fn a_primary_at_503_hands_over_to_the_fallback_with_one_extra_call() {
    let sim = start_sim(SimConfig::default()).await;
    sim.update_config(overloaded(PRIMARY));
    let agents = agents_file(&format!("models = ['{PRIMARY}', '{FALLBACK}']"));
    let mut settings = chain_settings(&sim, &agents);
    settings.upstream.max_retries = 2;
    settings.routing.breaker_failures = 0;
    let app = spawn_app(settings).await;

    let body = ask(&app, "What is a fraction?").await;
    assert_eq!(body["model"], FALLBACK, "{body}");
    assert_eq!(body["cached"], false);
    // The primary's retries are spent (1 + 2 calls), then exactly one call to the fallback.
    assert_eq!(calls(&sim, PRIMARY), 3);
    assert_eq!(calls(&sim, FALLBACK), 1);

    // The fallback's answer is cached under the fallback's key: once the primary is back, the
    // same question is the primary's to answer, not the fallback's answer served as its own.
    sim.update_config(|c| c.model_faults.clear());
    let body = ask(&app, "What is a fraction?").await;
    assert_eq!(body["model"], PRIMARY, "{body}");
    assert_eq!(body["cached"], false);
    assert_eq!(calls(&sim, PRIMARY), 4);
    let body = ask(&app, "What is a fraction?").await;
    assert_eq!(
        (body["model"].as_str(), body["cached"].as_bool()),
        (Some(PRIMARY), Some(true))
    );
    assert_eq!(sim.stats().requests, 5);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_per_day_429_hands_over_at_once_without_retries() {
    let sim = start_sim(SimConfig {
        quota: QuotaConfig {
            rpd: 1,
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let agents = agents_file(&format!("models = ['{PRIMARY}', '{FALLBACK}']"));
    let mut settings = chain_settings(&sim, &agents);
    settings.upstream.max_retries = 3;
    let app = spawn_app(settings).await;
    assert_eq!(ask(&app, "What is a prime?").await["model"], PRIMARY);
    // The primary's day is used up: one 429, no retry, and the fallback answers.
    let body = ask(&app, "What is a composite number?").await;
    assert_eq!(body["model"], FALLBACK, "{body}");
    assert_eq!(calls(&sim, PRIMARY), 2);
    assert_eq!(calls(&sim, FALLBACK), 1);
    assert_eq!(sim.stats().rate_limited, 1);
    app.stop().await.unwrap();
}

async fn circuit(app: &TestApp, model: &str) -> String {
    let ready = app.get_json("/ready").await;
    ready["circuits"][model]
        .as_str()
        .unwrap_or("missing")
        .to_owned()
}

#[tokio::test]
async fn the_circuit_opens_after_n_failures_and_closes_after_the_probe() {
    const COOLDOWN_MS: u64 = 5_000;
    let sim = start_sim(SimConfig::default()).await;
    sim.update_config(overloaded(PRIMARY));
    let agents = agents_file(&format!("models = ['{PRIMARY}', '{FALLBACK}']"));
    let mut settings = chain_settings(&sim, &agents);
    settings.upstream.max_retries = 0;
    settings.routing.breaker_failures = 3;
    // Long enough that the steps below, while it is open, cannot outlast it on a loaded
    // machine (300 ms could pass before them); the wait for it below is a lower bound.
    settings.routing.breaker_cooldown = Duration::from_millis(COOLDOWN_MS);
    let app = spawn_app(settings).await;

    for question in ["What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?"] {
        assert_eq!(ask(&app, question).await["model"], FALLBACK);
    }
    assert_eq!(calls(&sim, PRIMARY), 3);
    assert_eq!(circuit(&app, PRIMARY).await, "open");
    assert_eq!(circuit(&app, FALLBACK).await, "closed");

    // Open: the primary is skipped, not called.
    assert_eq!(ask(&app, "What is 4 + 4?").await["model"], FALLBACK);
    assert_eq!(calls(&sim, PRIMARY), 3);
    // While it is skipped, the fallback's cached answers serve at once.
    let before = sim.stats().requests;
    let body = ask(&app, "What is 1 + 1?").await;
    assert_eq!(
        (body["model"].as_str(), body["cached"].as_bool()),
        (Some(FALLBACK), Some(true))
    );
    assert_eq!(sim.stats().requests, before);

    // The primary recovers; after the cool-down one probe goes to it and closes the circuit.
    sim.update_config(|c| c.model_faults.clear());
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 100)).await;
    assert_eq!(ask(&app, "What is 5 + 5?").await["model"], PRIMARY);
    assert_eq!(calls(&sim, PRIMARY), 4);
    assert_eq!(circuit(&app, PRIMARY).await, "closed");
    assert_eq!(ask(&app, "What is 6 + 6?").await["model"], PRIMARY);

    let metrics = app
        .client
        .get(app.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "learning_chat_model_circuit_state{model=\"gemini-2.5-flash\"} 0",
        "learning_chat_model_answers_total{model=\"gemini-2.5-flash-lite\",position=\"fallback\"}",
        "learning_chat_model_fallbacks_total{model=\"gemini-2.5-flash\"}",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    app.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible provider
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_openai_compatible_agent_answers_and_caches() {
    let sim = start_sim(SimConfig::default()).await;
    let agents = agents_file(&format!(
        "provider = 'openai'\nbase_url = '{}'\nmodel = 'llama3'",
        sim.base_url()
    ));
    let mut settings = chain_settings(&sim, &agents);
    // No Gemini key at all: the agent needs none.
    settings.gemini.api_key = Secret::default();
    let app = spawn_app(settings).await;
    let body = ask(&app, "What is photosynthesis?").await;
    assert_eq!(
        (body["model"].as_str(), body["cached"].as_bool()),
        (Some("llama3"), Some(false))
    );
    assert!(
        !body["response"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    let again = ask(&app, "What is photosynthesis?").await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["response"], body["response"]);
    assert_eq!(calls(&sim, "llama3"), 1);
    app.stop().await.unwrap();
}

fn client(sim: &SimServer) -> OpenAiClient {
    crate::model_clients::openai(&sim.base_url(), "sk-test")
}

#[tokio::test]
async fn the_openai_provider_streams_the_same_answer_in_pieces() {
    let sim = start_sim(SimConfig::default()).await;
    sim.update_config(|c| {
        c.stream.chunk_tokens = 4;
        c.stream.chunk_delay_ms = 5;
    });
    let client = client(&sim);
    let deadline = Instant::now() + Duration::from_secs(20);
    let question = request("llama3", "Why is the sky blue?");
    let whole = client.generate(&question, deadline).await.unwrap();
    let mut stream = client.generate_stream(&question, deadline).await.unwrap();
    let mut texts = Vec::new();
    let mut finished = None;
    while let Some(piece) = stream.next().await {
        match piece.unwrap() {
            StreamPiece::Text(text) => {
                assert!(finished.is_none(), "text after the end");
                texts.push(text);
            }
            StreamPiece::Finished(completion) => finished = Some(completion),
        }
    }
    let finished = finished.expect("a Finished piece");
    assert!(texts.len() > 3, "{texts:?}");
    assert_eq!(texts.concat(), finished.text);
    assert_eq!(finished.text, whole.text);
    assert_eq!(finished.usage, whole.usage);
    assert!(finished.usage.prompt_tokens > 0 && finished.usage.output_tokens > 0);
    assert_eq!(finished.finish_reason, gemini_wire::FinishReason::Stop);
    assert_eq!(sim.stats().streams, 1);
}

#[tokio::test]
async fn a_cut_openai_stream_ends_with_an_error_item() {
    let sim = start_sim(SimConfig::default()).await;
    sim.update_config(|c| {
        c.stream.chunk_tokens = 4;
        c.stream.chunk_delay_ms = 5;
        c.faults.stream_cut = 1.0;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = client(&sim)
        .generate_stream(&request("llama3", "Why is the sky blue?"), deadline)
        .await
        .unwrap();
    let mut last = None;
    while let Some(piece) = stream.next().await {
        last = Some(piece);
    }
    assert!(matches!(last, Some(Err(_))), "{last:?}");
}

#[tokio::test]
async fn the_openai_rate_limit_is_a_429_with_its_wait() {
    let sim = start_sim(SimConfig::default()).await;
    sim.update_config(|c| c.openai.rpm = 1);
    let client = client(&sim);
    let deadline = Instant::now() + Duration::from_secs(20);
    client
        .generate(&request("llama3", "One"), deadline)
        .await
        .unwrap();
    let error = client
        .generate(&request("llama3", "Two"), deadline)
        .await
        .unwrap_err();
    match error {
        ProviderError::RateLimited {
            retry_after: Some(wait),
            daily: false,
        } => assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(60),
            "{wait:?}"
        ),
        other => panic!("{other:?}"),
    }
    // A stream is refused the same way, before its body.
    let refused = client
        .generate_stream(&request("llama3", "Three"), deadline)
        .await;
    assert!(matches!(refused, Err(ProviderError::RateLimited { .. })));
}
