//! Handler tests, in process (no sockets): every route, every bad input, the error shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use learning_chat::app::service;
use learning_chat::serve::AppService;
use learning_chat::Settings;
use serde_json::Value;
use std::num::NonZero;
use tower::ServiceExt;

/// What the server runs: the chat route's direct dispatch in front of the Router.
fn app_with(settings: Settings) -> impl AppService {
    service(learning_chat::app::state_from_settings(settings).unwrap())
}

fn app() -> impl AppService {
    app_with(crate::support::offline_settings())
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    bytes: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    /// Asserts the service's error shape and returns the error code.
    fn error_code(&self) -> String {
        let body = self.json();
        let error = body
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {body}"));
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        error["code"].as_str().unwrap().to_owned()
    }
}

async fn send(app: impl AppService, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        bytes,
    }
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn answers_a_question_from_the_offline_model() {
    let reply = send(
        app(),
        post_json("/api/v1/agents/math", r#"{"message":"What is 2+2?"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert!(body["response"].as_str().unwrap().len() > 20, "{body}");
    assert_eq!(body["agent_id"], "math");
    assert_eq!(body["cached"], false);
    assert!(
        body["model"]
            .as_str()
            .unwrap()
            .starts_with("offline-simulated/"),
        "{body}"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["finish_reason"], "STOP");
}

#[tokio::test]
async fn the_same_question_again_is_served_from_cache() {
    let app = app();
    let first = send(
        app.clone(),
        post_json(
            "/api/v1/agents/science",
            r#"{"message":"Why is the sky blue?"}"#,
        ),
    )
    .await;
    let second = send(
        app,
        post_json(
            "/api/v1/agents/science",
            // Blank edge lines and trailing spaces go; a first line's indentation would stay.
            r#"{"message":"\n \nWhy is the sky blue?  \n"}"#,
        ),
    )
    .await;
    assert_eq!(first.json()["cached"], false);
    assert_eq!(second.json()["cached"], true);
    assert_eq!(first.json()["response"], second.json()["response"]);
}

#[tokio::test]
async fn lists_agents_with_id_name_and_description() {
    let reply = send(
        app(),
        Request::get("/api/v1/agents").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let ids: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in ["history", "math", "programming", "science", "writing"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    assert!(body["agents"][0]["name"].is_string());
    assert!(body["agents"][0]["description"].is_string());
}

#[tokio::test]
async fn health_ready_and_openapi() {
    let health = send(app(), Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let ready = send(app(), Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["provider"], "offline-simulated");
    assert_eq!(ready.json()["redis"], "disabled");
    let spec = send(
        app(),
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(spec.status, StatusCode::OK);
    let spec = spec.json();
    assert!(
        spec["paths"]["/api/v1/agents/{agent_id}"]["post"].is_object(),
        "{spec}"
    );
    assert!(spec["components"]["schemas"]["ChatResponse"].is_object());
    // OpenAPI 3.1 requires a description on every response (utoipa 6 no longer adds an empty
    // one), so Swagger UI and validators accept the document.
    assert_eq!(spec["openapi"], "3.1.0");
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status}: no description"
                );
            }
        }
    }
}

#[tokio::test]
async fn unknown_agent_is_404_listing_the_agents() {
    let reply = send(
        app(),
        post_json("/api/v1/agents/astrology", r#"{"message":"hi"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "unknown_agent");
    let body = reply.json();
    assert!(body["error"]["message"].as_str().unwrap().contains("math"));
    assert!(
        body["error"]["details"]["available_agents"]
            .as_array()
            .unwrap()
            .len()
            >= 5
    );
}

#[tokio::test]
async fn missing_empty_or_blank_message_is_422() {
    for body in [
        r#"{}"#,
        r#"{"message":""}"#,
        r#"{"message":"   \n\t "}"#,
        r#"{"message":null}"#,
    ] {
        let reply = send(app(), post_json("/api/v1/agents/math", body)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let code = reply.error_code();
        assert!(
            code == "missing_message" || code == "empty_message",
            "{body}: {code}"
        );
    }
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422_naming_the_field() {
    let reply = send(
        app(),
        post_json("/api/v1/agents/math", r#"{"message": 42}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_code(), "invalid_body");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid type"));
    let reply = send(
        app(),
        post_json("/api/v1/agents/math", r#"{"mesage": "hi"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mesage"));
}

#[tokio::test]
async fn malformed_json_is_400_saying_where() {
    let reply = send(
        app(),
        post_json("/api/v1/agents/math", r#"{"message": "hi""#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "malformed_json");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{}",
        reply.json()
    );
}

#[tokio::test]
async fn body_without_json_content_type_is_415() {
    let request = Request::post("/api/v1/agents/math")
        .body(Body::from(r#"{"message":"hi"}"#))
        .unwrap();
    let reply = send(app(), request).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.error_code(), "unsupported_media_type");
}

#[tokio::test]
async fn too_long_message_and_too_large_body_are_413() {
    let mut settings = crate::support::offline_settings();
    settings.server.max_message_chars = NonZero::new(100).unwrap();
    settings.server.max_body_bytes = 1024;
    let long = serde_json::json!({ "message": "x".repeat(101) }).to_string();
    let reply = send(
        app_with(settings.clone()),
        post_json("/api/v1/agents/math", long),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "message_too_long");
    // 100 multi-byte characters are within the limit: it counts characters, not bytes.
    let accented = serde_json::json!({ "message": "é".repeat(100) }).to_string();
    let reply = send(
        app_with(settings.clone()),
        post_json("/api/v1/agents/math", accented),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let huge = serde_json::json!({ "message": "y".repeat(5000) }).to_string();
    let reply = send(app_with(settings), post_json("/api/v1/agents/math", huge)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "body_too_large");
}

#[tokio::test]
async fn wrong_method_is_405_and_unknown_path_is_404_in_json() {
    let reply = send(
        app(),
        Request::get("/api/v1/agents/math")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error_code(), "method_not_allowed");
    let reply = send(
        app(),
        Request::builder()
            .method(Method::DELETE)
            .uri("/api/v1/agents")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(app(), Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "not_found");
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let request = Request::get("/health")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let reply = send(app(), request).await;
    assert_eq!(reply.headers["x-request-id"], "abc-123");
    let reply = send(app(), Request::get("/health").body(Body::empty()).unwrap()).await;
    let generated = reply.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
}

#[tokio::test]
async fn large_responses_are_gzipped_small_ones_are_not() {
    let mut settings = crate::support::offline_settings();
    settings.offline.answer_tokens = 600;
    let request = Request::post("/api/v1/agents/math")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::from(r#"{"message":"Explain fractions"}"#))
        .unwrap();
    let reply = send(app_with(settings), request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_ENCODING], "gzip");
    let mut decoded = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&reply.bytes[..]),
        &mut decoded,
    )
    .unwrap();
    let body: Value = serde_json::from_str(&decoded).unwrap();
    assert!(body["response"].as_str().unwrap().len() >= 1000);

    let request = Request::get("/health")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    let reply = send(app(), request).await;
    assert!(reply.headers.get(header::CONTENT_ENCODING).is_none());

    // Only codings the service lacks: the plain body. Identity refused as well: 406 (RFC 9110
    // section 12.5.3) with the error body, not the document.
    for (accept, status, coding) in [
        ("br", StatusCode::OK, None),
        ("gzip, identity;q=0", StatusCode::OK, Some("gzip")),
        ("identity;q=0", StatusCode::NOT_ACCEPTABLE, None),
        ("br, *;q=0", StatusCode::NOT_ACCEPTABLE, None),
    ] {
        let request = Request::get("/openapi.json")
            .header(header::ACCEPT_ENCODING, accept)
            .body(Body::empty())
            .unwrap();
        let reply = send(app(), request).await;
        assert_eq!(reply.status, status, "{accept}");
        assert_eq!(
            reply
                .headers
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap()),
            coding,
            "{accept}"
        );
        if status == StatusCode::NOT_ACCEPTABLE {
            assert_eq!(reply.error_code(), "not_acceptable", "{accept}");
        } else if coding.is_none() {
            assert!(reply.json().get("openapi").is_some(), "{accept}");
        }
    }
}

/// The chat route is answered without the Router when its request is plain (`POST`, a plain
/// agent id, a JSON body) and by the Router otherwise. A percent-encoded agent id names the same
/// agent through the Router: every answer and error must be the same either way.
#[tokio::test]
async fn the_chat_routes_direct_dispatch_answers_exactly_as_the_router() {
    let mut settings = crate::support::offline_settings();
    settings.server.max_body_bytes = 256;
    let app = app_with(settings);
    let too_large = format!(r#"{{"message":"{}"}}"#, "x".repeat(300));
    let cases: Vec<(&str, String)> = vec![
        ("a question", r#"{"message":"What is 2+2?"}"#.to_owned()),
        ("malformed JSON", r#"{"message":"#.to_owned()),
        ("off the schema", r#"{"message":7}"#.to_owned()),
        (
            "an unknown field",
            r#"{"message":"hi","colour":"red"}"#.to_owned(),
        ),
        ("no message", r#"{}"#.to_owned()),
        ("an empty message", r#"{"message":"   "}"#.to_owned()),
        ("a body over the limit", too_large),
        ("an empty body", String::new()),
    ];
    for (case, body) in cases {
        // The Router's path first, so both ask a question already cached (or both fail).
        let routed = send(
            app.clone(),
            post_json("/api/v1/agents/ma%74h", body.clone()),
        )
        .await;
        let direct = send(app.clone(), post_json("/api/v1/agents/math", body)).await;
        assert_eq!(direct.status, routed.status, "{case}");
        assert_eq!(
            direct.headers.get(header::CONTENT_TYPE),
            routed.headers.get(header::CONTENT_TYPE),
            "{case}"
        );
        assert!(direct.headers.contains_key("x-request-id"), "{case}");
        let (mut direct, mut routed) = (direct.json(), routed.json());
        if direct.get("error").is_some() {
            assert_eq!(direct["error"], routed["error"], "{case}");
        } else {
            assert_eq!(direct["cached"], true, "{case}: {direct}");
            for answer in [&mut direct, &mut routed] {
                let answer = answer.as_object_mut().unwrap();
                for varies in ["latency_ms", "conversation_id", "cached"] {
                    answer.remove(varies);
                }
            }
            assert_eq!(direct, routed, "{case}");
        }
    }
    // An unknown agent is reported before the body, on both paths.
    let direct = send(app.clone(), post_json("/api/v1/agents/nope", "{")).await;
    let routed = send(app.clone(), post_json("/api/v1/agents/n%6Fpe", "{")).await;
    assert_eq!(direct.status, StatusCode::NOT_FOUND);
    assert_eq!(direct.error_code(), routed.error_code());
    // What the direct path does not take goes to the Router: a body not sent as JSON (415),
    // another method (405).
    let text = Request::post("/api/v1/agents/math")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"message":"What is 2+2?"}"#))
        .unwrap();
    let reply = send(app.clone(), text).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.error_code(), "unsupported_media_type");
    let get = Request::get("/api/v1/agents/math")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app, get).await.status, StatusCode::METHOD_NOT_ALLOWED);
}
