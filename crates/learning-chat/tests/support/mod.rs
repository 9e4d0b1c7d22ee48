//! The support module every test binary of the server shares (included with `#[path]` as
//! `pub mod support`, so helpers one binary does not use are not dead code): the service in this
//! process on port 0, talking over real HTTP, plus the workspace's testkit under the names the
//! tests use (`processes`, `cluster`, `redis_ha`, `prom`).

use gemini_sim::SimServer;
use learning_chat::config::Secret;
use learning_chat::{Application, Settings};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use learning_chat_testkit::prom;
pub use learning_chat_testkit::repo::{read, repo, repo_path};
pub use learning_chat_testkit::sim::{fixed_latency, start_sim, start_sim_with_latency};

pub mod cluster;
pub mod logs;
pub mod redis_ha;
pub mod sse;
pub mod webhook;

/// Real helper processes on free loopback ports.
pub mod processes {
    pub use learning_chat_testkit::net::{free_port, wait_for_port};
    pub use learning_chat_testkit::process::bin_dir;
    pub use learning_chat_testkit::redis::RedisProcess;
}

/// Waits until the server at `base` (`http://host:port`) says on `/ready` that Redis is up
/// (at most 30 s).
pub async fn wait_for_redis(client: &reqwest::Client, base: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready: serde_json::Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("/ready answers")
            .json()
            .await
            .expect("/ready is JSON");
        if ready["redis"] == "up" {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "the server never reached Redis: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running service.
pub struct TestApp {
    /// Where it listens (127.0.0.1, port chosen by the OS).
    pub addr: SocketAddr,
    /// Where its metrics listener listens (`metrics.bind`), unless that is off.
    pub metrics_addr: Option<SocketAddr>,
    /// A client with a 60 s timeout, for requests the helpers below do not cover.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    /// The serving task; it ends when the service has drained and stopped.
    pub handle: JoinHandle<anyhow::Result<()>>,
    /// The service's state, for tests that inspect it (e.g. the cache key of a question).
    pub state: learning_chat::AppState,
}

impl TestApp {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `/ready` says Redis is up (at most 30 s).
    pub async fn wait_for_redis(&self) {
        wait_for_redis(&self.client, &self.url("")).await;
    }

    /// `http://metrics_addr/metrics`: the metrics listener's page.
    pub fn metrics_url(&self) -> String {
        let addr = self.metrics_addr.expect("the metrics listener is on");
        format!("http://{addr}/metrics")
    }

    /// `http://metrics_addr`, the base the testkit's `prom::scrape` takes.
    pub fn metrics_base(&self) -> String {
        let addr = self.metrics_addr.expect("the metrics listener is on");
        format!("http://{addr}")
    }

    /// POST /api/v1/agents/{agent} with {"message": message}.
    pub async fn ask(&self, agent: &str, message: impl Into<String>) -> reqwest::Response {
        let message: String = message.into();
        self.client
            .post(self.url(&format!("/api/v1/agents/{agent}")))
            .json(&serde_json::json!({ "message": message }))
            .send()
            .await
            .expect("request reaches the service")
    }

    /// Starts asking in a task of its own, so the test can act while the request is in flight.
    pub fn spawn_ask(
        &self,
        agent: &str,
        message: &str,
    ) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let request = self
            .client
            .post(self.url(&format!("/api/v1/agents/{agent}")))
            .json(&serde_json::json!({ "message": message }));
        tokio::spawn(request.send())
    }

    /// GET `path` and parse the JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the service")
            .json()
            .await
            .expect("a JSON body")
    }

    /// Sends the shutdown signal (like SIGTERM) and waits for the service to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.await.expect("service task")
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Settings for tests: port 0 (metrics too), the offline model, fast and small.
pub fn offline_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.metrics.bind = "127.0.0.1:0".to_owned();
    settings.offline.latency = Duration::ZERO;
    settings.server.shutdown_grace = Duration::from_secs(5);
    settings.database.url = fresh_records_url();
    settings
}

/// A records database of this test alone: a new SQLite file under cargo's temp dir for
/// integration tests (never the default `./learning-chat.db`, which every test would share).
pub fn fresh_records_url() -> learning_chat::config::DatabaseUrl {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("records-{}-{n}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    learning_chat::config::DatabaseUrl::new(format!("sqlite://{}", path.display()))
}

/// Settings pointing at a simulator with a test API key.
pub fn settings_for(sim: &SimServer) -> Settings {
    let mut settings = offline_settings();
    settings.gemini.api_key = Secret::new("test-key");
    settings.gemini.base_url = sim.base_url();
    settings.upstream.retry_base_delay = Duration::from_millis(20);
    settings.upstream.retry_max_delay = Duration::from_millis(100);
    settings
}

/// Requires keys (with `pepper`) from the settings' records database (a fresh one from
/// [`offline_settings`]); add keys with [`add_key`].
pub fn require_keys(settings: &mut Settings, pepper: &str) {
    settings.auth.mode = learning_chat::config::AuthMode::Required;
    settings.auth.pepper = Secret::new(pepper);
}

/// Stores a new key in `settings`' records database (as `learning-chat keys create` does);
/// `edit` sets its fields. Returns its secret.
pub async fn add_key(
    settings: &Settings,
    edit: impl FnOnce(&mut learning_chat::auth::keys::ApiKey),
) -> String {
    use learning_chat::auth::keys;
    let records =
        learning_chat::records::Records::connect(&learning_chat::records::ConnectOptions {
            url: settings
                .database
                .url()
                .expect("a records database")
                .to_owned(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .expect("the records database opens");
    let secret = keys::generate_secret();
    let mut key = keys::ApiKey {
        id: keys::generate_id(),
        name: "test key".into(),
        hash: keys::hash_secret(&settings.auth.pepper, &secret),
        agents: Vec::new(),
        limits: keys::KeyLimits::default(),
        weight: 1,
        require_learner: false,
        created_at: keys::unix_now(),
        last_used_at: None,
        revoked_at: None,
        role: Default::default(),
        policy: None,
        classes: Vec::new(),
        retention_days: None,
        legal_hold: false,
    };
    edit(&mut key);
    assert!(records.create_key(&key, "test").await.expect("key stored"));
    records.close().await;
    secret
}

/// Builds the service from `settings` and runs it in this process until stopped.
pub async fn spawn_app(settings: Settings) -> TestApp {
    let app = Application::build(settings).await.expect("service builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        addr,
        metrics_addr,
        client,
        stop: Some(stop),
        handle,
        state,
    }
}
