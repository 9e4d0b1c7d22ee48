//! learning-chat-loadtest: the seed guide's locust profile on goose, plus the open-loop and burst
//! generators the benchmarks in `bench/` need.
//!
//! * [`options`] splits our own flags off the command line and leaves goose's flags to goose;
//! * [`questions`] is the question bank and the question mixes (fixed, unique, Zipf);
//! * [`recorder`] records every request's latency, status and `cached` flag;
//! * [`report`] turns a recording (and the simulator's `/stats`) into the final report;
//! * [`scenario`] is the goose scenario; [`openloop`] and [`burst`] are the other generators;
//! * [`stream`] is streaming mode (`--stream`, any generator): the stream endpoint's events read
//!   as they come ([`sse`] decodes them), time to first token and total time recorded.

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
pub mod sse;
pub mod stream;

pub use options::{AgentMix, LoadOptions, QuestionMode, WaitRange};
pub use questions::{QuestionBank, QuestionPicker};
pub use recorder::Recorder;
pub use report::Report;
