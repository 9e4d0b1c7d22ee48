//! Wire shapes: bodies parse with gemini-wire and use the real API's key names and nesting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gemini_sim::answer::count_tokens;
use gemini_sim::SimConfig;
use gemini_wire::{FinishReason, GenerateContentRequest, GenerateContentResponse};
use serde_json::{json, Value};

/// The data of every event of an SSE body.
fn event_data(body: &str) -> Vec<String> {
    let events = gemini_wire::sse::parse_events(body).unwrap();
    events.into_iter().map(|e| e.data).collect()
}

fn is_response_id(id: &str) -> bool {
    id.len() == 23
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tokio::test]
async fn generate_content_has_the_recorded_shape() {
    let sim = start(SimConfig::default()).await;
    let reply = generate(&sim, &request("How do I solve linear equations?")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let raw = reply.json();
    // Key names and nesting: every path of the recorded body except the thinking-only ones.
    let ours = key_paths(&raw);
    let recorded = key_paths(&fixture_json("generate_ok.json"));
    for path in recorded {
        if path.contains("thought") {
            continue;
        }
        assert!(ours.contains(&path), "missing {path} in {}", reply.text);
    }
    assert_eq!(raw["candidates"][0]["content"]["role"], "model");
    assert_eq!(raw["candidates"][0]["finishReason"], "STOP");
    assert_eq!(raw["candidates"][0]["index"], 0);
    assert_eq!(raw["modelVersion"], MODEL);
    assert_eq!(
        raw["usageMetadata"]["promptTokensDetails"][0]["modality"],
        "TEXT"
    );

    let parsed: GenerateContentResponse = serde_json::from_str(&reply.text).unwrap();
    let text = parsed.text();
    assert!(text.contains("linear equations"), "{text}");
    let usage = parsed.usage_metadata.as_ref().unwrap();
    let prompt = "You are a patient maths tutor.How do I solve linear equations?";
    assert_eq!(usage.prompt_token_count, count_tokens(prompt));
    assert_eq!(usage.candidates_token_count, Some(count_tokens(&text)));
    assert_eq!(
        usage.total_token_count,
        usage.prompt_token_count + count_tokens(&text)
    );
    // About the configured 120 tokens.
    assert!((90..=120).contains(&count_tokens(&text)), "{text}");
    assert!(is_response_id(parsed.response_id.as_deref().unwrap()));
    assert_eq!(parsed.finish_reason(), Some(&FinishReason::Stop));
}

#[tokio::test]
async fn sse_stream_is_framed_like_gemini() {
    let sim = start(SimConfig::default()).await;
    let url = format!(
        "{}?alt=sse",
        model_url(&sim, MODEL, "streamGenerateContent")
    );
    let reply = post_raw(
        &client(),
        &url,
        Some(KEY),
        request("What is a fraction?").to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let body = &reply.text;
    assert!(body.starts_with("data: {"), "{body}");
    assert!(body.ends_with("}\r\n\r\n"), "{body:?}");
    assert!(!body.contains("[DONE]"));
    // Every event is one `data:` line closed by CRLF CRLF.
    let raw_events: Vec<&str> = body.split_terminator("\r\n\r\n").collect();
    assert!(raw_events.len() >= 3, "{body}");
    assert!(raw_events
        .iter()
        .all(|e| e.starts_with("data: ") && !e.contains('\n')));
    let events: Vec<GenerateContentResponse> = event_data(body)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.len(), raw_events.len());
    let id = events[0].response_id.clone().unwrap();
    let mut text = String::new();
    let mut previous = 0;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.response_id.as_deref(), Some(id.as_str()));
        assert_eq!(event.model_version.as_deref(), Some(MODEL));
        text.push_str(&event.text());
        let usage = event.usage_metadata.as_ref().unwrap();
        let cumulative = usage.candidates_token_count.unwrap();
        assert!(cumulative > previous, "usage must be cumulative");
        assert_eq!(cumulative, count_tokens(&text));
        previous = cumulative;
        let last = i + 1 == events.len();
        assert_eq!(event.finish_reason().is_some(), last, "event {i}");
    }
    assert_eq!(
        events.last().unwrap().finish_reason(),
        Some(&FinishReason::Stop)
    );
    // The stream carries the same answer generateContent gives.
    let whole: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("What is a fraction?")).await.text).unwrap();
    assert_eq!(text, whole.text());
    // Raw key names of the recorded stream.
    let first: Value = serde_json::from_str(&event_data(body)[0]).unwrap();
    let recorded: Value = serde_json::from_str(&event_data(&fixture("stream_ok.sse"))[0]).unwrap();
    let ours = key_paths(&first);
    for path in key_paths(&recorded) {
        if !path.contains("thought") {
            assert!(ours.contains(&path), "missing {path}");
        }
    }
}

