//! gemini-sim in this process (for in-process tests) or as its own binary.

use crate::net::{free_port, wait_for_port};
use crate::process::{workspace_binary, Proc};
use gemini_sim::{SimConfig, SimServer};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The simulator in this process on a free port.
pub async fn start_sim(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("simulator starts")
}

/// A default simulator whose answers take `ms` milliseconds.
pub async fn start_sim_with_latency(ms: u64) -> SimServer {
    start_sim(SimConfig {
        latency: fixed_latency(ms),
        ..SimConfig::default()
    })
    .await
}

/// A simulator latency of a fixed number of milliseconds.
pub fn fixed_latency(ms: u64) -> gemini_sim::Latency {
    gemini_sim::Latency::Fixed { ms }
}

/// The gemini-sim binary on a free port with `args` (e.g. `--latency-ms 100`), output discarded.
pub fn spawn_sim_process<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
    let port = free_port();
    let child = Command::new(workspace_binary("gemini-sim", "gemini-sim"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gemini-sim starts");
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "gemini-sim did not listen"
    );
    Proc::new(child, port)
}
