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
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cluster::{start_nginx, workspace_binary, Proc};
use common::processes::{free_port, wait_for_port, RedisProcess};
use gemini_sim::Stats;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// gemini-sim's latency outside the slow fault.
const HEALTHY_LATENCY_MS: u64 = 200;
/// The slow fault's latency, and how long it lasts: a little longer than one slow answer, so
/// slow answers come back while the fault is still on (as in any outage longer than 20 s).
const SLOW_LATENCY_MS: u64 = 20_000;
const SLOW_FAULT: Duration = Duration::from_secs(25);
/// How long the 429 fault lasts.
const FAULT: Duration = Duration::from_secs(20);
/// Healthy load before a fault starts.
const WARM: Duration = Duration::from_secs(4);
/// The load tester's rate (distinct questions per second) in every scenario.
const LOAD_RATE: f64 = 3.0;
/// Canary spacing after a fault ends (the resolution of the recovery time) and during it.
const CANARY_EVERY: Duration = Duration::from_millis(100);
const CANARY_DURING_FAULT_EVERY: Duration = Duration::from_secs(1);
/// The required recovery: requests succeed again within this long after the fault ends.
const RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// The service's default quota; the simulator enforces the same one, so any excess is a 429.
const SERVICE_RPM: u32 = 1000;

fn start_sim(rpm: u32, latency_ms: u64) -> Proc {
    let port = free_port();
    let child = Command::new(workspace_binary("gemini-sim", "gemini-sim"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--latency-ms", &latency_ms.to_string()])
        .args(["--rpm", &rpm.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gemini-sim starts");
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "gemini-sim did not listen"
    );
    Proc { child, port }
}

/// A learning-chat process in front of the simulator; `env` adds or overrides settings.
fn start_server(sim_port: u16, env: &[(&str, String)]) -> Proc {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_learning-chat"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LEARNING_CHAT_BIND", format!("127.0.0.1:{port}"))
        .env("GEMINI_API_KEY", "fault-suite-key")
        .env("GEMINI_BASE_URL", format!("http://127.0.0.1:{sim_port}"))
        .env("LEARNING_CHAT_UPSTREAM__RPM", SERVICE_RPM.to_string())
        .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "5000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("learning-chat starts");
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "learning-chat did not listen"
    );
    Proc { child, port }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// The simulator's control and statistics endpoints.
struct SimControl {
    base: String,
    http: reqwest::Client,
}

impl SimControl {
    fn new(port: u16) -> SimControl {
        SimControl {
            base: format!("http://127.0.0.1:{port}"),
            http: http(),
        }
    }

    /// Patches the simulator's config; returns the config now in force.
    async fn configure(&self, patch: Value) -> Value {
        let reply = self
            .http
            .post(format!("{}/config", self.base))
            .json(&patch)
            .send()
            .await
            .expect("gemini-sim /config");
        assert!(reply.status().is_success(), "gemini-sim refused {patch}");
        reply.json().await.expect("config JSON")
    }

    async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("gemini-sim /stats")
            .json()
            .await
            .expect("stats JSON")
    }

    async fn reset_stats(&self) {
        self.http
            .post(format!("{}/stats/reset", self.base))
            .send()
            .await
            .expect("gemini-sim /stats/reset");
    }
}

/// What one open-loop run of the load tester measured (fields of its JSON report).
#[derive(Debug, Default, Clone)]
struct Load {
    requests: u64,
    ok: u64,
    failures_by_status: BTreeMap<String, u64>,
}

impl Load {
    fn failures(&self) -> u64 {
        self.failures_by_status.values().sum()
    }

    /// Failures whose status is not in `allowed`.
    fn failures_except(&self, allowed: &[&str]) -> BTreeMap<String, u64> {
        self.failures_by_status
            .iter()
            .filter(|(status, _)| !allowed.contains(&status.as_str()))
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    }
}

/// Runs `learning-chat-loadtest open-loop` against `url` at [`LOAD_RATE`] distinct questions per
/// second for `duration`, in a task of its own. The run is bounded in count (rate x duration)
/// and in time (a hang guard kills it).
fn open_loop(
    url: String,
    duration: Duration,
    dir: &Path,
    name: &str,
) -> tokio::task::JoinHandle<Load> {
    let summary = dir.join(format!("{name}.json"));
    let binary = workspace_binary("learning-chat-loadtest", "learning-chat-loadtest");
    tokio::spawn(async move {
        let mut child = tokio::process::Command::new(binary)
            .args(["open-loop", "--url", &url, "--agent", "science"])
            .args(["--rate", &LOAD_RATE.to_string()])
            .args(["--duration", &duration.as_secs_f64().to_string()])
            .args(["--questions", "unique", "--timeout", "60"])
            .args(["--progress-every", "0", "--summary-json"])
            .arg(&summary)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the load tester starts");
        let status = tokio::time::timeout(duration + Duration::from_secs(90), child.wait())
            .await
            .expect("the load tester finished (hang guard)")
            .expect("the load tester ran");
        assert!(status.success(), "the load tester failed: {status}");
        let report: Value = serde_json::from_slice(&std::fs::read(&summary).expect("summary"))
            .expect("summary JSON");
        Load {
            requests: report["requests"].as_u64().expect("requests"),
            ok: report["ok"].as_u64().expect("ok"),
            failures_by_status: report["failures_by_status"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    })
}

/// One canary request: when it left, its status (0: no response) and whether a 503 carried
/// `Retry-After`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    sent: Instant,
    status: u16,
    retry_after: bool,
}

/// Asks a new distinct question every `every` from `start` until `end` (open loop: each in a
/// task of its own), and returns every outcome once all have finished.
fn canary(
    url: String,
    name: &'static str,
    start: Instant,
    end: Instant,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<Probe>> {
    tokio::spawn(async move {
        let client = Arc::new(http());
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0u32;
        // Bounded by the window and by count.
        while n < 2000 {
            let at = start + every * n;
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at).await;
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                let reply = client
                    .post(&url)
                    .json(&json!({"message": format!("Canary question {name} number {n}: why?")}))
                    .send()
                    .await;
                match reply {
                    Ok(reply) => {
                        let status = reply.status().as_u16();
                        let retry_after = reply.headers().contains_key("retry-after");
                        let whole = reply.bytes().await.is_ok();
                        Probe {
                            sent,
                            status: if whole { status } else { 0 },
                            retry_after,
                        }
                    }
                    Err(_) => Probe {
                        sent,
                        status: 0,
                        retry_after: false,
                    },
                }
            });
            n += 1;
        }
        let mut probes = Vec::new();
        while let Some(probe) = tasks.join_next().await {
            probes.push(probe.expect("canary task"));
        }
        probes.sort_by_key(|p| p.sent);
        probes
    })
}

