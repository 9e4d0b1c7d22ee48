//! Every body recorded from the real Gemini API (see fixtures/SOURCES.md) parses into the wire types
//! and yields what a client needs from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use gemini_wire::{sse, CountTokensResponse, ErrorBody, FinishReason, GenerateContentResponse};
use std::time::Duration;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn response(name: &str) -> GenerateContentResponse {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn generate_ok_gives_text_stop_and_usage() {
    let r = response("generate_ok.json");
    assert_eq!(r.finish_reason(), Some(&FinishReason::Stop));
    assert!(r.text().starts_with("There are **3** r's in strawberry."));
    let usage = r.usage_metadata.unwrap();
    assert_eq!(usage.prompt_token_count, 9);
    assert_eq!(usage.candidates_token_count, Some(28));
    assert_eq!(usage.thoughts_token_count, Some(244));
    assert_eq!(usage.total_token_count, 281);
    assert_eq!(r.model_version.as_deref(), Some("gemini-3-pro-preview"));
    assert_eq!(r.response_id.as_deref(), Some("Un6LacrVMcjUxs0PmJfWoQc"));
}

#[test]
fn stream_events_accumulate_to_the_full_answer() {
    let events = sse::parse_events(fixture("stream_ok.sse")).unwrap();
    assert_eq!(events.len(), 3);
    let chunks: Vec<GenerateContentResponse> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let text: String = chunks.iter().map(|c| c.text()).collect();
    let expected: Vec<String> = (1..=30).map(|n| n.to_string()).collect();
    assert_eq!(text, expected.join("\n"));
    assert!(chunks[..2].iter().all(|c| c.finish_reason().is_none()));
    assert_eq!(chunks[2].finish_reason(), Some(&FinishReason::Stop));
    let last_usage = chunks[2].usage_metadata.as_ref().unwrap();
    assert_eq!(last_usage.candidates_token_count, Some(80));
}

#[test]
fn blocked_prompt_has_reason_and_no_candidates() {
    let r = response("blocked_prompt.json");
    assert!(r.candidates.is_empty());
    assert_eq!(r.block_reason(), Some("PROHIBITED_CONTENT"));
    assert_eq!(r.usage_metadata.unwrap().prompt_token_count, 9);
}

#[test]
fn max_tokens_without_parts_parses_as_empty_text() {
    let r = response("max_tokens.json");
    assert_eq!(r.finish_reason(), Some(&FinishReason::MaxTokens));
    assert_eq!(r.text(), "");
    assert_eq!(r.usage_metadata.unwrap().candidates_token_count, None);
}

#[test]
fn safety_finish_has_blocked_rating() {
    let r = response("finish_safety.json");
    assert_eq!(r.finish_reason(), Some(&FinishReason::Safety));
    let ratings = r.candidates[0].safety_ratings.as_ref().unwrap();
    assert!(ratings.iter().any(|r| r.blocked == Some(true)));
}

#[test]
fn count_tokens_parses() {
    let r: CountTokensResponse = serde_json::from_str(&fixture("count_tokens.json")).unwrap();
    assert_eq!(r.total_tokens, 10);
}

#[test]
fn quota_429_carries_retry_delay_and_quota_id() {
    let e: ErrorBody = serde_json::from_str(&fixture("error_429_quota.json")).unwrap();
    assert_eq!(e.error.code, 429);
    assert_eq!(e.error.status, "RESOURCE_EXHAUSTED");
    assert_eq!(e.error.retry_delay(), Some(Duration::from_secs(26)));
    assert_eq!(
        e.error.quota_ids(),
        vec!["GenerateContentInputTokensPerModelPerMinute-FreeTier"]
    );
    assert!(!e.error.is_daily_quota());
}

#[test]
fn api_key_400_has_reason() {
    let e: ErrorBody = serde_json::from_str(&fixture("error_400_api_key.json")).unwrap();
    assert_eq!(e.error.code, 400);
    assert_eq!(e.error.status, "INVALID_ARGUMENT");
    assert_eq!(e.error.error_reason(), Some("API_KEY_INVALID"));
}

#[test]
fn overloaded_503_parses() {
    let e: ErrorBody = serde_json::from_str(&fixture("error_503_overloaded.json")).unwrap();
    assert_eq!(e.error.code, 503);
    assert_eq!(e.error.status, "UNAVAILABLE");
    assert_eq!(e.error.retry_delay(), None);
}
