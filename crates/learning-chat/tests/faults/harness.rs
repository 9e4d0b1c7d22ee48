//! The fault suite's instruments: the processes, the simulator's control endpoints, the load
//! tester's open loop, the canary and what recovery means, the scenario's printed row, and the
//! phases every single-server scenario runs through (warm, fault, after).

use crate::support::cluster::{workspace_binary, Proc};
use crate::{CANARY_DURING_FAULT_EVERY, CANARY_EVERY, LOAD_RATE, RECOVERY_TARGET, SERVICE_RPM};
use crate::{HEALTHY_LATENCY_MS, WARM};
use gemini_sim::Stats;
use learning_chat_testkit::process::{server_command, spawn_server};
use learning_chat_testkit::sim::spawn_sim_process;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// gemini-sim as its binary, enforcing `rpm` and answering in `latency_ms`.
pub fn start_sim(rpm: u32, latency_ms: u64) -> Proc {
    spawn_sim_process(&[
        "--latency-ms".to_owned(),
        latency_ms.to_string(),
        "--rpm".to_owned(),
        rpm.to_string(),
    ])
}

/// A learning-chat process in front of the simulator; `env` adds or overrides settings.
pub fn start_server(sim_port: u16, env: &[(&str, String)]) -> Proc {
    let (mut command, port) = server_command();
    command
        .env("GEMINI_API_KEY", "fault-suite-key")
        .env("GEMINI_BASE_URL", format!("http://127.0.0.1:{sim_port}"))
        .env("LEARNING_CHAT_UPSTREAM__RPM", SERVICE_RPM.to_string())
        .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "5000");
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_server(command, port)
}