/// Time from `fault_end` until the canary's answers succeed for good: the send time of the
/// first probe after the last failure. `None` when the last probes still failed (never
/// recovered within the window).
fn recovery(probes: &[Probe], fault_end: Instant) -> Option<Duration> {
    let after: Vec<&Probe> = probes.iter().filter(|p| p.sent >= fault_end).collect();
    match after.iter().rposition(|p| p.status != 200) {
        None => Some(Duration::ZERO),
        Some(last) if last + 1 < after.len() => {
            Some(after[last + 1].sent.saturating_duration_since(fault_end))
        }
        Some(_) => None,
    }
}

/// Canary failures by status, and how many 503s lacked `Retry-After`.
fn canary_failures(probes: &[Probe]) -> (BTreeMap<u16, u64>, u64) {
    let mut by_status = BTreeMap::new();
    let mut no_retry_after = 0;
    for probe in probes.iter().filter(|p| p.status != 200) {
        *by_status.entry(probe.status).or_insert(0) += 1;
        if probe.status == 503 && !probe.retry_after {
            no_retry_after += 1;
        }
    }
    (by_status, no_retry_after)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string())
}

/// The one-line figures of a scenario, for the tables in bench/RESULTS.md and docs/scaling.md:
/// scenario, settings, requests (every one a distinct question), failures, upstream calls,
/// upstream 429s, recovery in ms.
fn print_row(
    scenario: &str,
    settings: &str,
    questions: u64,
    failed: &str,
    upstream: &Stats,
    recovery: Option<Duration>,
) {
    eprintln!(
        "FAULT-ROW | {scenario} | {settings} | {questions} | {failed} | {} | {} | {} |",
        upstream.requests,
        upstream.rate_limited,
        ms(recovery),
    );
}

