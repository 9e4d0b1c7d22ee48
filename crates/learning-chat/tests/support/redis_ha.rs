//! Highly available Redis deployments (from the testkit) and the load the tests drive through
//! in-process servers using them.

use super::TestApp;
use std::time::Duration;

pub use learning_chat_testkit::net::wait_until;
pub use learning_chat_testkit::redis::{RedisCluster, RedisNode, SentinelGroup, MASTER_NAME};

/// Outcome of [`open_load`]: every request's fate, counted.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: usize,
    pub ok: usize,
    /// 503 `overloaded` naming the quota, with `Retry-After`: the documented answer once the
    /// minute's quota is used up.
    pub quota_refused: usize,
    /// Everything else: each one is a request Redis trouble must not cost.
    pub failed: Vec<String>,
    /// Distinct questions among the requests answered 200.
    pub distinct_answered: usize,
}

/// Sends `count` requests, one every `every`, round-robin over `apps` (an open load: each leaves
/// on time whether or not earlier ones were answered), with `question(i)` as the message.
pub async fn open_load(
    apps: &[TestApp],
    count: u64,
    every: Duration,
    question: impl Fn(u64) -> String,
) -> LoadReport {
    let started = tokio::time::Instant::now();
    let asks = (0..count).map(|i| {
        let app = &apps[i as usize % apps.len()];
        let message = question(i);
        async move {
            tokio::time::sleep_until(started + every * i as u32).await;
            let reply = app.ask("math", message.clone()).await;
            let status = reply.status();
            let retry_after = reply.headers().contains_key("retry-after");
            let body = reply.text().await.unwrap_or_default();
            (message, status, retry_after, body)
        }
    });
    let mut report = LoadReport::default();
    let mut answered = std::collections::HashSet::new();
    for (message, status, retry_after, body) in futures::future::join_all(asks).await {
        report.sent += 1;
        if status == reqwest::StatusCode::OK {
            report.ok += 1;
            answered.insert(message);
        } else if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && retry_after
            && body.contains("quota")
        {
            report.quota_refused += 1;
        } else {
            report.failed.push(format!("{status}: {body}"));
        }
    }
    report.distinct_answered = answered.len();
    report
}

/// Waits (bounded by `within`) until every app's `/ready` shows `"redis": want`.
pub async fn wait_all_redis(apps: &[TestApp], want: &str, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        let mut all = true;
        for app in apps {
            all &= app.get_json("/ready").await["redis"] == want;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
