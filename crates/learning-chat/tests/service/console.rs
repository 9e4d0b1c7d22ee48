//! The teacher/admin console's API against the real service: a teacher never sees another
//! class on any endpoint; keys made, changed and revoked through it; a learner's export holds
//! exactly their data and their erasure reaches both servers, Redis and the database; the
//! retention sweep with an injected clock; the audit log lists each action.

use super::conversations::FOLLOW_UP;
use super::safety::{harm_sim, HARMFUL};
use crate::support::processes::RedisProcess;
use crate::support::{add_key, require_keys, settings_for, spawn_app, TestApp};
use learning_chat::records::keys::KeyRole;
use learning_chat::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One request as `secret` (with `learner` as `X-Learner-Id`); the status and JSON body.
async fn call(
    app: &TestApp,
    method: Method,
    secret: &str,
    path: &str,
    body: Option<Value>,
    learner: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(secret);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(learner) = learner {
        request = request.header("x-learner-id", learner);
    }
    let response = request.send().await.expect("request reaches the service");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(app: &TestApp, secret: &str, path: &str) -> (StatusCode, Value) {
    call(app, Method::GET, secret, path, None, None).await
}

/// Asks `message` (following up `conversation`) as `learner` of the key `secret`.
async fn ask(
    app: &TestApp,
    secret: &str,
    learner: &str,
    message: &str,
    conversation: Option<&str>,
) -> Value {
    let mut body = json!({ "message": message });
    if let Some(id) = conversation {
        body["conversation_id"] = json!(id);
    }
    let (status, answer) = call(
        app,
        Method::POST,
        secret,
        "/api/v1/agents/math",
        Some(body),
        Some(learner),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// A stored conversation of `learner`: a first question and a follow-up (a one-shot question
/// stores nothing); its id as the learner knows it.
async fn conversation(app: &TestApp, secret: &str, learner: &str, first: &str) -> String {
    let answer = ask(app, secret, learner, first, None).await;
    let id = answer["conversation_id"].as_str().unwrap().to_owned();
    let again = ask(app, secret, learner, FOLLOW_UP, Some(&id)).await;
    assert_eq!(again["turn"], 2, "{again}");
    id
}

async fn flush_ledger(app: &TestApp) {
    app.state
        .auth
        .as_ref()
        .expect("auth on")
        .flush_ledger()
        .await
        .expect("ledger written");
}

struct Keys {
    class_a: String,
    class_a_id: String,
    class_b: String,
    class_b_id: String,
    teacher: String,
    admin: String,
    learner: String,
}

async fn keys(settings: &Settings) -> Keys {
    let mut class_a_id = String::new();
    let class_a = add_key(settings, |k| {
        k.name = "Class 7A".into();
        class_a_id = k.id.clone();
    })
    .await;
    let mut class_b_id = String::new();
    let class_b = add_key(settings, |k| {
        k.name = "Class 7B".into();
        class_b_id = k.id.clone();
    })
    .await;
    let classes = vec![class_a_id.clone()];
    let teacher = add_key(settings, |k| {
        k.name = "Ms Teacher".into();
        k.role = KeyRole::Teacher;
        k.classes = classes;
    })
    .await;
    let admin = add_key(settings, |k| {
        k.name = "Admin".into();
        k.role = KeyRole::Admin;
    })
    .await;
    let learner = class_a.clone();
    Keys {
        class_a,
        class_a_id,
        class_b,
        class_b_id,
        teacher,
        admin,
        learner,
    }
}

fn ids(list: &Value, field: &str, id: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field}: {list}"))
        .iter()
        .map(|c| c[id].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_teacher_sees_only_their_classes_on_every_endpoint() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    require_keys(&mut settings, "pepper-of-the-console-tests");
    let k = keys(&settings).await;
    let app = spawn_app(settings).await;
    let harmful = format!("{HARMFUL}?");
    conversation(&app, &k.class_a, "ann", &harmful).await;
    conversation(&app, &k.class_b, "bob", &harmful).await;
    flush_ledger(&app).await;

    // A learner key opens nothing of the console.
    let (status, body) = get(&app, &k.learner, "/api/v1/admin/classes").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "console_role_required");

    // Every console endpoint is described in the OpenAPI document, with the key schemes.
    let doc = app.get_json("/openapi.json").await;
    for (path, method) in [
        ("/api/v1/admin/me", "get"),
        ("/api/v1/admin/classes", "get"),
        ("/api/v1/admin/classes/{key_id}/usage", "get"),
        ("/api/v1/admin/conversations", "get"),
        ("/api/v1/admin/conversations/{conversation_id}", "get"),
        ("/api/v1/admin/flags/{flag_id}/review", "post"),
        (
            "/api/v1/admin/conversations/{conversation_id}/feedback",
            "post",
        ),
        ("/api/v1/admin/keys", "get"),
        ("/api/v1/admin/keys", "post"),
        ("/api/v1/admin/keys/{key_id}", "patch"),
        ("/api/v1/admin/keys/{key_id}", "delete"),
        ("/api/v1/admin/learners/{learner_id}/export", "get"),
        ("/api/v1/admin/learners/{learner_id}", "delete"),
        ("/api/v1/admin/audit", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} not in /openapi.json"
        );
        assert!(
            operation["security"].is_array(),
            "{method} {path} names no key scheme"
        );
    }

    let (status, me) = get(&app, &k.teacher, "/api/v1/admin/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["role"], "teacher");
    assert_eq!(me["classes"], json!([k.class_a_id]));

    // Classes: only their own, with today's figures.
    let (status, classes) = get(&app, &k.teacher, "/api/v1/admin/classes").await;
    assert_eq!(status, StatusCode::OK, "{classes}");
    assert_eq!(ids(&classes, "classes", "key_id"), [k.class_a_id.as_str()]);
    let today = &classes["classes"][0]["today"];
    assert_eq!(today["requests"], 2, "{classes}");
    assert_eq!(today["learners"], 1, "{classes}");
    let (status, usage) = get(
        &app,
        &k.teacher,
        &format!("/api/v1/admin/classes/{}/usage?days=30", k.class_a_id),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["requests"], 2, "today is last: {usage}");
    assert!(days[..29].iter().all(|d| d["requests"] == 0));
    let asked: Vec<&str> = usage["top_questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["text"].as_str().unwrap())
        .collect();
    assert_eq!(asked.len(), 2, "{usage}");
    let (status, body) = get(
        &app,
        &k.teacher,
        &format!("/api/v1/admin/classes/{}/usage", k.class_b_id),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "class_not_found");
    let (status, _) = get(&app, &k.teacher, "/api/v1/admin/classes/key_nope/usage").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Conversations: theirs only, another class's is 404 as a filter and as a transcript.
    let (status, list) = get(&app, &k.teacher, "/api/v1/admin/conversations").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = ids(&list, "conversations", "id");
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(list["conversations"][0]["class"], k.class_a_id.as_str());
    let raised = list["conversations"][0]["flags"].as_u64().unwrap();
    assert!(raised >= 2, "the harmful question and its answer: {list}");
    let (status, _) = get(
        &app,
        &k.teacher,
        &format!("/api/v1/admin/conversations?class={}", k.class_b_id),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, all) = get(&app, &k.admin, "/api/v1/admin/conversations").await;
    assert_eq!(ids(&all, "conversations", "id").len(), 2, "{all}");
    let b_stored = all["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == k.class_b_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = get(
        &app,
        &k.teacher,
        &format!("/api/v1/admin/conversations/{b_stored}"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, mine) = get(
        &app,
        &k.teacher,
        &format!("/api/v1/admin/conversations/{}", listed[0]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["transcript"].as_array().unwrap().len(), 4, "{mine}");
    let flags = mine["flag_list"].as_array().unwrap();
    assert_eq!(flags.len() as u64, raised, "{mine}");

    // Flags: theirs can be reviewed; another class's is 404.
    let (_, b_transcript) = get(
        &app,
        &k.admin,
        &format!("/api/v1/admin/conversations/{b_stored}"),
    )
    .await;
    let b_flag = b_transcript["flag_list"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &app,
        Method::POST,
        &k.teacher,
        &format!("/api/v1/admin/flags/{b_flag}/review"),
        Some(json!({ "note": "not mine" })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let a_flag = flags[0]["id"].as_str().unwrap();
    let (status, reviewed) = call(
        &app,
        Method::POST,
        &k.teacher,
        &format!("/api/v1/admin/flags/{a_flag}/review"),
        Some(json!({ "note": "talked with Ann" })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reviewed}");
    assert_eq!(reviewed["review"]["note"], "talked with Ann");
    let (status, body) = call(
        &app,
        Method::POST,
        &k.teacher,
        &format!("/api/v1/admin/flags/{a_flag}/review"),
        Some(json!({ "nope": 1 })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, flagged) = get(&app, &k.teacher, "/api/v1/admin/conversations?flagged=true").await;
    assert_eq!(
        flagged["conversations"][0]["unreviewed_flags"].as_u64(),
        Some(raised - 1),
        "{flagged}"
    );

    // Admin-only endpoints: 403 for a teacher.
    for path in [
        "/api/v1/admin/keys",
        "/api/v1/admin/audit",
        "/api/v1/admin/learners/ann/export",
    ] {
        let (status, body) = get(&app, &k.teacher, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "admin_required");
    }
    let (status, _) = call(
        &app,
        Method::DELETE,
        &k.teacher,
        "/api/v1/admin/learners/ann",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &app,
        Method::POST,
        &k.teacher,
        "/api/v1/admin/keys",
        Some(json!({ "name": "sneaky" })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The audit log: the transcript reads and the review, by the teacher.
    let (status, audit) = get(&app, &k.admin, "/api/v1/admin/audit").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let teacher = format!("teacher:{}", me["key_id"].as_str().unwrap());
    assert!(
        actions.contains(&("transcript.read".into(), teacher.clone())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("flag.reviewed".into(), teacher)),
        "{actions:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_admin_creates_edits_and_revokes_keys() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    require_keys(&mut settings, "pepper-of-the-console-tests");
    settings.database.key_refresh = Duration::from_millis(100);
    let k = keys(&settings).await;
    let app = spawn_app(settings).await;
    let (status, body) = call(
        &app,
        Method::POST,
        &k.admin,
        "/api/v1/admin/keys",
        Some(json!({ "name": "" })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, created) = call(
        &app,
        Method::POST,
        &k.admin,
        "/api/v1/admin/keys",
        Some(json!({ "name": "Class 8C", "limits": { "rpm": 100 }, "weight": 3 })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["key"]["weight"], 3);
    // Every server finds it within database.key_refresh_ms (a hang guard, not a timing bound).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(&app, &secret, "/api/v1/agents").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < until, "the new key never worked: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, edited) = call(
        &app,
        Method::PATCH,
        &k.admin,
        &format!("/api/v1/admin/keys/{id}"),
        Some(json!({ "weight": 5, "limits": { "rpm": 7 }, "retention_days": 30, "legal_hold": true })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["weight"], 5);
    assert_eq!(edited["limits"]["rpm"], 7);
    assert_eq!(edited["retention_days"], 30);
    assert_eq!(edited["legal_hold"], true);
    // Its last use reaches the list with the next key refresh.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = get(&app, &k.admin, "/api/v1/admin/keys").await;
        let listed = list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["id"] == id.as_str())
            .cloned()
            .unwrap();
        assert!(
            listed.get("secret").is_none() && listed.get("hash").is_none(),
            "{listed}"
        );
        if listed["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < until, "last use never shown: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, revoked) = call(
        &app,
        Method::DELETE,
        &k.admin,
        &format!("/api/v1/admin/keys/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&app, &secret, "/api/v1/agents").await;
        if status != StatusCode::OK {
            assert_eq!(body["error"]["code"], "api_key_revoked", "{body}");
            break;
        }
        assert!(Instant::now() < until, "the revoked key still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = call(
        &app,
        Method::DELETE,
        &k.admin,
        "/api/v1/admin/keys/key_nope",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = get(&app, &k.admin, "/api/v1/admin/audit").await;
    let admin_actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == id.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(admin_actions, ["key.revoked", "key.updated", "key.created"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_learners_export_is_exactly_theirs_and_erasure_reaches_both_servers_redis_and_the_database(
) {
    let redis = RedisProcess::start();
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    require_keys(&mut settings, "pepper-of-the-console-tests");
    settings.redis.url = learning_chat::config::Secret::new(redis.url());
    let k = keys(&settings).await;
    let a = spawn_app(settings.clone()).await;
    let b = spawn_app(settings).await;
    a.wait_for_redis().await;
    b.wait_for_redis().await;

    let ann_first = format!("Ann asks {HARMFUL}");
    let ann_id = conversation(&a, &k.class_a, "ann", &ann_first).await;
    let ann_b = conversation(&b, &k.class_b, "ann", "What is a prime number?").await;
    let bob_id = conversation(&a, &k.class_a, "bob", "What is a fraction?").await;
    flush_ledger(&a).await;
    flush_ledger(&b).await;

    let (status, export) = get(&a, &k.admin, "/api/v1/admin/learners/ann/export").await;
    assert_eq!(status, StatusCode::OK, "{export}");
    let conversations = export["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 2, "ann under both keys: {export}");
    let firsts: Vec<&str> = conversations
        .iter()
        .map(|c| c["turns"][0]["text"].as_str().unwrap())
        .collect();
    assert!(
        firsts.iter().any(|t| t.starts_with("Ann asks")),
        "{firsts:?}"
    );
    assert!(firsts.contains(&"What is a prime number?"), "{firsts:?}");
    assert!(
        !export.to_string().contains("fraction"),
        "nothing of Bob's: {export}"
    );
    let flags = export["flags"].as_array().unwrap();
    assert!(flags.len() >= 2, "{export}");
    assert!(
        flags.iter().all(|f| f["key_id"] == k.class_a_id.as_str()),
        "{export}"
    );
    let usage_requests: u64 = export["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(usage_requests, 4, "two questions under each key: {export}");

    // The answer the model made for Ann's follow-up is in Redis until she is erased.
    let follow_up_key = |stored: &Value| {
        let turns = stored["turns"].as_array().unwrap();
        let history: Vec<learning_chat::providers::ModelTurn> = turns[..2]
            .iter()
            .map(|t| learning_chat::providers::ModelTurn {
                role: if t["role"] == "user" {
                    learning_chat::providers::Role::User
                } else {
                    learning_chat::providers::Role::Model
                },
                text: t["text"].as_str().unwrap().to_owned(),
            })
            .collect();
        a.state
            .chat
            .cache_key_with_history("math", turns[2]["text"].as_str().unwrap(), &history)
            .unwrap()
    };
    let in_redis = |key: &learning_chat::cache::CacheKey| format!("learning-chat:answer:{{{key}}}");
    // Server a's own memory (the first tier), where it kept the answer it made.
    let in_memory_of_a = |key: learning_chat::cache::CacheKey| {
        let cache = a.state.chat.cache().clone();
        async move {
            match cache {
                learning_chat::cache::ResponseCache::Tiered { memory, .. } => {
                    memory.get(&key).await.is_some()
                }
                _ => panic!("a tiered cache with Redis"),
            }
        }
    };
    let (_, ann_a) = call(
        &a,
        Method::GET,
        &k.class_a,
        &format!("/api/v1/conversations/{ann_id}"),
        None,
        None,
    )
    .await;
    let (_, bob_a) = call(
        &a,
        Method::GET,
        &k.class_a,
        &format!("/api/v1/conversations/{bob_id}"),
        None,
        None,
    )
    .await;
    let (ann_key, bob_key) = (follow_up_key(&ann_a), follow_up_key(&bob_a));
    let (ann_answer, bob_answer) = (in_redis(&ann_key), in_redis(&bob_key));
    assert!(
        in_memory_of_a(ann_key).await,
        "server a keeps the answer it made"
    );
    let until = Instant::now() + Duration::from_secs(15);
    for answer in [&ann_answer, &bob_answer] {
        while redis.cli(&["EXISTS", answer]) != "1" {
            assert!(Instant::now() < until, "{answer} never cached");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (status, erased) = call(
        &b,
        Method::DELETE,
        &k.admin,
        "/api/v1/admin/learners/ann",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["conversations"], 2, "{erased}");
    assert_eq!(
        erased["flags"].as_u64(),
        Some(flags.len() as u64),
        "{erased}"
    );
    for app in [&a, &b] {
        for (secret, id) in [(&k.class_a, &ann_id), (&k.class_b, &ann_b)] {
            let (status, body) = call(
                app,
                Method::GET,
                secret,
                &format!("/api/v1/conversations/{id}"),
                None,
                None,
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        }
        let (status, _) = call(
            app,
            Method::GET,
            &k.class_a,
            &format!("/api/v1/conversations/{bob_id}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "Bob's stays");
    }
    assert_eq!(
        redis.cli(&["EXISTS", &ann_answer]),
        "0",
        "Ann's answer gone from Redis"
    );
    assert_eq!(redis.cli(&["EXISTS", &bob_answer]), "1", "Bob's stays");
    // Server a drops it from its own memory too, from the evictions b noted in Redis (read
    // every second: a hang guard, not a timing bound).
    let until = Instant::now() + Duration::from_secs(15);
    while in_memory_of_a(ann_key).await {
        assert!(
            Instant::now() < until,
            "server a still holds Ann's answer in memory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(in_memory_of_a(bob_key).await, "and keeps Bob's");
    let records = a.state.records.as_ref().unwrap();
    let hashes: Vec<String> = [&k.class_a_id, &k.class_b_id]
        .iter()
        .map(|key| a.state.auth.as_ref().unwrap().learner_hash(key, "ann"))
        .collect();
    let left = records.learner_data(&hashes).await.unwrap();
    assert!(
        left.conversations.is_empty() && left.flags.is_empty() && left.usage.is_empty(),
        "nothing of Ann in the database"
    );
    let (_, again) = get(&a, &k.admin, "/api/v1/admin/learners/ann/export").await;
    assert_eq!(again["conversations"], json!([]), "{again}");

    let (_, audit) = get(&a, &k.admin, "/api/v1/admin/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    let of = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(of("learner.exported"), 2, "{audit}");
    assert_eq!(of("learner.erased"), 1, "{audit}");
    assert!(
        !audit.to_string().contains("\"ann\""),
        "the raw learner id is never logged"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn the_retention_sweep_removes_idle_conversations_but_not_those_on_legal_hold() {
    let sim = harm_sim().await;
    let mut settings = settings_for(&sim);
    require_keys(&mut settings, "pepper-of-the-console-tests");
    let k = keys(&settings).await;
    let app = spawn_app(settings).await;
    conversation(&app, &k.class_a, "ann", "What is a prime number?").await;
    let held = conversation(&app, &k.class_b, "bob", "What is a fraction?").await;
    let (status, _) = call(
        &app,
        Method::PATCH,
        &k.admin,
        &format!("/api/v1/admin/keys/{}", k.class_b_id),
        Some(json!({ "legal_hold": true })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let records = app.state.records.as_ref().unwrap();
    let retention = learning_chat::records::console::Retention {
        days: app.state.settings.records.retention_days,
        usage_days: app.state.settings.records.usage_retention_days,
    };
    // Today: nothing is old enough.
    let now = learning_chat::records::now_ms();
    assert_eq!(
        records.sweep(retention, now).await.unwrap().conversations,
        0
    );
    // A year and a day later (the injected clock).
    let later = now + 366 * 86_400_000;
    let removed = records.sweep(retention, later).await.unwrap();
    assert_eq!(removed.conversations, 1, "{removed:?}");
    // Read as the console reads them (the learner's one-shot token would still show its first
    // answer from the cache, which outlives the sweep only because the clock here is injected).
    let (_, list) = get(&app, &k.admin, "/api/v1/admin/conversations").await;
    let classes: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [k.class_b_id.as_str()],
        "legal hold keeps it: {list}"
    );
    let (status, _) = call(
        &app,
        Method::GET,
        &k.class_b,
        &format!("/api/v1/conversations/{held}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, audit) = get(&app, &k.admin, "/api/v1/admin/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "retention.swept"),
        "{audit}"
    );
    app.stop().await.unwrap();
}
