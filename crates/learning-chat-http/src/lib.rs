//! The HTTP edge of learning-chat: handlers and the one error type, API keys, the server loop
//! (HTTP/1.1, h2c, TLS), the web pages, request telemetry and the model-call HTTP client.
//!
//! Handlers parse and map; the engine ([`learning_chat_engine`]) decides.

pub mod api;
pub mod auth;
pub mod client;
pub mod dispatch;
pub mod metrics;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use api::AppState;
