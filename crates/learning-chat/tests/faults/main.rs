//! The fault suite: real processes (gemini-sim, learning-chat, redis-server, nginx) driven by the
//! load tester's open-loop mode while a fault is switched on and off mid-run:
//!
//! 1. gemini-sim's latency jumps from 200 ms to 20 s for 25 s and back (one server, no Redis),
//!    with a shortened 10 s deadline and with the default 30 s one;
//! 2. gemini-sim answers every call 429 with a RetryInfo for 20 s (one server);
//! 3. Redis is killed and restarted under three servers behind nginx sharing one quota;
//! 4. one of three servers behind nginx is SIGKILLed.
//!
//! Each test prints one `FAULT-ROW` line (stderr; `--nocapture`) with its figures for the table
//! in bench/RESULTS.md and docs/scaling.md. Besides the load tester's steady load, a "canary"
//! asks a new distinct question every 100 ms after the fault ends, recording each status and
//! `Retry-After`; recovery is the time from the end of the fault until the canary's answers
//! succeed for good.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

#[path = "../support/mod.rs"]
pub mod support;

mod cluster;
mod harness;
mod upstream;

use std::time::Duration;

/// gemini-sim's latency outside the slow fault.
pub const HEALTHY_LATENCY_MS: u64 = 200;
/// The slow fault's latency, and how long it lasts: a little longer than one slow answer, so
/// slow answers come back while the fault is still on (as in any outage longer than 20 s).
pub const SLOW_LATENCY_MS: u64 = 20_000;
pub const SLOW_FAULT: Duration = Duration::from_secs(25);
/// How long the 429 fault lasts.
pub const FAULT: Duration = Duration::from_secs(20);
/// Healthy load before a fault starts.
pub const WARM: Duration = Duration::from_secs(4);
/// The load tester's rate (distinct questions per second) in every scenario.
pub const LOAD_RATE: f64 = 3.0;
/// Canary spacing after a fault ends (the resolution of the recovery time) and during it.
pub const CANARY_EVERY: Duration = Duration::from_millis(100);
pub const CANARY_DURING_FAULT_EVERY: Duration = Duration::from_secs(1);
/// The recovery the service aims for: new questions succeed again within this long after the
/// fault ends. Shown by each `FAULT-ROW`, not asserted (the machine is shared and noisy: a speed
/// target is a figure, never a timed assertion); the steady load after a fault starts no earlier.
pub const RECOVERY_TARGET: Duration = Duration::from_secs(2);
/// The service's default quota; the simulator enforces the same one, so any excess is a 429.
pub const SERVICE_RPM: u32 = 1000;
