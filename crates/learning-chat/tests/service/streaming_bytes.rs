//! Both model clients read their event streams with the one decoder (`gemini_wire::sse`), so
//! they treat the bytes alike: a character split across chunks arrives whole, and a byte that is
//! not UTF-8 ends the stream with `InvalidResponse`. A bare axum server plays the upstream, since
//! gemini-sim never sends broken bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::model_clients::{gemini, openai, request, serve};
use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use learning_chat::providers::{CompletionStream, ProviderError, StreamPiece};
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
    serve(app).await
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

    let stream = gemini(&base, "key")
        .generate_stream(&request("gemini-2.5-flash", "Say café."), deadline)
        .await
        .unwrap();
    assert_cafe_then_not_utf8(&pieces(stream).await);

    let stream = openai(&base, "sk-test")
        .generate_stream(&request("llama3", "Say café."), deadline)
        .await
        .unwrap();
    assert_cafe_then_not_utf8(&pieces(stream).await);
}
