//! Child processes stopped on drop, and the workspace's built binaries.

use crate::net::{free_port, wait_for_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process stopped on drop (SIGTERM, then SIGKILL) unless it already exited.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// The loopback port it serves.
    pub port: u16,
    /// The port of its metrics listener, for a learning-chat server ([`server_command`]).
    pub metrics_port: Option<u16>,
}

impl Proc {
    /// A process serving `port` (and no metrics listener of its own).
    pub fn new(child: Child, port: u16) -> Proc {
        Proc {
            child,
            port,
            metrics_port: None,
        }
    }

    /// The learning-chat server's metrics listener port (`metrics.bind`).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
            .expect("a learning-chat server started with server_command")
    }

    /// `http://127.0.0.1:<metrics port>`, the base `prom::scrape` takes.
    pub fn metrics_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port())
    }

    /// Sends `signal` (e.g. "-KILL") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _scratch = Scratch(scratch_dir(self.port));
        // SIGTERM first: nginx's master then stops its workers (a SIGKILLed master leaves them
        // running, holding the port); SIGKILL whatever is still there after a moment.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if self.wait_exit(Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The directory holding this workspace's built binaries (learning-chat, gemini-sim, ...): the
/// parent of the `deps` directory the running test binary sits in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    if deps.ends_with("deps") {
        deps.parent().expect("the profile directory").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A workspace binary. `cargo nextest run --workspace` (the README's test command) builds every
/// package's binaries; `-p learning-chat` alone does not build gemini-sim, so it is built here
/// when missing. (Not rebuilt when present: a build of one package resolves features differently
/// from the workspace build and would recompile dependencies for minutes.)
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    let target_dir = dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    path
}

/// The variable [`server_command`] sets to the metrics listener's address.
pub const METRICS_BIND_ENV: &str = "LEARNING_CHAT_METRICS__BIND";

/// A server's own scratch directory (its records database): named by this test process and the
/// server's port, removed when the server's [`Proc`] is dropped.
fn scratch_dir(port: u16) -> PathBuf {
    std::env::temp_dir()
        .join("learning-chat-testkit")
        .join(format!("{}-{port}", std::process::id()))
}

/// Removes a directory when dropped (after the process holding it has stopped).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sqlite://` URL of a records database file in `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("records.db").display())
}

/// `learning-chat serve` on a free port, its metrics listener on another, with an empty
/// environment (only `PATH`, the two addresses, a records database and `RUST_LOG=warn`) and its output discarded; the caller adds settings with `.env(...)` and
/// starts it with [`spawn_server`].
///
/// Each server gets a records database of its own (a SQLite file in a scratch directory
/// removed with its [`Proc`]), so no test writes `./learning-chat.db` or sees another's keys.
/// Servers that must share keys set `LEARNING_CHAT_DATABASE__URL` themselves (one
/// [`sqlite_url`] in a shared temp dir, or a PostgreSQL URL).
pub fn server_command() -> (Command, u16) {
    let port = free_port();
    let metrics_port = free_port();
    let mut command = Command::new(workspace_binary("learning-chat", "learning-chat"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LEARNING_CHAT_BIND", format!("127.0.0.1:{port}"))
        .env(METRICS_BIND_ENV, format!("127.0.0.1:{metrics_port}"))
        .env(
            "LEARNING_CHAT_DATABASE__URL",
            sqlite_url(&scratch_dir(port)),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (command, port)
}

/// Starts a [`server_command`] and waits until it listens.
pub fn spawn_server(mut command: Command, port: u16) -> Proc {
    // The metrics port as the command sets it (a caller may have turned the listener off).
    let metrics_port = command
        .get_envs()
        .find(|(name, _)| *name == METRICS_BIND_ENV)
        .and_then(|(_, value)| value?.to_str()?.rsplit_once(':')?.1.parse().ok());
    let mut child = command.spawn().expect("learning-chat starts");
    let listening = wait_for_port(port, Duration::from_secs(30));
    // Tells a start that failed (a port taken meanwhile, a bad setting) from a slow one.
    let exited = if listening {
        None
    } else {
        child.try_wait().ok().flatten()
    };
    assert!(
        listening,
        "learning-chat did not listen on port {port} within 30 s ({})",
        exited.map_or_else(|| "still running".to_owned(), |s| format!("it exited: {s}"))
    );
    Proc {
        child,
        port,
        metrics_port,
    }
}

/// Whether the tests run as root (nginx then needs `user root;` to read the test's files).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
