//! The load both highly available Redis tests (Sentinel and Cluster) drive through three
//! in-process servers while a master dies or a slot moves, and what they check afterwards.
//! Counted: failed requests (none allowed: quota refusals are the only documented non-200),
//! model calls against distinct questions, and the upstream's own quota count (no 429).

#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::redis_ha::LoadReport;
use crate::support::{fixed_latency, settings_for, start_sim};
use gemini_sim::{QuotaConfig, SimConfig, SimServer, Stats};
use learning_chat::Settings;
use std::num::NonZero;
use std::time::Duration;

/// The quota of the simulator and of the service; the load asks more distinct questions.
pub const RPM: u32 = 60;
/// Service instances sharing the Redis deployment.
pub const SERVERS: usize = 3;
/// Offered load: one request every 150 ms for 24 s, spread over the servers.
pub const ARRIVAL: Duration = Duration::from_millis(150);
/// Requests in the load.
pub const REQUESTS: u64 = 160;
/// When the fault happens, counted from the start of the load.
pub const KILL_AT: Duration = Duration::from_secs(6);
/// Popular questions, asked again and again (every fourth request).
pub const POPULAR: u64 = 4;

/// The load's `i`th question: every fourth a popular one, the others distinct.
pub fn question(i: u64) -> String {
    if i.is_multiple_of(4) {
        format!("popular question {}", (i / 4) % POPULAR)
    } else {
        format!("distinct question {i}")
    }
}

/// A simulator answering in 100 ms and enforcing the same quota as the service.
pub async fn quota_sim() -> SimServer {
    start_sim(SimConfig {
        latency: fixed_latency(100),
        quota: QuotaConfig {
            rpm: u64::from(RPM),
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    })
    .await
}

/// One server's settings, the Redis deployment still to be named.
pub fn server_settings(sim: &SimServer) -> Settings {
    let mut settings = settings_for(sim);
    settings.redis.replicas = NonZero::new(SERVERS as u32).unwrap();
    settings.redis.lease = Duration::from_millis(1_500);
    settings.upstream.rpm = RPM;
    settings.upstream.max_queue_wait = Duration::from_secs(1);
    settings.server.request_timeout = Duration::from_secs(10);
    settings
}

/// What a Redis fault under the load must not cost: no failed request, every request sent, no
/// upstream 429, no more calls than the quota, and one call per distinct question except that
/// while Redis was unreachable each server may ask a popular question once for itself
/// (documented in docs/scaling.md).
pub fn assert_nothing_lost(report: &LoadReport, stats: &Stats) {
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    assert_eq!(report.sent, REQUESTS as usize);
    assert!(report.ok > 0);
    assert_eq!(
        stats.rate_limited, 0,
        "the upstream saw more than its quota"
    );
    assert!(
        stats.requests <= u64::from(RPM),
        "{} > quota",
        stats.requests
    );
    let bound = report.distinct_answered as u64 + POPULAR * (SERVERS as u64 - 1);
    assert!(
        stats.ok <= bound,
        "{} model answers for {} distinct questions",
        stats.ok,
        report.distinct_answered
    );
}
