//! learning-chat: an AI tutoring chat service in front of Google Gemini, built so that one small
//! server holds 1000+ concurrent learners and many servers share one Gemini quota.
//!
//! The request path lives in [`chat`]; [`app`] assembles the HTTP service around it.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admission;
pub mod agents;
pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod chat;
pub mod coalesce;
pub mod config;
pub mod conversations;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod providers;
pub mod redis_link;
mod redis_scripts;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use api::AppState;
pub use app::Application;
pub use config::Settings;
