//! The engine of learning-chat: a checked question in, an answer (or a stream of its pieces) out.
//!
//! Agents, the answer cache, one model call per question (coalescing), admission and quota, the
//! model providers, conversations and the chat flow that orders them. Nothing here knows HTTP
//! servers: Cargo keeps axum, hyper and tower-http out of this crate, and the model clients send
//! their requests through a [`providers::transport::HttpTransport`] the binary supplies.

pub mod admission;
pub mod agents;
pub mod cache;
pub mod chat;
pub mod coalesce;
pub mod config;
pub mod conversations;
pub mod experiments;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod redis_link;
mod redis_scripts;
pub mod safety;
pub mod trace;

pub use config::Settings;
