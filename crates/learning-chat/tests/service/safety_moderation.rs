//! The moderation second opinion: self-harm flagged by an OpenAI-compatible `/v1/moderations`
//! (the simulator's), with the crisis text; a moderation endpoint that is down fails open
//! (counted) unless the key fails closed; the check's own quota.

use crate::safety::{ask_as, get_as};
use crate::support::processes::free_port;
use crate::support::{add_key, prom, require_keys, settings_for, spawn_app, start_sim};
use gemini_sim::SimConfig;
use learning_chat::config::{KeySafety, ModerationKind};
use reqwest::StatusCode;

const SELF_HARM: &str = "I want to hurt myself";

#[tokio::test]
async fn self_harm_flagged_by_moderation_gets_the_crisis_text_and_a_flag() {
    let sim = start_sim(SimConfig {
        self_harm_trigger: SELF_HARM.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.safety.moderation = ModerationKind::Openai;
    settings.safety.moderation_url = sim.base_url();
    settings
        .safety
        .crisis_text
        .insert("en".into(), "You matter. Call or text 988.".into());
    let app = spawn_app(settings).await;
    let (status, calm) = ask_as(&app, None, "What is a fraction?").await;
    assert_eq!(status, StatusCode::OK, "{calm}");
    assert!(calm.get("crisis").is_none(), "{calm}");
    let (status, body) = ask_as(&app, None, &format!("{SELF_HARM}, what is a fraction?")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["crisis"], true, "{body}");
    assert!(body["response"]
        .as_str()
        .unwrap()
        .ends_with("You matter. Call or text 988."));
    assert_eq!(
        sim.stats().moderations,
        2,
        "every learner message is checked"
    );
    let id = body["conversation_id"].as_str().unwrap();
    let (_, conversation) = get_as(&app, None, &format!("/api/v1/conversations/{id}")).await;
    let flags = conversation["flags"].as_array().unwrap();
    let categories: Vec<&str> = flags
        .iter()
        .map(|f| f["category"].as_str().unwrap())
        .collect();
    assert_eq!(
        categories,
        ["self-harm", "self-harm/intent"],
        "{conversation}"
    );
    assert!(flags
        .iter()
        .all(|f| f["source"] == "moderation" && f["score"] == "0.930"));
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    assert_eq!(
        scrape.value(
            "learning_chat_flags_total",
            &[("category", "self_harm"), ("source", "moderation")]
        ),
        2.0
    );
    assert_eq!(
        scrape.value(
            "learning_chat_moderation_checks_total",
            &[("outcome", "flagged")]
        ),
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn moderation_down_fails_open_and_counted_unless_the_key_fails_closed() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.safety.moderation = ModerationKind::Openai;
    // Nothing listens there.
    settings.safety.moderation_url = format!("http://127.0.0.1:{}", free_port());
    require_keys(&mut settings, "pepper");
    let mut strict_id = String::new();
    let open = add_key(&settings, |_| {}).await;
    let strict = add_key(&settings, |k| strict_id = k.id.clone()).await;
    settings.safety.keys.insert(
        strict_id,
        KeySafety {
            moderation_fail_closed: Some(true),
            ..KeySafety::default()
        },
    );
    let app = spawn_app(settings).await;
    let (status, body) = ask_as(&app, Some(&open), "What is a fraction?").await;
    assert_eq!(status, StatusCode::OK, "fails open: {body}");
    let (status, body) = ask_as(&app, Some(&strict), "What is a fraction?").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "moderation_unavailable");
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    assert_eq!(
        scrape.value(
            "learning_chat_moderation_checks_total",
            &[("outcome", "skipped")]
        ),
        2.0
    );
    assert_eq!(
        scrape.value(
            "learning_chat_moderation_checks_total",
            &[("outcome", "refused")]
        ),
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn past_its_quota_moderation_is_skipped_without_a_call() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    settings.safety.moderation = ModerationKind::Openai;
    settings.safety.moderation_url = sim.base_url();
    settings.safety.moderation_rpm = std::num::NonZeroU32::new(1).unwrap();
    let app = spawn_app(settings).await;
    for question in ["What is a fraction?", "What is a decimal?"] {
        let (status, body) = ask_as(&app, None, question).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sim.stats().moderations, 1);
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    assert_eq!(
        scrape.value(
            "learning_chat_moderation_checks_total",
            &[("outcome", "skipped")]
        ),
        1.0
    );
    app.stop().await.unwrap();
}