/// Scenario 1: one server, no Redis; gemini-sim's latency 200 ms -> 20 s for 25 s -> 200 ms.
async fn slow_upstream(deadline_secs: u64, scenario: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = start_sim(SERVICE_RPM, HEALTHY_LATENCY_MS);
    let server = start_server(
        sim.port,
        &[(
            "LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS",
            (deadline_secs * 1000).to_string(),
        )],
    );
    let control = SimControl::new(sim.port);
    control.reset_stats().await;
    let base = format!("http://127.0.0.1:{}", server.port);
    let chat_url = format!("{base}/api/v1/agents/math");
    let begin = Instant::now();
    let warm = open_loop(base.clone(), WARM, dir.path(), "warm");
    tokio::time::sleep_until(begin + WARM).await;

    control
        .configure(json!({"latency": {"kind": "fixed", "ms": SLOW_LATENCY_MS}}))
        .await;
    let fault_start = Instant::now();
    let during = open_loop(base.clone(), SLOW_FAULT, dir.path(), "during");
    let canary_during = canary(
        chat_url.clone(),
        "during",
        fault_start,
        fault_start + SLOW_FAULT,
        CANARY_DURING_FAULT_EVERY,
    );
    tokio::time::sleep_until(fault_start + SLOW_FAULT).await;
    control
        .configure(json!({"latency": {"kind": "fixed", "ms": HEALTHY_LATENCY_MS}}))
        .await;
    let fault_end = Instant::now();

    // Requests sent in the slow phase may take up to the deadline to end; the canary watches
    // until they have all drained, and the steady load runs from the recovery bound on.
    let watch = Duration::from_secs(deadline_secs.min(SLOW_LATENCY_MS / 1000) + 4);
    let canary_after = canary(
        chat_url,
        "after",
        fault_end,
        fault_end + watch,
        CANARY_EVERY,
    );
    tokio::time::sleep_until(fault_end + RECOVERY_BOUND).await;
    let after = open_loop(base, watch - RECOVERY_BOUND, dir.path(), "after");

    let (warm, during, after) = (
        warm.await.unwrap(),
        during.await.unwrap(),
        after.await.unwrap(),
    );
    let (canary_during, canary_after) = (canary_during.await.unwrap(), canary_after.await.unwrap());
    let upstream = control.stats().await;
    let recovered = recovery(&canary_after, fault_end);
    let (during_canary_failed, during_no_retry_after) = canary_failures(&canary_during);
    let (after_canary_failed, after_no_retry_after) = canary_failures(&canary_after);
    let distinct = warm.requests
        + during.requests
        + after.requests
        + canary_during.len() as u64
        + canary_after.len() as u64;
    let failed = format!(
        "warm {:?}; fault {:?} (canary {:?}); after {:?} (canary {:?})",
        warm.failures_by_status,
        during.failures_by_status,
        during_canary_failed,
        after.failures_by_status,
        after_canary_failed
    );
    print_row(
        scenario,
        &format!("deadline {deadline_secs} s, {LOAD_RATE}/s load + canary"),
        distinct,
        &failed,
        &upstream,
        recovered,
    );

    assert!(warm.requests > 0 && during.requests > 0 && after.requests > 0);
    assert_eq!(
        warm.failures(),
        0,
        "healthy upstream, nothing may fail: {failed}"
    );
    assert!(
        during.failures_except(&["503", "504"]).is_empty(),
        "while the upstream is slow only 503/504 are allowed: {failed}"
    );
    assert_eq!(
        during_no_retry_after + after_no_retry_after,
        0,
        "every 503 carries Retry-After"
    );
    assert!(
        recovered.is_some_and(|r| r < RECOVERY_BOUND),
        "distinct new questions must succeed within {RECOVERY_BOUND:?} of the fault's end, \
         steadily: recovery {}, canary after the fault {after_canary_failed:?} failed of {}",
        ms(recovered),
        canary_after.len()
    );
    assert_eq!(
        after.failures(),
        0,
        "after recovery nothing may fail: {failed}"
    );
    assert_eq!(
        upstream.rate_limited, 0,
        "the quota is the service's to keep"
    );
    assert!(
        upstream.requests <= distinct,
        "at most one upstream call per distinct question: {} calls, {distinct} questions",
        upstream.requests
    );
}

