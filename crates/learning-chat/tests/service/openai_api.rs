//! The OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`): driven by the official
//! `openai` Python SDK and the `openai` npm package (installed by scripts/test.sh), and over
//! plain HTTP for what the SDKs hide: one model call shared with the native endpoint, the
//! error shape and headers, the OpenAPI document.

use crate::support::sse::{paced, SseReader};
use crate::support::{add_key, offline_settings, require_keys, settings_for, spawn_app, start_sim};
use crate::support::{start_sim_with_latency, TestApp};
use futures::future::join_all;
use learning_chat_testkit::clients::{openai_node_dir, openai_python};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PEPPER: &str = "openai-pepper-0123456789abcdef";

/// A server with keys required and the keys the client scripts use: one for every tutor, one
/// for math only, and two allowed one request a minute.
async fn app_with_keys() -> (TestApp, Vec<(&'static str, String)>) {
    let mut settings = offline_settings();
    require_keys(&mut settings, PEPPER);
    let key = add_key(&settings, |_| {}).await;
    let math = add_key(&settings, |k| k.agents = vec!["math".to_owned()]).await;
    let limited = add_key(&settings, |k| k.limits.rpm = 1).await;
    let app = spawn_app(settings).await;
    let env = vec![
        ("BASE_URL", app.url("/v1")),
        ("KEY", key),
        ("MATH_KEY", math),
        ("LIMITED_KEY", limited),
    ];
    (app, env)
}

/// Runs `program args` with `env`; its last stdout line, parsed, when it succeeds.
async fn run_client(program: &std::path::Path, args: &[String], env: &[(&str, String)]) -> Value {
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary line")
}

fn asset(name: &str) -> String {
    crate::support::repo_path(&format!("crates/learning-chat/tests/assets/openai/{name}"))
        .display()
        .to_string()
}

#[tokio::test]
async fn the_official_python_sdk_lists_asks_streams_follows_up_and_gets_its_error_classes() {
    let python = openai_python();
    let (app, env) = app_with_keys().await;
    let seen = run_client(&python, &[asset("python_sdk.py")], &env).await;
    assert_eq!(
        seen["models"],
        json!(["history", "math", "programming", "science", "writing"])
    );
    // The same follow-up through a stored conversation and through the history the client
    // held: the same turns, the same key, so the second was served from the cache.
    assert_eq!(seen["by_id_cached"], true, "{seen}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_openai_npm_package_lists_asks_streams_follows_up_and_gets_its_error_classes() {
    let dir = openai_node_dir();
    let (app, mut env) = app_with_keys().await;
    env.push(("OPENAI_NODE_DIR", dir.display().to_string()));
    let node = std::path::PathBuf::from("node");
    let seen = run_client(&node, &[asset("node_sdk.mjs")], &env).await;
    assert!(
        seen["models"].as_array().is_some_and(|m| m.len() == 5),
        "{seen}"
    );
    app.stop().await.unwrap();
}

async fn complete(app: &TestApp, body: Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Every `data:` chunk of an OpenAI stream up to `[DONE]` (which must end it).
async fn chunks(response: reqwest::Response) -> Vec<Value> {
    let mut reader = SseReader::new(response);
    let mut chunks = Vec::new();
    loop {
        let event = reader
            .next_event()
            .await
            .expect("data: [DONE] ends the stream");
        if event.data == "[DONE]" {
            assert!(reader.next_event().await.is_none(), "events after [DONE]");
            return chunks;
        }
        chunks.push(event.json());
    }
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn one_question_costs_one_model_call_through_either_api_whole_or_streamed() {
    let sim = start_sim_with_latency(50).await;
    let app = spawn_app(settings_for(&sim)).await;
    let question = "What is the Pythagorean theorem?";

    let (status, _, first) = complete(
        &app,
        json!({"model": "math", "messages": [{"role": "user", "content": question}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["cached"], false);
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();
    // The native endpoint, the native stream and an OpenAI stream: all from the cache.
    let native: Value = app.ask("math", question).await.json().await.unwrap();
    assert_eq!(
        (native["cached"].as_bool(), native["response"].as_str()),
        (Some(true), Some(text))
    );
    let streamed = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "math", "stream": true,
                      "messages": [{"role": "system", "content": "Answer in French."},
                                   {"role": "user", "content": question}]}))
        .send()
        .await
        .unwrap();
    let streamed = chunks(streamed).await;
    assert_eq!(
        content_of(&streamed),
        text,
        "a system message changes nothing"
    );
    let last = streamed.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["cached"], true);
    assert_eq!(sim.stats().requests, 1);

    // The other way round: asked natively first, then through the OpenAI API.
    let native: Value = app
        .ask("history", "Who built the pyramids?")
        .await
        .json()
        .await
        .unwrap();
    let (_, _, later) = complete(
        &app,
        json!({"model": "history", "messages": [{"role": "user", "content": "Who built the pyramids?"}]}),
    )
    .await;
    assert_eq!(later["cached"], true);
    assert_eq!(
        later["choices"][0]["message"]["content"],
        native["response"]
    );
    // A follow-up with the history held by the client, then the same follow-up through the
    // native conversation: the same turns are the same question, one call.
    let history = json!({"model": "history", "messages": [
        {"role": "user", "content": "Who built the pyramids?"},
        {"role": "assistant", "content": native["response"]},
        {"role": "user", "content": "How long did it take?"}]});
    let (_, _, held) = complete(&app, history).await;
    assert_eq!(
        (held["cached"].as_bool(), held["turn"].as_u64()),
        (Some(false), Some(2))
    );
    let follow_up: Value = app
        .client
        .post(app.url("/api/v1/agents/history"))
        .json(&json!({"message": "How long did it take?", "conversation_id": native["conversation_id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(follow_up["cached"], true, "{follow_up}");
    assert_eq!(sim.stats().requests, 3);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn identical_streamed_completions_on_one_server_share_one_model_call() {
    let sim = start_sim(paced(600, 30)).await;
    let app = spawn_app(settings_for(&sim)).await;
    let body = json!({"model": "science", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Why is the sky blue?"}]});
    let streams = (0..20).map(|_| {
        let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
        async move { chunks(request.send().await.unwrap()).await }
    });
    let results = join_all(streams).await;
    let texts: std::collections::BTreeSet<String> = results.iter().map(|c| content_of(c)).collect();
    assert_eq!(texts.len(), 1, "every stream got the same answer");
    for chunks in &results {
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]), "the usage chunk comes last");
        assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }
    assert_eq!(sim.stats().requests, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn errors_take_openai_shape_status_and_headers() {
    let mut settings = offline_settings();
    require_keys(&mut settings, PEPPER);
    let key = add_key(&settings, |k| k.limits.rpm = 2).await;
    let app = spawn_app(settings).await;
    let post = |body: Value, secret: Option<&str>| {
        let mut request = app.client.post(app.url("/v1/chat/completions")).json(&body);
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        async move {
            let response = request.send().await.unwrap();
            let (status, headers) = (response.status(), response.headers().clone());
            (status, headers, response.json::<Value>().await.unwrap())
        }
    };
    let ask = json!({"model": "math", "messages": [{"role": "user", "content": "What is 7 x 8?"}]});

    let (status, headers, body) = post(ask.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": {"message": body["error"]["message"], "type": "authentication_error",
                         "param": null, "code": "invalid_api_key"}})
    );
    assert!(headers.contains_key("www-authenticate"));

    let (status, _, body) = post(
        json!({"model": "astrology", "messages": ask["messages"]}),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["param"].as_str()
        ),
        (Some("model_not_found"), Some("model"))
    );

    for (body, param) in [
        (
            json!({"model": "math", "messages": ask["messages"], "tools": [{"type": "function"}]}),
            "tools",
        ),
        (
            json!({"model": "math", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages",
        ),
    ] {
        let (status, _, body) = post(body, Some(&key)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            (
                body["error"]["code"].as_str(),
                body["error"]["param"].as_str()
            ),
            (Some("unsupported"), Some(param))
        );
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let (status, _, body) = post(
        json!({"model": "math", "messages": "not a list"}),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // The key's minute: two answers with OpenAI's rate-limit headers, then 429.
    for remaining in ["1", "0"] {
        let (status, headers, body) = post(ask.clone(), Some(&key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(headers["x-ratelimit-remaining-requests"], remaining);
    }
    let (status, headers, body) = post(ask.clone(), Some(&key)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["type"].as_str()
        ),
        (Some("rate_limit_exceeded"), Some("requests"))
    );
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));

    let wrong_method = app
        .client
        .get(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let elsewhere = app
        .client
        .get(app.url("/v1/embeddings"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    let body: Value = elsewhere.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found_error");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_describes_the_openai_compatible_api() {
    let app = spawn_app(offline_settings()).await;
    let doc = app.get_json("/openapi.json").await;
    for path in ["/v1/models", "/v1/chat/completions"] {
        assert!(doc["paths"][path].is_object(), "{path} in /openapi.json");
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "ChatCompletionRequest",
        "ChatCompletion",
        "ChatCompletionChunk",
        "OpenAiErrorBody",
    ] {
        assert!(schemas[name].is_object(), "{name} in /openapi.json");
    }
    assert!(schemas["ChatCompletionRequest"]["properties"]["conversation_id"].is_object());
    assert!(schemas["ChatCompletion"]["properties"]["cached"].is_object());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_user_field_is_the_learner_for_per_learner_limits_unless_a_header_names_one() {
    let mut settings = offline_settings();
    require_keys(&mut settings, PEPPER);
    let key = add_key(&settings, |k| k.limits.learner_rpm = 1).await;
    let app = spawn_app(settings).await;
    let ask = |user: &str, header: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "math", "user": user,
                          "messages": [{"role": "user", "content": "What is 3 + 4?"}]}));
        if let Some(header) = header {
            request = request.header("x-learner-id", header);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(ask("ada", None).await, StatusCode::OK);
    assert_eq!(ask("ada", None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ask("grace", None).await, StatusCode::OK);
    // The header names the learner: `ada` in the body does not count against ada's minute.
    assert_eq!(ask("ada", Some("alan")).await, StatusCode::OK);
    assert_eq!(
        ask("grace", Some("alan")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_callers_own_temperature_is_answered_and_cached_apart_and_the_tutors_own_is_shared() {
    let sim = start_sim_with_latency(20).await;
    let app = spawn_app(settings_for(&sim)).await;
    let body = |temperature: Option<f64>| {
        let mut body = json!({"model": "math",
                              "messages": [{"role": "user", "content": "What is a prime?"}]});
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        body
    };
    let mut cached = Vec::new();
    // None, the math tutor's own 0.3, then 1.2 twice.
    for temperature in [None, Some(0.3), Some(1.2), Some(1.2)] {
        let (status, _, answer) = complete(&app, body(temperature)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        cached.push(answer["cached"].as_bool().unwrap());
    }
    assert_eq!(cached, [false, true, false, true]);
    assert_eq!(sim.stats().requests, 2, "one call per distinct sampling");
}
