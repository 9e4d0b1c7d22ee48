//! The harness every crate's tests share: real processes on free loopback ports (redis-server in
//! its plain, sentinel and cluster forms, nginx with the shipped config, gemini-sim, the
//! learning-chat binary), wait helpers, a Prometheus text reader, the repository's files and the
//! OpenAI client libraries the OpenAI-compatible API is tested with.
//!
//! It does not link the server library (that would make a dependency cycle with the server's
//! dev-dependencies): the in-process `TestApp` lives in the server's `tests/support`.
// A test harness fails by panicking: a missing redis-server or a port that never opens is the
// test's failure, reported with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod clients;
pub mod http;
pub mod net;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod prom;
pub mod redis;
pub mod repo;
pub mod sim;
