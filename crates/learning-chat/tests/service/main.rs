//! The service in this process on port 0, one module per feature, against gemini-sim (in process
//! or as its binary) and real redis-server processes, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

#[path = "../support/mod.rs"]
pub mod support;

mod admission;
mod api;
mod cache_scope;
mod connections;
mod console;
mod conversations;
mod conversations_records;
mod conversations_redis;
mod fair_queue;
mod h2c;
mod keys;
mod logs;
mod metrics;
mod metrics_listener;
mod metrics_upstream;
mod model_clients;
mod model_quotas;
mod openai_api;
mod plan;
mod policies;
mod redirects;
mod redis_link;
mod reliability;
mod routing;
mod routing_keys;
mod safety;
mod safety_moderation;
mod safety_privacy;
mod safety_webhook;
mod sentry;
mod stalled_clients;
mod streaming;
mod streaming_bytes;
mod tls;
mod traces;
mod upstream;
