//! The multi-server topology with real processes on free loopback ports: redis-server,
//! gemini-sim, three learning-chat servers and nginx running deploy/nginx/learning-chat.conf.

use futures::future::join_all;
use gemini_sim::{Stats, Timeline};
use learning_chat_testkit::process::{server_command, spawn_server};
use learning_chat_testkit::redis::RedisProcess;
use learning_chat_testkit::sim::spawn_sim_process;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use learning_chat_testkit::nginx::start_nginx;
pub use learning_chat_testkit::process::{workspace_binary, Proc};

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
    /// The records database the three servers share (a SQLite file in the cluster's
    /// directory unless `server_env` names another): where `learning-chat keys` writes.
    pub database_url: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(config: ClusterConfig) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess::start();
        let sim = spawn_sim_process(&config.sim_args);
        let sim_port = sim.port;
        let database_url = config
            .server_env
            .iter()
            .find(|(k, _)| k == "LEARNING_CHAT_DATABASE__URL")
            .map_or_else(
                || learning_chat_testkit::process::sqlite_url(dir.path()),
                |(_, v)| v.clone(),
            );
        let mut servers = Vec::new();
        for n in 0..3 {
            let (mut command, port) = server_command();
            if config.capture_logs {
                let log = std::fs::File::create(dir.path().join(format!("server{n}.log")))
                    .expect("server log file");
                let err = log.try_clone().expect("server log file");
                command.stdout(Stdio::from(log)).stderr(Stdio::from(err));
            }
            command
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
                .env("LEARNING_CHAT_DATABASE__URL", &database_url)
                .envs(config.server_env.iter().map(|(k, v)| (k, v)));
            servers.push(spawn_server(command, port));
        }
        let nginx = start_nginx(dir.path(), &servers);
        let http = learning_chat_testkit::http::client_builder()
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
            database_url,
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

    /// The sum of one metric's series on one server's own /metrics, keeping only the series
    /// whose labels contain `label` (`""` keeps them all).
    pub async fn metric_sum(&self, port: u16, name: &str, label: &str) -> f64 {
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
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Chat requests a server has answered, from its own /metrics.
    pub async fn chat_requests_served(&self, port: u16) -> f64 {
        self.metric_sum(
            port,
            "learning_chat_http_requests_total",
            r#"route="/api/v1/agents/{agent_id}""#,
        )
        .await
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
