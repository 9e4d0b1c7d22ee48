//! Per-key quotas: 429 RESOURCE_EXHAUSTED bodies with QuotaFailure, Help and an exact RetryInfo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gemini_sim::answer::count_tokens;
use gemini_sim::{QuotaConfig, SimConfig};
use gemini_wire::{HELP_TYPE, QUOTA_FAILURE_TYPE, RETRY_INFO_TYPE};
use std::time::{Duration, Instant};

fn with_quota(quota: QuotaConfig) -> SimConfig {
    SimConfig {
        quota,
        ..SimConfig::default()
    }
}

fn assert_quota_body(reply: &Reply, quota_id: &str, limit: u64) {
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert!(
        reply.headers.get("retry-after").is_none(),
        "Gemini sends no Retry-After"
    );
    let raw = reply.json();
    // Same paths and detail order as the recorded 429.
    assert_eq!(
        key_paths(&raw),
        key_paths(&fixture_json("error_429_quota.json"))
    );
    let details = raw["error"]["details"].as_array().unwrap();
    let types: Vec<&str> = details
        .iter()
        .map(|d| d["@type"].as_str().unwrap())
        .collect();
    assert_eq!(types, [QUOTA_FAILURE_TYPE, HELP_TYPE, RETRY_INFO_TYPE]);
    let violation = &details[0]["violations"][0];
    assert_eq!(violation["quotaDimensions"]["model"], MODEL);
    assert_eq!(violation["quotaDimensions"]["location"], "global");
    assert_eq!(violation["quotaValue"], limit.to_string());
    assert_eq!(violation["quotaId"], quota_id);
    let error = reply.error();
    assert_eq!(error.status, "RESOURCE_EXHAUSTED");
    assert_eq!(
        error.message,
        fixture_json("error_429_quota.json")["error"]["message"]
    );
    assert_eq!(error.quota_ids(), vec![quota_id.to_owned()]);
}

#[tokio::test]
async fn rpm_limit_gives_429_with_time_until_a_slot_frees() {
    let sim = start(with_quota(QuotaConfig {
        rpm: 2,
        ..QuotaConfig::default()
    }))
    .await;
    let first = Instant::now();
    assert_eq!(generate(&sim, &request("a")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(generate(&sim, &request("b")).await.status, 200);
    let reply = generate(&sim, &request("c")).await;
    let elapsed = first.elapsed();
    assert_quota_body(&reply, "GenerateRequestsPerMinutePerProjectPerModel", 2);
    let error = reply.error();
    assert!(!error.is_daily_quota());
    // The first request's slot frees 60 s after it arrived.
    let delay = error.retry_delay().unwrap();
    // The sim saw less of the test's time pass than the test did, so the delay is at least
    // 60 s less what the test measured (rounding aside); how much less the sim saw depends on
    // scheduling, so the upper bound is what surely passed: the 300 ms sleep (below).
    let expected = Duration::from_secs(60) - elapsed;
    assert!(
        delay + Duration::from_millis(250) >= expected,
        "retryDelay {delay:?}, expected at least about {expected:?}"
    );
    assert!(
        delay < Duration::from_millis(59_800),
        "{delay:?} must count the 300 ms waited"
    );
    // Refused requests consume nothing: another key still has its full quota, and this key's
    // window still holds exactly 2 requests.
    let other = post_raw(
        &client(),
        &model_url(&sim, MODEL, "generateContent"),
        Some("other-key"),
        request("d").to_string(),
    )
    .await;
    assert_eq!(other.status, 200);
    let stats = sim.stats();
    assert_eq!((stats.ok, stats.rate_limited), (3, 1));
    assert_eq!(stats.per_key[KEY].rate_limited, 1);
    // Clearing the windows lets the key through again.
    let resp = client()
        .post(format!("{}/quota/reset", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(generate(&sim, &request("e")).await.status, 200);
}

#[tokio::test]
async fn tpm_limit_counts_input_tokens() {
    let question = "x".repeat(400); // plus the system instruction's 30 chars: 108 tokens
    let tokens = u64::from(count_tokens(&format!(
        "You are a patient maths tutor.{question}"
    )));
    let sim = start(with_quota(QuotaConfig {
        tpm: tokens * 2 + 10,
        free_tier: true,
        ..QuotaConfig::default()
    }))
    .await;
    let start = Instant::now();
    assert_eq!(generate(&sim, &request(&question)).await.status, 200);
    assert_eq!(generate(&sim, &request(&question)).await.status, 200);
    // A small request still fits in the 10 tokens left...
    assert_eq!(generate(&sim, &request("hi")).await.status, 200);
    // ...a large one does not.
    let reply = generate(&sim, &request(&question)).await;
    assert_quota_body(
        &reply,
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        tokens * 2 + 10,
    );
    assert_eq!(
        reply.json()["error"]["details"][0]["violations"][0]["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
    );
    let delay = reply.error().retry_delay().unwrap();
    // Between 60 s less the time the test saw pass (the sim saw less) and 60 s.
    let expected = Duration::from_secs(60) - start.elapsed();
    assert!(
        delay + Duration::from_millis(250) >= expected && delay <= Duration::from_secs(60),
        "{delay:?} vs {expected:?}"
    );
}

#[tokio::test]
async fn rpd_limit_is_a_daily_quota() {
    let sim = start(with_quota(QuotaConfig {
        rpd: 1,
        ..QuotaConfig::default()
    }))
    .await;
    let first = Instant::now();
    assert_eq!(generate(&sim, &request("a")).await.status, 200);
    let reply = generate(&sim, &request("b")).await;
    let elapsed = first.elapsed();
    assert_quota_body(&reply, "GenerateRequestsPerDayPerProjectPerModel", 1);
    let error = reply.error();
    assert!(error.is_daily_quota());
    let delay = error.retry_delay().unwrap();
    let day = Duration::from_secs(24 * 3600);
    // A day less what passed between the two requests: at least a day less what the test saw
    // pass (the sim saw less), however long a loaded machine took (rounding aside).
    assert!(
        delay <= day && delay + elapsed + Duration::from_millis(250) >= day,
        "{delay:?} after {elapsed:?}"
    );
}

#[tokio::test]
async fn streams_count_against_the_quota_too() {
    let sim = start(with_quota(QuotaConfig {
        rpm: 1,
        ..QuotaConfig::default()
    }))
    .await;
    let url = format!(
        "{}?alt=sse",
        model_url(&sim, MODEL, "streamGenerateContent")
    );
    let ok = post_raw(&client(), &url, Some(KEY), request("a").to_string()).await;
    assert_eq!(ok.status, 200);
    let limited = post_raw(&client(), &url, Some(KEY), request("a").to_string()).await;
    assert_eq!(limited.status, 429);
    assert!(limited.headers.get("retry-after").is_none());
    // countTokens has its own quota in Gemini and is not limited here.
    let count = post_raw(
        &client(),
        &model_url(&sim, MODEL, "countTokens"),
        Some(KEY),
        request("a").to_string(),
    )
    .await;
    assert_eq!(count.status, 200);
}