#[tokio::test]
async fn slow_upstream_with_a_10s_deadline_recovers_within_2s() {
    slow_upstream(10, "1a. latency 200 ms -> 20 s (25 s) -> 200 ms").await;
}

#[tokio::test]
async fn slow_upstream_with_the_default_30s_deadline_recovers_within_2s() {
    slow_upstream(30, "1b. latency 200 ms -> 20 s (25 s) -> 200 ms").await;
}

/// Scenario 2: one server; gemini-sim answers every call 429 (RetryInfo 10 s) for 20 s.
#[tokio::test]
async fn upstream_429s_are_honoured_not_hammered_and_recovery_is_within_2s() {
    const RETRY_DELAY: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = start_sim(SERVICE_RPM, HEALTHY_LATENCY_MS);
    let server = start_server(sim.port, &[]);
    let control = SimControl::new(sim.port);
    control.reset_stats().await;
    let base = format!("http://127.0.0.1:{}", server.port);
    let chat_url = format!("{base}/api/v1/agents/math");
    let begin = Instant::now();
    let warm = open_loop(base.clone(), WARM, dir.path(), "warm");
    tokio::time::sleep_until(begin + WARM).await;

    let before = control.stats().await;
    let config = control
        .configure(json!({"faults": {
            "error_429": 1.0,
            "error_429_retry_delay_ms": RETRY_DELAY.as_millis() as u64,
        }}))
        .await;
    assert_eq!(
        config["faults"]["error_429"], 1.0,
        "this gemini-sim has no 429 fault: rebuild it (cargo build -p gemini-sim)"
    );
    let fault_start = Instant::now();
    let during = open_loop(base.clone(), FAULT, dir.path(), "during");
    let canary_during = canary(
        chat_url.clone(),
        "during",
        fault_start,
        fault_start + FAULT,
        CANARY_DURING_FAULT_EVERY,
    );
    tokio::time::sleep_until(fault_start + FAULT).await;
    control
        .configure(json!({"faults": {"error_429": 0.0}}))
        .await;
    let fault_end = Instant::now();
    let in_fault = control.stats().await;

    // Requests refused in the fault wait out their RetryInfo (up to 10 s + 10% jitter).
    let watch = RETRY_DELAY + Duration::from_secs(4);
    let canary_after = canary(
        chat_url,
        "after",
        fault_end,
        fault_end + watch,
        CANARY_EVERY,
    );
    tokio::time::sleep_until(fault_end + RECOVERY_BOUND).await;
    let after = open_loop(base, watch - RECOVERY_BOUND, dir.path(), "after");

    let (warm, during, after) = (
        warm.await.unwrap(),
        during.await.unwrap(),
        after.await.unwrap(),
    );
    let (canary_during, canary_after) = (canary_during.await.unwrap(), canary_after.await.unwrap());
    let upstream = control.stats().await;
    let recovered = recovery(&canary_after, fault_end);
    let (during_canary_failed, during_no_retry_after) = canary_failures(&canary_during);
    let (after_canary_failed, after_no_retry_after) = canary_failures(&canary_after);
    let distinct = warm.requests
        + during.requests
        + after.requests
        + canary_during.len() as u64
        + canary_after.len() as u64;

    // What honouring RetryInfo allows: a question first asked at t may be sent again only
    // RETRY_DELAY after each refusal, so within the fault it costs 1 + (fault end - t) / delay
    // calls at most. Load tester questions leave on a fixed schedule from the fault's start;
    // the canary's were recorded. Up to one second of warm-up load may straddle the switch.
    let retries_allowed = |sent_after_start: Duration| {
        let left = FAULT.saturating_sub(sent_after_start) + Duration::from_millis(500);
        1 + (left.as_millis() / RETRY_DELAY.as_millis()) as u64
    };
    let scheduled = (LOAD_RATE * FAULT.as_secs_f64()).round() as u64;
    let mut bound: u64 = (0..scheduled)
        .map(|i| retries_allowed(Duration::from_secs_f64(i as f64 / LOAD_RATE)))
        .sum();
    bound += canary_during
        .iter()
        .map(|p| retries_allowed(p.sent.saturating_duration_since(fault_start)))
        .sum::<u64>();
    bound += LOAD_RATE.ceil() as u64 * retries_allowed(Duration::ZERO);
    let refused_in_fault = in_fault.rate_limited - before.rate_limited;
    let questions_in_fault = during.requests + canary_during.len() as u64;

    let failed = format!(
        "warm {:?}; fault {:?} (canary {:?}); after {:?} (canary {:?})",
        warm.failures_by_status,
        during.failures_by_status,
        during_canary_failed,
        after.failures_by_status,
        after_canary_failed
    );
    eprintln!(
        "429 fault: {questions_in_fault} questions asked in the fault, {refused_in_fault} upstream \
         429s in it (RetryInfo bound {bound}); {} upstream calls in it",
        in_fault.requests - before.requests
    );
    print_row(
        "2. every call 429 + RetryInfo 10 s (20 s)",
        &format!("default 30 s deadline, {LOAD_RATE}/s load + canary"),
        distinct,
        &failed,
        &upstream,
        recovered,
    );

    assert_eq!(
        warm.failures(),
        0,
        "healthy upstream, nothing may fail: {failed}"
    );
    assert!(
        during.failures_except(&["503"]).is_empty(),
        "while the upstream refuses only 503 (with Retry-After) is allowed: {failed}"
    );
    assert_eq!(
        during_no_retry_after + after_no_retry_after,
        0,
        "every 503 carries Retry-After"
    );
    assert!(refused_in_fault > 0, "the fault was in force: {in_fault:?}");
    assert!(
        refused_in_fault <= bound,
        "{refused_in_fault} upstream 429s in a 20 s fault for {questions_in_fault} questions: \
         RetryInfo (10 s) allows at most {bound}"
    );
    assert!(
        recovered.is_some_and(|r| r < RECOVERY_BOUND),
        "distinct new questions must succeed within {RECOVERY_BOUND:?} of the fault's end, \
         steadily: recovery {}, canary after the fault {after_canary_failed:?} failed of {}",
        ms(recovered),
        canary_after.len()
    );
    assert_eq!(
        after.failures(),
        0,
        "after recovery nothing may fail: {failed}"
    );
    assert_eq!(
        upstream.rate_limited, refused_in_fault,
        "no 429 outside the injected fault"
    );
}

