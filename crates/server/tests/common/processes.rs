//! Real helper processes on free loopback ports: redis-server (and, for the cluster test, nginx).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on the port.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private redis-server, killed on drop.
pub struct RedisProcess {
    pub port: u16,
    // Behind a mutex so a test can kill and restart it while others only read `port`.
    child: std::sync::Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts redis-server on a free port with no persistence.
    pub fn start() -> RedisProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess {
            port: free_port(),
            child: std::sync::Mutex::new(None),
            dir,
        };
        redis.restart();
        redis
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh checks it)");
        *self.child.lock().unwrap() = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not start"
        );
    }

    /// Kills the server (SIGKILL: an outage, not a clean stop).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Unfreezes it (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
            assert!(status.is_ok_and(|s| s.success()));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a redis-cli command against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// The directory holding this workspace's built binaries (learning-chat, gemini-sim, ...).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_learning-chat"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}
