//! The model clients never follow a redirect. Gemini's and OpenAI's APIs do not send one, and
//! reqwest's default policy would carry Gemini's `x-goog-api-key` header to whatever host the
//! `Location` names (it strips only `Authorization`-like headers across hosts). A 3xx is an
//! error the caller sees; the other host gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::model_clients::{gemini, openai, serve};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use learning_chat::providers::{ModelRequest, ProviderError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Another host, answering anything with a valid answer of either API and noting the key
/// headers it was sent.
async fn elsewhere(seen: Arc<Mutex<Vec<String>>>) -> String {
    let answer = move |headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            for name in ["x-goog-api-key", "authorization"] {
                if let Some(value) = headers.get(name) {
                    seen.lock()
                        .unwrap()
                        .push(format!("{name}: {}", value.to_str().unwrap_or("?")));
                }
            }
            seen.lock().unwrap().push("request".to_owned());
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi."}],"role":"model"},"finishReason":"STOP"}],
                   "choices":[{"index":0,"message":{"role":"assistant","content":"Hi."},"finish_reason":"stop"}]}"#,
            )
        }
    };
    serve(
        Router::new()
            .route("/v1beta/models/{target}", post(answer.clone()))
            .route("/v1/chat/completions", post(answer)),
    )
    .await
}

/// The model API, sending every call on to the same path at `target` with a 307 (which keeps
/// the method, the body and, followed, the headers).
async fn redirecting(target: String) -> String {
    let redirect = move |uri: Uri| {
        let location = format!("{target}{uri}");
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
    };
    serve(
        Router::new()
            .route("/v1beta/models/{target}", post(redirect.clone()))
            .route("/v1/chat/completions", post(redirect)),
    )
    .await
}

fn request() -> ModelRequest {
    crate::model_clients::request("gemini-2.5-flash", "Hello?")
}

#[tokio::test]
async fn model_clients_do_not_follow_a_redirect_so_their_keys_stay_with_the_api() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = redirecting(elsewhere(seen.clone()).await).await;
    let deadline = Instant::now() + Duration::from_secs(20);

    let gemini = gemini(&base, "gemini-secret");
    let answer = gemini.generate(&request(), deadline).await;
    assert!(
        matches!(answer, Err(ProviderError::Rejected { status: 307, .. })),
        "{answer:?}"
    );
    let streamed = gemini.generate_stream(&request(), deadline).await;
    assert!(
        matches!(streamed, Err(ProviderError::Rejected { status: 307, .. })),
        "{:?}",
        streamed.err()
    );

    let openai = openai(&base, "sk-secret");
    let answer = openai.generate(&request(), deadline).await;
    assert!(answer.is_err(), "{answer:?}");

    assert_eq!(
        *seen.lock().unwrap(),
        Vec::<String>::new(),
        "the other host was called"
    );
}