#[tokio::test]
async fn stream_without_alt_sse_is_a_json_array() {
    let sim = start(SimConfig::default()).await;
    let reply = post_raw(
        &client(),
        &model_url(&sim, MODEL, "streamGenerateContent"),
        Some(KEY),
        request("What is a prime number?").to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let events: Vec<GenerateContentResponse> = serde_json::from_str(&reply.text).unwrap();
    assert!(events.len() >= 3);
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.finish_reason().is_none()));
    assert_eq!(
        events.last().unwrap().finish_reason(),
        Some(&FinishReason::Stop)
    );
    let id = &events[0].response_id;
    assert!(events.iter().all(|e| &e.response_id == id));
}

#[tokio::test]
async fn count_tokens_matches_usage() {
    let sim = start(SimConfig::default()).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "How many tokens is this sentence?"}]}]});
    let reply = post_raw(
        &client(),
        &model_url(&sim, "gemini-2.0-flash", "countTokens"),
        Some(KEY),
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let raw = reply.json();
    assert_eq!(
        key_paths(&raw),
        key_paths(&fixture_json("count_tokens.json"))
    );
    let expected = count_tokens("How many tokens is this sentence?");
    assert_eq!(raw["totalTokens"], expected);
    assert_eq!(raw["promptTokensDetails"][0]["tokenCount"], expected);
    // Same count as generateContent's usage for the same contents.
    let usage = generate(&sim, &body).await.json()["usageMetadata"]["promptTokenCount"].clone();
    assert_eq!(usage, expected);
    // The generateContentRequest form counts the system instruction too.
    let wrapped = json!({"generateContentRequest": request("Hi?")});
    let reply = post_raw(
        &client(),
        &model_url(&sim, MODEL, "countTokens"),
        Some(KEY),
        wrapped.to_string(),
    )
    .await;
    assert_eq!(
        reply.json()["totalTokens"],
        count_tokens("You are a patient maths tutor.Hi?")
    );
}

#[tokio::test]
async fn blocked_prompt_has_feedback_and_no_candidates() {
    let sim = start(SimConfig::default()).await;
    let reply = generate(&sim, &request("Tell me something [[block]] please")).await;
    assert_eq!(reply.status, 200);
    let raw = reply.json();
    assert_eq!(
        key_paths(&raw),
        key_paths(&fixture_json("blocked_prompt.json"))
    );
    assert_eq!(raw["promptFeedback"]["blockReason"], "PROHIBITED_CONTENT");
    let parsed: GenerateContentResponse = serde_json::from_str(&reply.text).unwrap();
    assert!(parsed.candidates.is_empty());
    assert_eq!(parsed.block_reason(), Some("PROHIBITED_CONTENT"));
    let usage = parsed.usage_metadata.unwrap();
    assert_eq!(usage.candidates_token_count, None);
    assert_eq!(usage.total_token_count, usage.prompt_token_count);
    // The reason is configurable.
    sim.update_config(|c| c.block_reason = "SAFETY".into());
    let reply = generate(&sim, &request("[[block]]")).await;
    assert_eq!(reply.json()["promptFeedback"]["blockReason"], "SAFETY");
    assert_eq!(sim.stats().blocked, 2);
}

