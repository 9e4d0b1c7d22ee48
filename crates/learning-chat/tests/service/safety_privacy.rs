//! Personal data kept from the model (`privacy.redact`), and crisis answers for learners whose
//! message is rated dangerous content `HIGH`.

use crate::safety::{ask_as, get_as, harm_sim, HARMFUL};
use crate::support::{add_key, require_keys, settings_for, spawn_app};
use learning_chat::config::{CrisisMode, KeySafety};
use reqwest::StatusCode;

#[tokio::test]
async fn an_email_address_in_a_message_never_reaches_the_model_the_cache_key_or_the_store() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    settings.privacy.redact = vec!["email".into(), "phone".into(), "url".into()];
    let app = spawn_app(settings).await;
    let (status, first) = ask_as(&app, None, "I am ana@school.example.org, what is 2+2?").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // Another learner's address is the same question: one cached answer for both.
    let (status, second) = ask_as(&app, None, "I am bo@other.example.net, what is 2+2?").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["cached"], true, "{second}");
    let stats = sim.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.recent_prompts, ["I am [email], what is 2+2?"]);
    // A follow-up stores the conversation: redacted there too.
    let id = first["conversation_id"].as_str().unwrap();
    let follow_up = serde_json::json!({
        "message": "Call me on +44 20 7946 0958 or see https://ana.example.org/me",
        "conversation_id": id,
    });
    let response = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .json(&follow_up)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, conversation) = get_as(&app, None, &format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{conversation}");
    let questions: Vec<&str> = conversation["turns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "user")
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        questions,
        [
            "I am [email], what is 2+2?",
            "Call me on [phone] or see [url]"
        ]
    );
    let prompts = sim.stats().recent_prompts.join("\n");
    assert!(
        !prompts.contains('@') && !prompts.contains("7946"),
        "{prompts}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_dangerous_question_gets_the_keys_crisis_text_which_never_enters_the_cache() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    settings
        .safety
        .crisis_text
        .insert("en".into(), "You are not alone: call 116 123.".into());
    require_keys(&mut settings, "pepper");
    let mut german_id = String::new();
    let english = add_key(&settings, |_| {}).await;
    let german = add_key(&settings, |k| german_id = k.id.clone()).await;
    settings.safety.keys.insert(
        german_id.clone(),
        KeySafety {
            locale: Some("de".into()),
            crisis_text: [("de".into(), "Du bist nicht allein: 116 123.".into())].into(),
            ..KeySafety::default()
        },
    );
    settings.safety.crisis_mode = CrisisMode::Append;
    let app = spawn_app(settings).await;
    let question = format!("{HARMFUL}?");
    let (status, first) = ask_as(&app, Some(&english), &question).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let text = first["response"].as_str().unwrap();
    assert!(
        text.ends_with("\n\nYou are not alone: call 116 123."),
        "{text}"
    );
    assert_eq!(first["crisis"], true);
    let (status, again) = ask_as(&app, Some(&english), &question).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["cached"], true);
    assert_eq!(again["response"], first["response"]);
    // The cached entry is the model's answer alone.
    let key = app.state.chat.cache_key("math", &question).unwrap();
    let (cached, _) = app.state.chat.cache().get(&key).await.unwrap();
    assert!(!cached.text.contains("116 123"), "{}", cached.text);
    assert!(text.starts_with(cached.text.as_str()));
    // Another key, another locale: its own text on the same cached answer.
    let (status, german_answer) = ask_as(&app, Some(&german), &question).await;
    assert_eq!(status, StatusCode::OK, "{german_answer}");
    let text = german_answer["response"].as_str().unwrap();
    assert!(
        text.ends_with("\n\nDu bist nicht allein: 116 123."),
        "{text}"
    );
    assert!(!text.contains("call 116"), "{text}");
    // A harmless question gets no crisis text.
    let (_, calm) = ask_as(&app, Some(&english), "What is 2+2?").await;
    assert!(
        !calm["response"].as_str().unwrap().contains("116 123"),
        "{calm}"
    );
    assert!(calm.get("crisis").is_none(), "{calm}");
    assert_eq!(sim.stats().requests, 2, "the harmful answer was asked once");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn in_replace_mode_the_crisis_text_is_the_whole_answer() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    settings
        .safety
        .crisis_text
        .insert("en".into(), "Please talk to someone you trust.".into());
    settings.safety.crisis_mode = CrisisMode::Replace;
    let app = spawn_app(settings).await;
    let (status, body) = ask_as(&app, None, HARMFUL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"], "Please talk to someone you trust.");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_streamed_dangerous_answer_ends_with_the_crisis_text_as_its_last_piece() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    settings
        .safety
        .crisis_text
        .insert("en".into(), "You are not alone.".into());
    let app = spawn_app(settings).await;
    let mut reader = crate::support::sse::stream(&app, "math", &format!("{HARMFUL}?")).await;
    let (deltas, done) = reader.rest().await;
    assert_eq!(done.event, "done", "{done:?}");
    let done = done.json();
    assert_eq!(done["crisis"], true, "{done}");
    assert_eq!(deltas.last().unwrap(), "\n\nYou are not alone.");
    assert_eq!(deltas.concat(), done["response"].as_str().unwrap());
    app.stop().await.unwrap();
}