pub fn http() -> reqwest::Client {
    learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// The simulator's control and statistics endpoints.
pub struct SimControl {
    base: String,
    http: reqwest::Client,
}

impl SimControl {
    pub fn new(port: u16) -> SimControl {
        SimControl {
            base: format!("http://127.0.0.1:{port}"),
            http: http(),
        }
    }

    /// Patches the simulator's config; returns the config now in force.
    pub async fn configure(&self, patch: Value) -> Value {
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

    pub async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("gemini-sim /stats")
            .json()
            .await
            .expect("stats JSON")
    }

    pub async fn reset_stats(&self) {
        self.http
            .post(format!("{}/stats/reset", self.base))
            .send()
            .await
            .expect("gemini-sim /stats/reset");
    }
}

/// What one open-loop run of the load tester measured (fields of its JSON report).
#[derive(Debug, Default, Clone)]
pub struct Load {
    pub requests: u64,
    pub ok: u64,
    pub failures_by_status: BTreeMap<String, u64>,
}

impl Load {
    pub fn failures(&self) -> u64 {
        self.failures_by_status.values().sum()
    }

    /// Failures whose status is not in `allowed`.
    pub fn failures_except(&self, allowed: &[&str]) -> BTreeMap<String, u64> {
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
pub fn open_loop(
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
pub struct Probe {
    pub sent: Instant,
    pub status: u16,
    pub retry_after: bool,
}

/// Asks a new distinct question every `every` from `start` until `end` (open loop: each in a
/// task of its own), and returns every outcome once all have finished. Each whole answer
/// notifies `answered`, when given.
pub fn canary(
    url: String,
    name: &'static str,
    start: Instant,
    end: Instant,
    every: Duration,
    answered: Option<Arc<Notify>>,
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
            let (client, url, answered) = (client.clone(), url.clone(), answered.clone());
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
                        if whole && status == 200 {
                            if let Some(answered) = answered {
                                answered.notify_one();
                            }
                        }
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
pub fn recovery(probes: &[Probe], fault_end: Instant) -> Option<Duration> {
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
pub fn canary_failures(probes: &[Probe]) -> (BTreeMap<u16, u64>, u64) {
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

pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string())
}

/// The one-line figures of a scenario, for the tables in bench/RESULTS.md and docs/scaling.md:
/// scenario, settings, requests (every one a distinct question), failures, upstream calls,
/// upstream 429s, recovery in ms.
pub fn print_row(
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

/// What one single-server scenario saw in its three phases: warm (healthy), the fault, after.
pub struct Phases {
    pub warm: Load,
    pub during: Load,
    pub after: Load,
    pub canary_during: Vec<Probe>,
    pub canary_after: Vec<Probe>,
    pub fault_start: Instant,
    pub fault_end: Instant,
    /// The simulator's config in force during the fault.
    pub fault_config: Value,
    /// The simulator's statistics when the fault started and when it ended, and at the end.
    pub before: Stats,
    pub in_fault: Stats,
    pub upstream: Stats,
}

impl Phases {
    /// One server (extra settings in `env`, no Redis) in front of gemini-sim: healthy load for
    /// [`WARM`], then `fault_on` patched into the simulator for `fault` with load and a canary,
    /// then `fault_off`, a canary watching for `watch` and load from the recovery bound on.
    pub async fn run(
        env: &[(&str, String)],
        fault_on: Value,
        fault_off: Value,
        fault: Duration,
        watch: Duration,
    ) -> Phases {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim = start_sim(SERVICE_RPM, HEALTHY_LATENCY_MS);
        let server = start_server(sim.port, env);
        let control = SimControl::new(sim.port);
        control.reset_stats().await;
        let base = format!("http://127.0.0.1:{}", server.port);
        let chat_url = format!("{base}/api/v1/agents/math");
        // Every warm-up question is answered before the fault begins: one sent in the warm-up's
        // last moment could reach the simulator after the switch, meet the fault and count as a
        // failure of the healthy phase (a 504 under a 10 s deadline, seen in CI).
        let warm = open_loop(base.clone(), WARM, dir.path(), "warm")
            .await
            .expect("the warm-up load");

        let before = control.stats().await;
        let fault_config = control.configure(fault_on).await;
        let fault_start = Instant::now();
        let during = open_loop(base.clone(), fault, dir.path(), "during");
        let canary_during = canary(
            chat_url.clone(),
            "during",
            fault_start,
            fault_start + fault,
            CANARY_DURING_FAULT_EVERY,
            None,
        );
        tokio::time::sleep_until(fault_start + fault).await;
        control.configure(fault_off).await;
        let fault_end = Instant::now();
        let in_fault = control.stats().await;

        let answered = Arc::new(Notify::new());
        let canary_after = canary(
            chat_url,
            "after",
            fault_end,
            fault_end + watch,
            CANARY_EVERY,
            Some(answered.clone()),
        );
        // The steady load starts at the recovery target, or once the canary is answered again
        // if that comes later (a loaded machine may take longer; the watch window bounds it).
        tokio::time::sleep_until(fault_end + RECOVERY_TARGET).await;
        let _ = tokio::time::timeout_at(fault_end + watch, answered.notified()).await;
        let left = (fault_end + watch).saturating_duration_since(Instant::now());
        let after = open_loop(base, left.max(Duration::from_secs(1)), dir.path(), "after");

        let (during, after) = (during.await.unwrap(), after.await.unwrap());
        let (canary_during, canary_after) =
            (canary_during.await.unwrap(), canary_after.await.unwrap());
        let upstream = control.stats().await;
        Phases {
            warm,
            during,
            after,
            canary_during,
            canary_after,
            fault_start,
            fault_end,
            fault_config,
            before,
            in_fault,
            upstream,
        }
    }

    /// Time from the fault's end until the canary succeeded for good.
    pub fn recovered(&self) -> Option<Duration> {
        recovery(&self.canary_after, self.fault_end)
    }

    /// Distinct questions asked (every request is one).
    pub fn distinct(&self) -> u64 {
        self.warm.requests
            + self.during.requests
            + self.after.requests
            + self.canary_during.len() as u64
            + self.canary_after.len() as u64
    }

    /// Every failure by phase, for the row and the assertion messages.
    pub fn failed(&self) -> String {
        format!(
            "warm {:?}; fault {:?} (canary {:?}); after {:?} (canary {:?})",
            self.warm.failures_by_status,
            self.during.failures_by_status,
            canary_failures(&self.canary_during).0,
            self.after.failures_by_status,
            canary_failures(&self.canary_after).0
        )
    }

    /// What every single-server scenario requires: nothing failed before the fault, every 503
    /// carried `Retry-After`, distinct new questions succeed again, steadily, before the watch
    /// window ends, and nothing failed after. How soon they did (against [`RECOVERY_TARGET`]) is
    /// a figure of the `FAULT-ROW`, not an assertion: the machine is shared and noisy.
    pub fn assert_recovered(&self) {
        let failed = self.failed();
        let recovered = self.recovered();
        assert_eq!(
            self.warm.failures(),
            0,
            "healthy upstream, nothing may fail: {failed}"
        );
        assert_eq!(
            canary_failures(&self.canary_during).1 + canary_failures(&self.canary_after).1,
            0,
            "every 503 carries Retry-After"
        );
        assert!(
            recovered.is_some(),
            "distinct new questions must succeed again after the fault, steadily: recovery {} \
             (target {RECOVERY_TARGET:?}), canary after the fault {:?} failed of {}",
            ms(recovered),
            canary_failures(&self.canary_after).0,
            self.canary_after.len()
        );
        assert_eq!(
            self.after.failures(),
            0,
            "after recovery nothing may fail: {failed}"
        );
    }
}