#[tokio::test]
async fn a_filtered_answer_finishes_with_safety_like_the_recording() {
    // That recording's model reports no `serviceTier`.
    let sim = start(SimConfig {
        service_tier: None,
        ..SimConfig::default()
    })
    .await;
    let reply = generate(&sim, &request("Say something [[unsafe]] please")).await;
    assert_eq!(reply.status, 200);
    let raw = reply.json();
    assert_eq!(
        key_paths(&raw),
        key_paths(&fixture_json("finish_safety.json"))
    );
    assert_eq!(raw["candidates"][0]["content"], json!({}));
    let parsed: GenerateContentResponse = serde_json::from_str(&reply.text).unwrap();
    assert_eq!(parsed.finish_reason(), Some(&FinishReason::Safety));
    assert_eq!(parsed.text(), "");
    let ratings = parsed.candidates[0].safety_ratings.clone().unwrap();
    assert_eq!(
        ratings.iter().filter(|r| r.blocked == Some(true)).count(),
        1
    );
    let usage = parsed.usage_metadata.unwrap();
    assert_eq!(usage.candidates_token_count, None);
    assert_eq!(usage.total_token_count, usage.prompt_token_count);

    // Streamed, it is one event of the same shape.
    let url = format!(
        "{}?alt=sse",
        model_url(&sim, MODEL, "streamGenerateContent")
    );
    let body = request("[[unsafe]]").to_string();
    let streamed = post_raw(&client(), &url, Some(KEY), body).await;
    let events = event_data(&streamed.text);
    assert_eq!(events.len(), 1, "{}", streamed.text);
    let event: GenerateContentResponse = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(event.finish_reason(), Some(&FinishReason::Safety));

    // Counted apart from complete answers; the trigger is configurable.
    let stats = sim.stats();
    assert_eq!((stats.blocked, stats.ok), (2, 0));
    sim.update_config(|c| c.safety_trigger = String::new());
    let reply = generate(&sim, &request("[[unsafe]]")).await;
    assert_eq!(reply.json()["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn max_output_tokens_truncates_with_max_tokens() {
    let sim = start(SimConfig::default()).await;
    let mut body = request("Explain photosynthesis.");
    body["generationConfig"] = json!({"maxOutputTokens": 10, "temperature": 0.2});
    let reply = generate(&sim, &body).await;
    let parsed: GenerateContentResponse = serde_json::from_str(&reply.text).unwrap();
    assert_eq!(parsed.finish_reason(), Some(&FinishReason::MaxTokens));
    assert_eq!(reply.json()["candidates"][0]["finishReason"], "MAX_TOKENS");
    let text = parsed.text();
    assert_eq!(text.chars().count(), 40);
    let usage = parsed.usage_metadata.unwrap();
    assert_eq!(usage.candidates_token_count, Some(10));
    // A limit above the answer changes nothing.
    body["generationConfig"]["maxOutputTokens"] = json!(1000);
    let reply: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &body).await.text).unwrap();
    assert_eq!(reply.finish_reason(), Some(&FinishReason::Stop));
    assert!(reply.text().starts_with(&text));
}

#[tokio::test]
async fn stop_sequences_cut_before_the_sequence() {
    let sim = start(SimConfig::default()).await;
    let full: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("What is an integer?")).await.text).unwrap();
    let full = full.text();
    let stop = "Example:";
    let at = full.find(stop).expect("answers carry an example");
    let mut body = request("What is an integer?");
    body["generationConfig"] = json!({"stopSequences": ["zzz-not-there", stop]});
    let cut: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &body).await.text).unwrap();
    assert_eq!(cut.text(), &full[..at]);
    assert_eq!(cut.finish_reason(), Some(&FinishReason::Stop));
}

