//! API-key auth: missing or refused keys get Gemini's 400 API_KEY_INVALID body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gemini_sim::SimConfig;

#[tokio::test]
async fn missing_key_is_400_api_key_invalid_like_recorded() {
    let sim = start(SimConfig::default()).await;
    let url = model_url(&sim, MODEL, "generateContent");
    let reply = post_raw(&client(), &url, None, request("hi").to_string()).await;
    assert_eq!(reply.status, 400);
    // Exactly the recorded body.
    assert_eq!(reply.json(), fixture_json("error_400_api_key.json"));
    assert_eq!(reply.error().error_reason(), Some("API_KEY_INVALID"));
    // An empty key is a missing key.
    let reply = post_raw(&client(), &url, Some(""), request("hi").to_string()).await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn any_key_is_accepted_without_a_key_set() {
    let sim = start(SimConfig::default()).await;
    let url = model_url(&sim, MODEL, "generateContent");
    for key in ["a", "b"] {
        let reply = post_raw(&client(), &url, Some(key), request("hi").to_string()).await;
        assert_eq!(reply.status, 200);
    }
    let stats = sim.stats();
    assert_eq!(stats.per_key["a"].ok, 1);
    assert_eq!(stats.per_key["b"].ok, 1);
}

#[tokio::test]
async fn wrong_key_is_refused_when_keys_are_configured() {
    let sim = start(SimConfig {
        api_keys: vec!["good-1".into(), "good-2".into()],
        ..SimConfig::default()
    })
    .await;
    let url = model_url(&sim, MODEL, "generateContent");
    let reply = post_raw(&client(), &url, Some("bad"), request("hi").to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), fixture_json("error_400_api_key.json"));
    let reply = post_raw(&client(), &url, Some("good-2"), request("hi").to_string()).await;
    assert_eq!(reply.status, 200);
    // The refused key is not tracked.
    assert!(!sim.stats().per_key.contains_key("bad"));
}

#[tokio::test]
async fn key_query_parameter_works() {
    let sim = start(SimConfig {
        api_keys: vec!["good".into()],
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}?key=good", model_url(&sim, MODEL, "generateContent"));
    let reply = post_raw(&client(), &url, None, request("hi").to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let url = format!(
        "{}?alt=sse&key=bad",
        model_url(&sim, MODEL, "streamGenerateContent")
    );
    let reply = post_raw(&client(), &url, None, request("hi").to_string()).await;
    assert_eq!(reply.status, 400);
    // The query value is percent-decoded, as Google does.
    let url = format!(
        "{}?key=go%6Fd&alt=%73se",
        model_url(&sim, MODEL, "streamGenerateContent")
    );
    let reply = post_raw(&client(), &url, None, request("hi").to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.text.starts_with("data: "), "{}", reply.text);
}
