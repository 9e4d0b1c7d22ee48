//! Multi-turn conversations, against gemini-sim over HTTP and real redis-server processes on free
//! ports: follow-ups are answered with their context, on any server; erasure is real; concurrent
//! messages never lose a turn; a dead Redis never answers a follow-up without its history; the
//! history is bounded and so are conversations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::processes::RedisProcess;
use crate::support::{offline_settings, settings_for, spawn_app, start_sim, TestApp};
use gemini_sim::{SimConfig, SimServer};
use learning_chat::chat::{Ask, Caller, ChatError};
use learning_chat::config::Secret;
use learning_chat::conversations::ConversationError;
use learning_chat::Settings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::num::NonZero;
use std::time::{Duration, Instant};

pub const FIRST: &str = "What is a derivative?";
pub const FOLLOW_UP: &str = "Can you show me an example?";

pub fn redis_settings(sim: &SimServer, redis: &RedisProcess) -> Settings {
    let mut settings = settings_for(sim);
    settings.redis.url = Secret::new(redis.url());
    // The Redis store (no records database); every server signs one-shot ids with one key.
    settings.database.url = learning_chat::config::DatabaseUrl::new("none");
    settings.conversation.token_secret = Secret::new("token-secret-of-these-tests");
    settings
}

/// Where a conversation whose id is a one-shot token is stored once continued.
pub fn stored_id(id: &str) -> String {
    learning_chat::conversations::token::stored_id_of(id).unwrap_or_else(|| id.to_owned())
}

pub async fn wait_redis(app: &TestApp, want: &str) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let body = app.get_json("/ready").await;
        if body["redis"] == want {
            return;
        }
        assert!(Instant::now() < until, "redis never became {want}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs a message, in `conversation` when given; returns the status and the JSON body.
pub async fn send(
    app: &TestApp,
    agent: &str,
    message: &str,
    conversation: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut body = json!({ "message": message });
    if let Some(id) = conversation {
        body["conversation_id"] = json!(id);
    }
    let response = app
        .client
        .post(app.url(&format!("/api/v1/agents/{agent}")))
        .json(&body)
        .send()
        .await
        .expect("request reaches the service");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (
        status,
        response.json().await.expect("a JSON body"),
        retry_after,
    )
}

/// Starts a conversation and returns its id.
pub async fn start(app: &TestApp, agent: &str, message: &str) -> String {
    let (status, body, _) = send(app, agent, message, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["turn"], 1, "{body}");
    assert_eq!(body["history_truncated"], false, "{body}");
    body["conversation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a conversation id: {body}"))
        .to_owned()
}

