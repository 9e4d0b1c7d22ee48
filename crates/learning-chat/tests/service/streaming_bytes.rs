//! Both model clients read their event streams with the one decoder (`gemini_wire::sse`), so
//! they treat the bytes alike: a character split across chunks arrives whole, and a byte that is
//! not UTF-8 ends the stream with `InvalidResponse`. A bare axum server plays the upstream, since
//! gemini-sim never sends broken bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use learning_chat::config::{GeminiSettings, Secret};
use learning_chat::providers::{
    CompletionStream, GeminiClient, ModelRequest, OpenAiClient, ProviderError, StreamPiece,
    SystemInstruction,
};
use std::time::Duration;
use tokio::time::Instant;

/// `café` with its `é` (C3 A9) cut between two chunks, then an event holding the byte FF.
const GEMINI: [&[u8]; 3] = [
    b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"caf\xc3",
    b"\xa9\"}],\"role\": \"model\"}}]}\r\n\r\n",
    b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\xff\"}],\"role\": \"model\"}}]}\r\n\r\n",
];
const OPENAI: [&[u8]; 3] = [
    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3",
    b"\xa9\"},\"finish_reason\":null}]}\n\n",
    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\"},\"finish_reason\":null}]}\n\n",
];

fn chunked(chunks: [&'static [u8]; 3]) -> Body {
    // Apart in time, so they most likely arrive as separate reads (nothing relies on it).
    Body::from_stream(futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::convert::Infallible>(Bytes::from_static(chunk))
    }))
}

/// An upstream answering both APIs' stream calls with the bytes above; its base URL.
async fn upstream() -> String {
    let app = Router::new()
        .route(
            "/v1beta/models/{target}",
            post(|| async { chunked(GEMINI) }),
        )
        .route("/v1/chat/completions", post(|| async { chunked(OPENAI) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn request(model: &str) -> ModelRequest {
    ModelRequest {
        model: model.to_owned(),
        system: SystemInstruction::new("You are a tutor.".to_owned()),
        history: Vec::new().into(),
        message: "Say café.".to_owned(),
        generation: gemini_wire::GenerationConfig::default(),
        safety: Default::default(),
    }
}

async fn pieces(mut stream: CompletionStream) -> Vec<Result<StreamPiece, ProviderError>> {
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.push(piece);
    }
    out
}

fn assert_cafe_then_not_utf8(pieces: &[Result<StreamPiece, ProviderError>]) {
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert!(
        matches!(&pieces[0], Ok(StreamPiece::Text(text)) if text == "café"),
        "{pieces:?}"
    );
    assert!(
        matches!(&pieces[1], Err(ProviderError::InvalidResponse(m)) if m.contains("not UTF-8")),
        "{pieces:?}"
    );
}

#[tokio::test]
async fn streaming_clients_carry_split_characters_and_reject_bytes_that_are_not_utf8() {
    let base = upstream().await;
    let deadline = Instant::now() + Duration::from_secs(20);

    let transport = learning_chat::client::make_transport();
    let gemini = GeminiClient::new(
        &GeminiSettings {
            api_key: Secret::new("key"),
            base_url: base.clone(),
            ..GeminiSettings::default()
        },
        &transport,
    )
    .unwrap();
    let stream = gemini
        .generate_stream(&request("gemini-2.5-flash"), deadline)
        .await
        .unwrap();
    assert_cafe_then_not_utf8(&pieces(stream).await);

    let openai = OpenAiClient::new(
        &base,
        Secret::new("sk-test"),
        Duration::from_secs(5),
        &transport,
    )
    .unwrap();
    let stream = openai
        .generate_stream(&request("llama3"), deadline)
        .await
        .unwrap();
    assert_cafe_then_not_utf8(&pieces(stream).await);
}