/// Three servers behind the shipped nginx config, one Redis, one shared quota.
struct Cluster {
    nginx: Proc,
    servers: Vec<Proc>,
    sim: Proc,
    redis: RedisProcess,
    dir: tempfile::TempDir,
}

/// The shared quota of the cluster scenarios; the simulator enforces the same one.
const CLUSTER_RPM: u32 = 300;
/// gemini-sim's latency in the cluster scenarios: long enough that every server has calls in
/// flight when Redis or a server dies.
const CLUSTER_LATENCY_MS: u64 = 1000;

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess::start();
        let sim = start_sim(CLUSTER_RPM, CLUSTER_LATENCY_MS);
        let servers: Vec<Proc> = (0..3)
            .map(|_| {
                start_server(
                    sim.port,
                    &[
                        ("REDIS_URL", redis.url()),
                        ("LEARNING_CHAT_REDIS__REPLICAS", "3".to_owned()),
                        ("LEARNING_CHAT_UPSTREAM__RPM", CLUSTER_RPM.to_string()),
                    ],
                )
            })
            .collect();
        let nginx = start_nginx(dir.path(), &servers);
        let cluster = Cluster {
            nginx,
            servers,
            sim,
            redis,
            dir,
        };
        for server in &cluster.servers {
            assert!(
                redis_up_within(server.port, Duration::from_secs(30)).await,
                "server {} never reported redis up",
                server.port
            );
        }
        cluster
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx.port)
    }
}

