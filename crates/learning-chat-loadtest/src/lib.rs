//! learning-chat-loadtest: the reference load profile (1000 users, 50/s, 5-15 s think time) on
//! goose, plus the open-loop and burst generators the benchmarks in `bench/` need.
//!
//! * [`options`] splits our own flags off the command line and leaves goose's flags to goose;
//! * [`questions`] is the question bank and the question mixes (fixed, unique, Zipf);
//! * [`recorder`] records every request's latency, status and `cached` flag;
//! * [`report`] turns a recording (and the simulator's `/stats`) into the final report;
//! * [`scenario`] is the goose scenario; [`openloop`] and [`burst`] are the other generators;
//! * [`stream`] is streaming mode (`--stream`, any generator): the stream endpoint's events read
//!   as they come (`gemini_wire::sse` decodes them), time to first token and total time recorded.

// Tests may unwrap; request paths may not (workspace lints).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod burst;
pub mod openloop;
pub mod options;
pub mod questions;
pub mod recorder;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod stream;

/// Makes rustls' `ring` provider the process default, before any HTTP client is built.
///
/// The workspace builds reqwest without a provider of its own, and the service uses ring; goose
/// turns reqwest's aws-lc-rs provider on for this crate, but with ring as the process default
/// the load tester speaks TLS as the service does. A process default rather than a config per
/// client, because goose builds its users' clients itself and only the default reaches them.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `reqwest::Client::builder()`, with the crypto provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

pub use options::{AgentMix, LoadOptions, QuestionMode, WaitRange};
pub use questions::{QuestionBank, QuestionPicker};
pub use recorder::Recorder;
pub use report::Report;