pub async fn get(app: &TestApp, id: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/conversations/{id}")))
        .send()
        .await
        .expect("request reaches the service");
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

pub async fn delete(app: &TestApp, id: &str) -> StatusCode {
    app.client
        .delete(app.url(&format!("/api/v1/conversations/{id}")))
        .send()
        .await
        .expect("request reaches the service")
        .status()
}

#[tokio::test]
async fn a_follow_up_is_answered_with_its_conversation() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    let id = start(&app, "math", FIRST).await;
    assert!(id.starts_with("t1"), "a signed one-shot token: {id}");

    let (status, follow_up, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{follow_up}");
    assert_eq!(follow_up["conversation_id"], id.as_str());
    assert_eq!(follow_up["turn"], 2);
    assert_eq!(follow_up["history_truncated"], false);
    let text = follow_up["response"].as_str().unwrap();
    // The simulator names the conversation's first topic only when it was sent the history.
    assert!(text.starts_with("Following on from derivative"), "{text}");
    let (_, alone, _) = send(&app, "math", FOLLOW_UP, None).await;
    assert_ne!(alone["response"], follow_up["response"]);
    assert_ne!(alone["conversation_id"], id.as_str());

    let (status, conversation) = get(&app, &id).await;
    assert_eq!(status, StatusCode::OK, "{conversation}");
    assert_eq!(conversation["id"], id.as_str());
    assert_eq!(conversation["agent_id"], "math");
    let turns = conversation["turns"].as_array().unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user", "model"]);
    assert_eq!(turns[0]["text"], FIRST);
    assert_eq!(turns[2]["text"], FOLLOW_UP);
    assert_eq!(turns[3]["text"], follow_up["response"]);
    assert!(
        turns[3]["model"].as_str().unwrap().starts_with("gemini"),
        "{conversation}"
    );
    assert!(conversation["updated_at"].as_str().unwrap().ends_with('Z'));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn first_turns_and_identical_follow_ups_share_the_cache() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    let (_, a, _) = send(&app, "math", "What is 2+2?", None).await;
    let (_, b, _) = send(&app, "math", "What is 2+2?", None).await;
    assert_eq!(a["cached"], false);
    assert_eq!(
        b["cached"], true,
        "a first turn is the single question: {b}"
    );
    assert_ne!(a["conversation_id"], b["conversation_id"]);
    let (_, a2, _) = send(&app, "math", "Why?", a["conversation_id"].as_str()).await;
    let (_, b2, _) = send(&app, "math", "Why?", b["conversation_id"].as_str()).await;
    assert_eq!(a2["cached"], false, "{a2}");
    assert_eq!(b2["cached"], true, "same history, same follow-up: {b2}");
    assert_eq!(a2["response"], b2["response"]);
    // Two calls for four answers: the cache key covers the history, never the ids.
    assert_eq!(sim.stats().requests, 2);
    app.stop().await.unwrap();
}
#[tokio::test(start_paused = true)]
async fn a_memory_conversation_expires_after_its_ttl_of_idleness() {
    let mut settings = offline_settings();
    settings.conversation.ttl = Duration::from_secs(600);
    // The memory store (no database, no Redis), and a first answer that is not cached, so the
    // conversation is stored from its first exchange (a cached one would get a token).
    settings.database.url = learning_chat::config::DatabaseUrl::new("none");
    settings.cache.enabled = false;
    let state = learning_chat::app::state_from_settings(settings).unwrap();
    let math = state.chat.agent("math").unwrap();
    let send = |message: &str, conversation: Option<&str>| {
        let ask = Ask {
            agent: math.clone(),
            message: message.to_owned(),
            attempt: None,
            conversation: conversation.map(str::to_owned).into(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(30),
            caller: Caller::anonymous(),
            wants_stream: false,
        };
        let chat = state.chat.clone();
        async move { chat.ask(ask).await?.finish().await }
    };
    let first = send(FIRST, None).await.unwrap();
    let id = first.conversation_id.unwrap();
    tokio::time::advance(Duration::from_secs(500)).await;
    let follow_up = send(FOLLOW_UP, Some(&id)).await.unwrap();
    assert_eq!(follow_up.turn, 2);
    tokio::time::advance(Duration::from_secs(500)).await;
    assert!(
        state.chat.conversation(&id, None).await.is_ok(),
        "used 500 s ago"
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    assert!(matches!(
        state.chat.conversation(&id, None).await,
        Err(ConversationError::NotFound)
    ));
    assert!(matches!(
        send(FOLLOW_UP, Some(&id)).await,
        Err(ChatError::Conversation(ConversationError::NotFound))
    ));
}

#[tokio::test]
async fn the_history_sent_is_bounded_and_the_answer_says_so() {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    // Below the system prompt alone: only the first exchange (always kept) goes with a message.
    settings.conversation.max_history_tokens = NonZero::new(1).unwrap();
    let app = spawn_app(settings).await;
    let id = start(&app, "math", FIRST).await;
    let (_, second, _) = send(&app, "math", "What about the chain rule?", Some(&id)).await;
    assert_eq!(
        second["history_truncated"], false,
        "nothing left out yet: {second}"
    );
    let (_, third, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(third["turn"], 3);
    assert_eq!(third["history_truncated"], true, "{third}");
    // What the model saw was exactly the first exchange and the message: a conversation that
    // really is just those gets the same answer, from the cache.
    let other = start(&app, "math", FIRST).await;
    let (_, same, _) = send(&app, "math", FOLLOW_UP, Some(&other)).await;
    assert_eq!(same["history_truncated"], false);
    assert_eq!(same["cached"], true, "{same}");
    assert_eq!(same["response"], third["response"]);
    // The stored conversation keeps every turn.
    let (_, conversation) = get(&app, &id).await;
    assert_eq!(conversation["turns"].as_array().unwrap().len(), 6);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_conversation_belongs_to_its_agent_and_unknown_ids_are_404() {
    let app = spawn_app(offline_settings()).await;
    let id = start(&app, "math", FIRST).await;
    let (status, body, _) = send(&app, "science", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conversation_agent_mismatch");
    assert!(body["error"]["message"].as_str().unwrap().contains("math"));
    for unknown in ["0123456789abcdef0123456789abcdef", "not-an-id"] {
        let (status, body, _) = send(&app, "math", FOLLOW_UP, Some(unknown)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "unknown_conversation");
        assert_eq!(get(&app, unknown).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(delete(&app, &id).await, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, &id).await.0, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn conversations_are_bounded_in_turns_and_stored_bytes() {
    let mut settings = offline_settings();
    settings.conversation.max_turns = 4;
    let app = spawn_app(settings).await;
    let id = start(&app, "math", FIRST).await;
    let (status, _, _) = send(&app, "math", FOLLOW_UP, Some(&id)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = send(&app, "math", "And another?", Some(&id)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "conversation_turn_limit");
    assert_eq!(get(&app, &id).await.1["turns"].as_array().unwrap().len(), 4);
    app.stop().await.unwrap();

    let mut settings = offline_settings();
    settings.conversation.max_stored_bytes = 2_000;
    settings.offline.answer_tokens = 100; // about 400 bytes an answer
    let app = spawn_app(settings).await;
    let (status, body, _) = send(&app, "math", &"x".repeat(2_001), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "conversation_too_large");
    let id = start(&app, "math", FIRST).await;
    let mut refused = None;
    for n in 0..10 {
        let (status, body, _) = send(&app, "math", &format!("Question {n}?"), Some(&id)).await;
        if status != StatusCode::OK {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("the byte bound is reached within 10 exchanges");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "conversation_too_large");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_describes_conversations() {
    let app = spawn_app(offline_settings()).await;
    let doc = app.get_json("/openapi.json").await;
    let paths = &doc["paths"];
    let conversation = &paths["/api/v1/conversations/{conversation_id}"];
    assert!(conversation["get"].is_object(), "{conversation}");
    assert!(
        conversation["delete"]["responses"]["204"].is_object(),
        "{conversation}"
    );
    let chat = &paths["/api/v1/agents/{agent_id}"]["post"]["responses"];
    assert!(chat["409"].is_object(), "{chat}");
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["ChatRequest"]["properties"]["conversation_id"].is_object());
    for field in ["conversation_id", "turn", "history_truncated"] {
        assert!(
            schemas["ChatResponse"]["properties"][field].is_object(),
            "ChatResponse.{field}"
        );
    }
    assert!(schemas["ConversationView"]["properties"]["turns"].is_object());
    app.stop().await.unwrap();
}
