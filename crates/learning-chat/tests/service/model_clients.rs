//! What the tests that drive the model clients directly share: an upstream of their own on a
//! free port, a plain question, and each client pointed at that upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use learning_chat::config::{GeminiSettings, Secret};
use learning_chat::providers::{GeminiClient, ModelRequest, OpenAiClient, SystemInstruction};
use std::time::Duration;

/// Serves `app` on a free port of 127.0.0.1; its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A single question `message` to `model`, with a one-line system prompt.
pub fn request(model: &str, message: &str) -> ModelRequest {
    ModelRequest {
        model: model.to_owned(),
        system: SystemInstruction::new("You are a tutor.".to_owned()),
        history: Vec::new().into(),
        message: message.to_owned(),
        generation: gemini_wire::GenerationConfig::default(),
        safety: Default::default(),
    }
}

/// A Gemini client with `api_key`, against `base`.
pub fn gemini(base: &str, api_key: &str) -> GeminiClient {
    GeminiClient::new(
        &GeminiSettings {
            api_key: Secret::new(api_key),
            base_url: base.to_owned(),
            ..GeminiSettings::default()
        },
        &learning_chat::client::make_transport(),
    )
    .unwrap()
}

/// An OpenAI-compatible client with `api_key`, against `base`.
pub fn openai(base: &str, api_key: &str) -> OpenAiClient {
    OpenAiClient::new(
        base,
        Secret::new(api_key),
        Duration::from_secs(5),
        &learning_chat::client::make_transport(),
    )
    .unwrap()
}
