//! learning-chat: an AI tutoring chat service in front of Google Gemini, built so that one small
//! server holds 1000+ concurrent learners and many servers share one Gemini quota.
//!
//! This crate is the binary's library: [`app`] wires the engine ([`learning_chat_engine`]) and
//! the HTTP edge ([`learning_chat_http`]) from the settings; [`keys_cli`] is `learning-chat keys`,
//! [`migrate_keys`] `learning-chat migrate-keys`.
//! The modules of both are re-exported under their own names, so tools and tests reach every part
//! through one crate.

pub mod app;
pub mod gzip;
pub mod keys_cli;
pub mod migrate_keys;

pub use learning_chat_engine::{
    admission, agents, cache, chat, coalesce, config, conversations, experiments, policy,
    providers, redis_link, safety, trace, trace_span,
};
pub use learning_chat_http::{
    api, auth, client, dispatch, metrics, routes, serve, telemetry, tls, web,
};
pub use learning_chat_plan as plan;
pub use learning_chat_records as records;

pub use api::AppState;
pub use app::Application;
pub use config::Settings;