/// Whether the server's /ready reports Redis "up" within `within` (polled every 50 ms).
async fn redis_up_within(port: u16, within: Duration) -> bool {
    let client = http();
    let until = Instant::now() + within;
    while Instant::now() < until {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(reply) = ready {
            if let Ok(body) = reply.json::<Value>().await {
                if body["redis"] == "up" {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Load and canary through nginx for `total`, running `fault` at `fault_at` meanwhile. `fault`
/// returns when its fault ended and how many upstream calls it may have cost twice (calls lost
/// with a killed server). Asserts no request failed, no upstream 429, and at most one upstream
/// call per distinct question beyond those.
async fn cluster_under_fault<F, Fut>(
    cluster: &Cluster,
    scenario: &str,
    fault_at: Duration,
    total: Duration,
    fault: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (Instant, u64)>,
{
    let control = SimControl::new(cluster.sim.port);
    control.reset_stats().await;
    let begin = Instant::now();
    let chat_url = format!("{}/api/v1/agents/math", cluster.base());
    let load = open_loop(cluster.base(), total, cluster.dir.path(), "load");
    let canary_all = canary(
        chat_url,
        "cluster",
        begin,
        begin + total,
        Duration::from_millis(200),
    );
    tokio::time::sleep_until(begin + fault_at).await;
    let (fault_end, extra_calls) = fault().await;
    let load = load.await.unwrap();
    let probes = canary_all.await.unwrap();
    let upstream = control.stats().await;
    let recovered = recovery(&probes, fault_end);
    let (canary_failed, _) = canary_failures(&probes);
    let distinct = load.requests + probes.len() as u64;
    let failed = format!(
        "load {:?}; canary {canary_failed:?}",
        load.failures_by_status
    );
    print_row(
        scenario,
        &format!(
            "3 servers + nginx, shared quota {CLUSTER_RPM} rpm, answers {CLUSTER_LATENCY_MS} ms, \
             {LOAD_RATE}/s load + 5/s canary"
        ),
        distinct,
        &failed,
        &upstream,
        recovered,
    );
    assert!(load.requests > 0 && load.ok > 0);
    assert_eq!(load.failures(), 0, "no request may fail: {failed}");
    assert!(canary_failed.is_empty(), "no request may fail: {failed}");
    assert_eq!(
        upstream.rate_limited, 0,
        "the shared quota is never exceeded"
    );
    assert!(
        upstream.requests <= distinct + extra_calls,
        "one upstream call per distinct question: {} calls for {distinct} questions \
         ({extra_calls} were in flight on a lost server)",
        upstream.requests
    );
}

/// Scenario 3: Redis SIGKILLed 4 s into the load, restarted 4 s later.
#[tokio::test]
async fn redis_killed_and_restarted_under_three_servers_fails_nothing() {
    let cluster = Cluster::start().await;
    let reconnected = std::cell::Cell::new(None);
    cluster_under_fault(
        &cluster,
        "3. Redis SIGKILLed, restarted after 4 s",
        Duration::from_secs(4),
        Duration::from_secs(14),
        || async {
            cluster.redis.kill();
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.redis.restart();
            let restarted = Instant::now();
            let mut all_up = true;
            for server in &cluster.servers {
                all_up &= redis_up_within(server.port, Duration::from_secs(20)).await;
            }
            reconnected.set(all_up.then(|| restarted.elapsed()));
            (restarted, 0)
        },
    )
    .await;
    let reconnected = reconnected.get();
    eprintln!(
        "redis fault: every server reported Redis up again {} ms after redis-server listened",
        ms(reconnected)
    );
    // Requests never stopped succeeding (checked above); going back to the shared state waits
    // for the deliberate hysteresis (redis.up_after_probes x redis.probe_interval_ms, issue 9
    // item 5), so that is the bound here, plus the same recovery allowance.
    let defaults = learning_chat::config::RedisSettings::default();
    let reuse_bound =
        Duration::from_millis(u64::from(defaults.up_after_probes) * defaults.probe_interval_ms)
            + RECOVERY_BOUND;
    assert!(
        reconnected.is_some_and(|r| r < reuse_bound),
        "every server back on the shared Redis within {reuse_bound:?}: {}",
        ms(reconnected)
    );
}

/// Scenario 4: one of three servers SIGKILLed 5 s into the load.
#[tokio::test]
async fn one_of_three_servers_sigkilled_fails_nothing() {
    let cluster = Cluster::start().await;
    let control = SimControl::new(cluster.sim.port);
    cluster_under_fault(
        &cluster,
        "4. one of 3 servers SIGKILLed",
        Duration::from_secs(5),
        Duration::from_secs(14),
        || async {
            // Calls the killed server had in flight are lost with it and asked again elsewhere.
            let in_flight = control.stats().await.in_flight;
            cluster.servers[1].signal("-KILL");
            (Instant::now(), in_flight)
        },
    )
    .await;
}