#[tokio::test]
async fn answers_are_deterministic() {
    let sim = start(SimConfig::default()).await;
    let a: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("Why is the sky blue?")).await.text).unwrap();
    let b: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("Why is the sky blue?")).await.text).unwrap();
    assert_eq!(a.text(), b.text());
    assert_ne!(a.response_id, b.response_id);
    let other: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("What is a verb?")).await.text).unwrap();
    assert_ne!(a.text(), other.text());
    // The pure builder gives the served answer.
    let typed: GenerateContentRequest =
        serde_json::from_value(request("Why is the sky blue?")).unwrap();
    let pure = gemini_sim::simulate_response(&typed, MODEL, &SimConfig::default());
    assert_eq!(pure.text(), a.text());
    assert_eq!(pure.usage_metadata, a.usage_metadata);
    // Answer length follows the config.
    sim.update_config(|c| c.answer_tokens = 400);
    let long: GenerateContentResponse =
        serde_json::from_str(&generate(&sim, &request("Why is the sky blue?")).await.text).unwrap();
    assert!(count_tokens(&long.text()) > 300);
}

#[tokio::test]
async fn unknown_model_is_404() {
    let sim = start(SimConfig::default()).await;
    let reply = post_raw(
        &client(),
        &model_url(&sim, "gemini-1.0-nope", "generateContent"),
        Some(KEY),
        request("hi").to_string(),
    )
    .await;
    assert_eq!(reply.status, 404);
    let error = reply.error();
    assert_eq!(error.status, "NOT_FOUND");
    assert_eq!(error.code, 404);
    assert_eq!(
        error.message,
        "models/gemini-1.0-nope is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
    );
    // Models are configurable.
    sim.update_config(|c| c.models.push("gemini-1.0-nope".into()));
    let reply = post_raw(
        &client(),
        &model_url(&sim, "gemini-1.0-nope", "generateContent"),
        Some(KEY),
        request("hi").to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    // The listing shows them.
    let list: Value = client()
        .get(format!("{}/v1beta/models?key={KEY}", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "models/gemini-1.0-nope"));
}

#[tokio::test]
async fn malformed_bodies_are_400_invalid_argument() {
    let sim = start(SimConfig::default()).await;
    let url = model_url(&sim, MODEL, "generateContent");
    let reply = post_raw(&client(), &url, Some(KEY), "{\"contents\": [".into()).await;
    assert_eq!(reply.status, 400);
    let error = reply.error();
    assert_eq!(error.status, "INVALID_ARGUMENT");
    assert!(
        error.message.starts_with("Invalid JSON payload received."),
        "{}",
        error.message
    );
    let reply = post_raw(
        &client(),
        &url,
        Some(KEY),
        json!({"contents": "hello"}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().message.contains("invalid type"),
        "{}",
        reply.text
    );
    let reply = post_raw(
        &client(),
        &url,
        Some(KEY),
        json!({"contents": []}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.error().message.trim_end(),
        "* GenerateContentRequest.contents: contents is not specified"
    );
    assert_eq!(sim.stats().errors, 3);
}

#[tokio::test]
async fn thinking_tokens_are_reported_by_thinking_models() {
    let sim = start(SimConfig {
        thinking_tokens: 50,
        ..SimConfig::default()
    })
    .await;
    let reply = generate(&sim, &request("What is a ratio?")).await;
    let usage = &reply.json()["usageMetadata"];
    assert_eq!(usage["thoughtsTokenCount"], 50);
    let total = usage["promptTokenCount"].as_u64().unwrap()
        + usage["candidatesTokenCount"].as_u64().unwrap()
        + 50;
    assert_eq!(usage["totalTokenCount"], total);
    // A budget caps them; a budget of 0 turns thinking off.
    let mut body = request("What is a ratio?");
    body["generationConfig"] = json!({"thinkingConfig": {"thinkingBudget": 20}});
    assert_eq!(
        generate(&sim, &body).await.json()["usageMetadata"]["thoughtsTokenCount"],
        20
    );
    body["generationConfig"] = json!({"thinkingConfig": {"thinkingBudget": 0}});
    assert!(generate(&sim, &body).await.json()["usageMetadata"]
        .get("thoughtsTokenCount")
        .is_none());
    // 2.0 models do not think.
    let reply = post_raw(
        &client(),
        &model_url(&sim, "gemini-2.0-flash", "generateContent"),
        Some(KEY),
        request("What is a ratio?").to_string(),
    )
    .await;
    assert!(reply.json()["usageMetadata"]
        .get("thoughtsTokenCount")
        .is_none());
}
