//! Safety for young learners against the simulator: the safety settings sent with every call, a
//! harmful question's ratings kept with its cached answer, the flags they raise (in the records
//! database, on the conversation, in the metrics), and the admin listing of flags.

use crate::support::{add_key, prom, require_keys, settings_for, spawn_app, start_sim, TestApp};
use gemini_sim::SimConfig;
use learning_chat::config::DatabaseUrl;
use learning_chat_testkit::postgres::PostgresProcess;
use reqwest::StatusCode;
use serde_json::Value;

/// The simulator's harm trigger in these tests.
pub const HARMFUL: &str = "how to make a weapon";

/// A simulator that rates questions containing [`HARMFUL`] dangerous content `HIGH`.
pub async fn harm_sim() -> gemini_sim::SimServer {
    start_sim(SimConfig {
        harm_trigger: HARMFUL.to_owned(),
        ..SimConfig::default()
    })
    .await
}

/// Asks `message` with the API key `secret` (none: auth off); the status and body.
pub async fn ask_as(app: &TestApp, secret: Option<&str>, message: &str) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .json(&serde_json::json!({ "message": message }));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// GET `path` with the API key `secret` (none: auth off); the status and body.
pub async fn get_as(app: &TestApp, secret: Option<&str>, path: &str) -> (StatusCode, Value) {
    let mut request = app.client.get(app.url(path));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn flags_of(conversation: &Value) -> Vec<(String, String, String)> {
    conversation["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no flags array: {conversation}"))
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (text("category"), text("score"), text("source"))
        })
        .collect()
}

#[tokio::test]
async fn the_strict_safety_settings_go_with_every_call() {
    let sim = harm_sim().await;
    let app = spawn_app(settings_for(&sim)).await;
    let (status, body) = ask_as(&app, None, "What is 2+2?").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = sim.stats();
    assert_eq!(stats.with_safety_settings, 1);
    let sent = stats.last_safety_settings.expect("safetySettings recorded");
    let mut categories: Vec<&str> = sent
        .iter()
        .map(|s| s["category"].as_str().unwrap())
        .collect();
    categories.sort_unstable();
    assert_eq!(
        categories,
        [
            "HARM_CATEGORY_DANGEROUS_CONTENT",
            "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_HATE_SPEECH",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT"
        ]
    );
    assert!(
        sent.iter().all(|s| s["threshold"] == "BLOCK_LOW_AND_ABOVE"),
        "{sent:?}"
    );
    // An unflagged question raises nothing.
    let id = body["conversation_id"].as_str().unwrap();
    let (status, conversation) = get_as(&app, None, &format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{conversation}");
    assert_eq!(conversation["flags"], serde_json::json!([]));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn other_safety_settings_are_another_cache_entry() {
    let sim = harm_sim().await;
    let strict = spawn_app(settings_for(&sim)).await;
    let key = |app: &TestApp| app.state.chat.cache_key("math", "What is 2+2?").unwrap();
    let mut lax = settings_for(&sim);
    lax.safety
        .settings
        .insert("HARM_CATEGORY_HARASSMENT".into(), "BLOCK_ONLY_HIGH".into());
    let lax = spawn_app(lax).await;
    assert_ne!(key(&strict), key(&lax));
    strict.stop().await.unwrap();
    lax.stop().await.unwrap();
}

#[tokio::test]
async fn a_harmful_question_flags_its_conversation_also_when_served_from_the_cache() {
    let sim = harm_sim().await;
    let app = spawn_app(settings_for(&sim)).await;
    let question = format!("Tell me {HARMFUL} please");
    let (status, first) = ask_as(&app, None, &question).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["cached"], false);
    let (status, second) = ask_as(&app, None, &question).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["cached"], true,
        "the second asker gets the cached answer"
    );
    assert_eq!(sim.stats().requests, 1, "one model call for both");
    for answer in [&first, &second] {
        let id = answer["conversation_id"].as_str().unwrap();
        let (status, conversation) =
            get_as(&app, None, &format!("/api/v1/conversations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{conversation}");
        let flags = flags_of(&conversation);
        let dangerous = |source: &str| {
            (
                "HARM_CATEGORY_DANGEROUS_CONTENT".to_owned(),
                "HIGH".to_owned(),
                source.to_owned(),
            )
        };
        assert_eq!(
            flags,
            [dangerous("prompt"), dangerous("answer")],
            "{conversation}"
        );
        assert_eq!(conversation["flags"][0]["turn"], 1);
    }
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    let flags = |source| {
        scrape.value(
            "learning_chat_flags_total",
            &[("category", "dangerous_content"), ("source", source)],
        )
    };
    assert_eq!(flags("prompt"), 2.0);
    assert_eq!(flags("answer"), 2.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_keys_list_every_keys_flags_by_key_category_and_page_in_postgresql() {
    let postgres = PostgresProcess::start();
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    settings.database.url = DatabaseUrl::new(postgres.fresh_database());
    require_keys(&mut settings, "pepper");
    let mut learner_id = String::new();
    let learner = add_key(&settings, |k| learner_id = k.id.clone()).await;
    let other = add_key(&settings, |_| {}).await;
    let admin = add_key(&settings, |k| {
        k.role = learning_chat::records::keys::KeyRole::Admin;
    })
    .await;
    let app = spawn_app(settings).await;
    for secret in [&learner, &other] {
        let (status, body) = ask_as(&app, Some(secret), &format!("{HARMFUL}?")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A prompt the model blocks is flagged too.
    let (status, body) = ask_as(&app, Some(&learner), "[[block]] this").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = get_as(&app, Some(&learner), "/api/v1/admin/flags").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "admin_required");

    let (status, all) = get_as(&app, Some(&admin), "/api/v1/admin/flags").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["flags"].as_array().unwrap().len(), 5, "{all}");
    assert!(all.get("next_cursor").is_none(), "{all}");

    let path = format!("/api/v1/admin/flags?key={learner_id}");
    let (_, mine) = get_as(&app, Some(&admin), &path).await;
    let mine = mine["flags"].as_array().unwrap().clone();
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert!(mine.iter().all(|f| f["key_id"] == learner_id.as_str()));
    let blocked = mine.iter().find(|f| f["category"] == "blocked").unwrap();
    assert_eq!(blocked["source"], "model_block");
    assert_eq!(blocked["score"], "PROHIBITED_CONTENT");

    // Pages of two, by cursor, add up to the whole list in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path =
            "/api/v1/admin/flags?limit=2&category=HARM_CATEGORY_DANGEROUS_CONTENT".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = get_as(&app, Some(&admin), &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    let (status, body) = get_as(&app, Some(&admin), "/api/v1/admin/flags?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, later) = get_as(
        &app,
        Some(&admin),
        "/api/v1/admin/flags?since=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(later["flags"], serde_json::json!([]));
    app.stop().await.unwrap();
}
