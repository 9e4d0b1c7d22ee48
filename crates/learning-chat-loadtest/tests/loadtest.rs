//! Runs the real `learning-chat-loadtest` binary for a few seconds against the learning-chat
//! binary and an in-process gemini-sim (both started by the workspace testkit), and checks its
//! counts against what the simulator saw.
//! No timing is asserted: the machine is shared and noisy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gemini_sim::{Latency, SimConfig, SimServer};
use learning_chat_loadtest::Report;
use learning_chat_testkit::process::{server_command, spawn_server, Proc};
use learning_chat_testkit::sim::start_sim;
use std::path::Path;

/// gemini-sim in this process and the learning-chat binary in front of it.
struct Stack {
    sim: SimServer,
    /// The service's `host:port`.
    service: String,
    server: Proc,
}

async fn start(latency_ms: u64) -> Stack {
    let sim = start_sim(SimConfig {
        latency: if latency_ms == 0 {
            Latency::None
        } else {
            Latency::Fixed { ms: latency_ms }
        },
        ..SimConfig::default()
    })
    .await;
    let (mut command, port) = server_command();
    command
        .env("GEMINI_API_KEY", "loadtest-key")
        .env("GEMINI_BASE_URL", sim.base_url())
        .env("LEARNING_CHAT_UPSTREAM__RPM", "0")
        .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "2000");
    let server = spawn_server(command, port);
    Stack {
        sim,
        service: format!("127.0.0.1:{port}"),
        server,
    }
}

impl Stack {
    async fn stop(self) {
        drop(self.server);
        self.sim.shutdown().await;
    }
}

/// Runs the binary with `args` plus `--summary-json`, returns its report.
async fn loadtest(args: &[String], dir: &Path, name: &str) -> Report {
    let summary = dir.join(format!("{name}.json"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_learning-chat-loadtest"))
        .args(args)
        .arg("--summary-json")
        .arg(&summary)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("learning-chat load test report"),
        "{stdout}"
    );
    serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goose_mode_counts_agree_with_the_simulator() {
    let stack = start(0).await;
    let dir = tempdir();
    let host = format!("http://{}", stack.service);
    let sim = stack.sim.base_url();
    let common = [
        "--host",
        &host,
        "--sim-url",
        &sim,
        "--users",
        "4",
        "--increase-rate",
        "4",
        "--iterations",
        "5",
        "--wait",
        "0",
        "--progress-every",
        "1",
        "--no-print-metrics",
        "--agents",
        "all",
    ];

    // Unique questions: nothing is cacheable, so every request is one upstream call.
    let mut args = strings(&common);
    args.extend(strings(&["--questions", "unique"]));
    let report = loadtest(&args, dir.path(), "unique").await;
    assert_eq!(report.requests, 20, "{report:?}");
    assert_eq!(report.ok, 20, "{report:?}");
    assert_eq!(report.failures, 0);
    assert_eq!(report.cached, 0);
    assert_eq!(report.extra["goose_counted_requests"], 20.0);
    let upstream = report.upstream.clone().unwrap();
    assert_eq!(upstream.requests, report.requests, "{report:?}");
    assert_eq!(upstream.ok, 20);
    assert!(report.latency_ms.p50 <= report.latency_ms.p95);
    assert!(report.latency_ms.p95 <= report.latency_ms.p99);
    assert!(report.latency_ms.p99 <= report.latency_ms.max);

    // One fixed question (the default profile's): one upstream call, every later answer from
    // the cache.
    let mut args = strings(&common);
    args.extend(strings(&["--questions", "fixed", "--agents", "math"]));
    let report = loadtest(&args, dir.path(), "fixed").await;
    assert_eq!(report.requests, 20, "{report:?}");
    assert_eq!(report.ok, 20);
    assert_eq!(report.upstream.clone().unwrap().requests, 1, "{report:?}");
    assert!(report.cached >= 1 && report.cached < 20, "{report:?}");
    assert!((report.cache_hit_ratio - report.cached as f64 / 20.0).abs() < 1e-9);

    // Conversation mode: each user holds conversations of 3 questions, the last two sent as
    // follow-ups in the conversation the first one started.
    let mut args = strings(&common);
    args.extend(strings(&[
        "--questions",
        "unique",
        "--conversation",
        "3",
        "--iterations",
        "6",
    ]));
    let report = loadtest(&args, dir.path(), "conversation").await;
    assert_eq!(report.requests, 24, "{report:?}");
    assert_eq!(report.ok, 24, "{report:?}");
    assert_eq!(report.extra["conversations_started"], 8.0, "{report:?}");
    assert_eq!(report.extra["follow_ups"], 16.0, "{report:?}");
    assert_eq!(report.extra["follow_ups_ok"], 16.0, "{report:?}");
    // Every first question is unique; a follow-up may share an answer with another
    // conversation only when the whole history matches, which unique first questions rule out.
    assert_eq!(report.upstream.clone().unwrap().requests, 24, "{report:?}");
    assert_eq!(report.extra["model_calls_per_answer"], 1.0);

    // Zipf over the bank: upstream calls are the distinct questions, never more than requests.
    let mut args = strings(&common);
    args.extend(strings(&["--questions", "zipf"]));
    let report = loadtest(&args, dir.path(), "zipf").await;
    assert_eq!(report.ok, 20);
    let upstream = report.upstream.clone().unwrap().requests;
    assert!(
        upstream >= 1 && upstream + report.cached <= 20,
        "{report:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_open_loop_modes() {
    // A latency long enough that the burst's requests overlap on the upstream call.
    let stack = start(300).await;
    let dir = tempdir();
    let url = format!("http://{}", stack.service);
    let sim = stack.sim.base_url();

    let report = loadtest(
        &strings(&["burst", "--url", &url, "--sim-url", &sim, "--count", "25"]),
        dir.path(),
        "burst",
    )
    .await;
    assert_eq!(report.requests, 25, "{report:?}");
    assert_eq!(report.ok, 25);
    // Identical new questions in flight together share one model call.
    assert_eq!(report.upstream.clone().unwrap().requests, 1, "{report:?}");

    let report = loadtest(
        &strings(&[
            "open-loop",
            "--url",
            &url,
            "--sim-url",
            &sim,
            "--rate",
            "40",
            "--duration",
            "1",
            "--questions",
            "unique",
            "--progress-every",
            "0",
        ]),
        dir.path(),
        "open-loop",
    )
    .await;
    assert_eq!(report.requests, 40, "{report:?}");
    assert_eq!(report.ok, 40);
    assert_eq!(report.upstream.clone().unwrap().requests, 40, "{report:?}");

    // Straight to the simulator, as benchmark 4 does for its baseline.
    let report = loadtest(
        &strings(&[
            "open-loop",
            "--url",
            &sim,
            "--target",
            "gemini",
            "--rate",
            "20",
            "--duration",
            "1",
            "--progress-every",
            "0",
        ]),
        dir.path(),
        "gemini",
    )
    .await;
    assert_eq!(report.requests, 20, "{report:?}");
    assert_eq!(report.ok, 20, "{report:?}");
    stack.stop().await;
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "learning-chat-loadtest-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
