//! The multi-server topology with real processes on free loopback ports: redis-server,
//! gemini-sim, three learning-chat servers and nginx running deploy/nginx/learning-chat.conf.
#![allow(dead_code)]

use super::processes::{bin_dir, free_port, wait_for_port, RedisProcess};
use futures::future::join_all;
use gemini_sim::{Stats, Timeline};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A child process stopped on drop (SIGTERM, then SIGKILL) unless it already exited.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
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

/// Settings of one cluster run.
pub struct ClusterConfig {
    pub sim_args: Vec<String>,
    pub rpm: u32,
    pub request_timeout_secs: u64,
    /// Extra environment of every learning-chat server (settings overrides).
    pub server_env: Vec<(String, String)>,
    /// Write each server's stdout and stderr to `server<N>.log` in the cluster's directory
    /// (read with [`Cluster::logs`]) instead of discarding them.
    pub capture_logs: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            sim_args: vec!["--latency-ms".into(), "100".into()],
            rpm: 0,
            request_timeout_secs: 30,
            server_env: Vec::new(),
            capture_logs: false,
        }
    }
}

/// redis-server, gemini-sim, three learning-chat servers and nginx, stopped on drop.
pub struct Cluster {
    pub nginx: Proc,
    pub servers: Vec<Proc>,
    pub sim: Proc,
    pub redis: RedisProcess,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(config: ClusterConfig) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess::start();
        let sim_port = free_port();
        let sim = Proc {
            child: Command::new(workspace_binary("gemini-sim", "gemini-sim"))
                .args(["--bind", &format!("127.0.0.1:{sim_port}")])
                .args(&config.sim_args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gemini-sim starts"),
            port: sim_port,
        };
        assert!(
            wait_for_port(sim_port, Duration::from_secs(20)),
            "gemini-sim did not listen"
        );
        let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_learning-chat"));
        let mut servers = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let (stdout, stderr) = if config.capture_logs {
                let log = std::fs::File::create(dir.path().join(format!("server{n}.log")))
                    .expect("server log file");
                let err = log.try_clone().expect("server log file");
                (Stdio::from(log), Stdio::from(err))
            } else {
                (Stdio::null(), Stdio::null())
            };
            let child = Command::new(&server_bin)
                .arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("LEARNING_CHAT_BIND", format!("127.0.0.1:{port}"))
                .env("GEMINI_API_KEY", "cluster-test-key")
                .env("GEMINI_BASE_URL", format!("http://127.0.0.1:{sim_port}"))
                .env("REDIS_URL", redis.url())
                .env("LEARNING_CHAT_REDIS__REPLICAS", "3")
                .env("LEARNING_CHAT_UPSTREAM__RPM", config.rpm.to_string())
                .env(
                    "LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS",
                    (config.request_timeout_secs * 1000).to_string(),
                )
                .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "10000")
                .env("RUST_LOG", "warn")
                .envs(config.server_env.iter().map(|(k, v)| (k, v)))
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .expect("learning-chat starts");
            servers.push(Proc { child, port });
        }
        let nginx = start_nginx(dir.path(), &servers);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let cluster = Cluster {
            nginx,
            servers,
            sim,
            redis,
            http,
            _dir: dir,
        };
        for server in &cluster.servers {
            cluster.wait_redis_state(server.port, "up").await;
        }
        cluster
    }

    /// Everything the servers logged (with `capture_logs`) and nginx's access and error logs.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "server0.log",
            "server1.log",
            "server2.log",
            "access.log",
            "error.log",
        ] {
            all.push_str(&std::fs::read_to_string(self._dir.path().join(name)).unwrap_or_default());
        }
        all
    }

    /// The cluster's scratch directory.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn nginx_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nginx.port)
    }

    pub async fn ask(&self, agent: &str, message: String) -> StatusCode {
        match self
            .http
            .post(self.nginx_url(&format!("/api/v1/agents/{agent}")))
            .json(&serde_json::json!({ "message": message }))
            .send()
            .await
        {
            Ok(reply) => {
                let status = reply.status();
                // Read the body: a request only counts as served when the whole answer arrived.
                match reply.json::<Value>().await {
                    Ok(body) if status != StatusCode::OK || body["response"].is_string() => status,
                    _ => StatusCode::BAD_GATEWAY,
                }
            }
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub async fn sim_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("http://127.0.0.1:{}{path}", self.sim.port))
            .send()
            .await
            .expect("simulator answers")
            .json()
            .await
            .expect("simulator JSON")
    }

    pub async fn sim_stats(&self) -> Stats {
        self.sim_json("/stats").await
    }

    pub async fn sim_timeline(&self) -> Timeline {
        self.sim_json("/stats/timeline").await
    }

    /// Chat requests a server has answered, from its own /metrics.
    pub async fn chat_requests_served(&self, port: u16) -> f64 {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with("learning_chat_http_requests_total{"))
            .filter(|l| l.contains(r#"route="/api/v1/agents/{agent_id}""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn wait_redis_state(&self, port: u16, want: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .http
                .get(format!("http://127.0.0.1:{port}/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(reply) = ready {
                if let Ok(body) = reply.json::<Value>().await {
                    if body["redis"] == want {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < until,
                "server {port} never reported redis {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `workers` clients each asking distinct questions back to back for `duration`, running
    /// `during` meanwhile; returns every status seen.
    pub async fn load_while<F, Fut>(
        &self,
        workers: usize,
        duration: Duration,
        during: F,
    ) -> Vec<StatusCode>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let counter = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + duration;
        let load = join_all((0..workers).map(|_| {
            let counter = counter.clone();
            async move {
                let mut statuses = Vec::new();
                // Bounded in time and in count.
                while Instant::now() < until && statuses.len() < 10_000 {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    statuses.push(self.ask("science", format!("load question {n}")).await);
                }
                statuses
            }
        }));
        let (statuses, ()) = tokio::join!(load, during());
        statuses.into_iter().flatten().collect()
    }
}

/// Runs nginx with deploy/nginx/learning-chat.conf, only the server lines and port replaced.
pub fn start_nginx(dir: &Path, servers: &[Proc]) -> Proc {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/learning-chat.conf"),
    )
    .expect("deploy/nginx/learning-chat.conf");
    let port = free_port();
    let mut site = String::new();
    let mut replaced_servers = false;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server app") {
            if !replaced_servers {
                for server in servers {
                    site.push_str(&format!(
                        "    server 127.0.0.1:{} max_fails=3 fail_timeout=10s;\n",
                        server.port
                    ));
                }
                replaced_servers = true;
            }
        } else if trimmed.starts_with("listen ") {
            site.push_str(&format!("    listen 127.0.0.1:{port};\n"));
        } else if trimmed.starts_with("access_log /var/log") {
            site.push_str(&format!(
                "    access_log {}/access.log learning_chat;\n",
                dir.display()
            ));
        } else {
            site.push_str(line);
            site.push('\n');
        }
    }
    assert!(
        replaced_servers,
        "the shipped config has no `server appN` lines any more"
    );
    let user = if nix_is_root() { "user root;\n" } else { "" };
    let main = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}}}\n",
        d = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    let nginx_bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx is required: run ./scripts/test.sh, which installs it");
    let check = Command::new(nginx_bin)
        .args(["-t", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx -t");
    assert!(
        check.status.success(),
        "nginx rejects the generated config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(nginx_bin)
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "nginx did not listen"
    );
    Proc { child, port }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
