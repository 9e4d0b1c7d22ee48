//! Several servers behaving like one: the shipped nginx config in front of learning-chat
//! processes, one shared Redis (plain, Sentinel or Cluster), one cache, one quota, API keys
//! across servers, and no request lost when a server or Redis dies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

#[path = "../support/mod.rs"]
pub mod support;

mod auth;
mod auth_limits;
mod ha_load;
mod key_blocks;
mod key_limits_cluster;
mod keys_store;
mod model_quotas;
mod nginx;
mod quota;
mod redis_cluster;
mod redis_sentinel;
mod redis_shared;
mod redis_slow;
mod state_model;
mod streaming;
mod webhook_kill;
