//! A server in process, driven through the service it runs with `tower::ServiceExt::oneshot` (no
//! sockets), with one API key and one answer already cached: the cheapest request the service
//! serves, as the allocation test and the `cached_answer` benchmark both measure it.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use learning_chat::auth::keys;
use learning_chat::config::{AuthMode, DatabaseUrl, Secret, Settings};
use learning_chat::records::{ConnectOptions, Records};
use learning_chat::serve::AppService;
use std::time::Duration;
use tower::ServiceExt;

/// The question every measured request asks (the wrk benchmarks' body).
pub const QUESTION: &str = r#"{"message": "What is 2+2?"}"#;

/// What the in-process server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `auth.mode = "off"`, memory stores: the defaults.
    Defaults,
    /// Keys required, one key without limits of its own.
    Keys,
    /// Keys required, one key with a requests-per-minute and a tokens-per-day limit.
    KeysWithLimits,
}

/// A server built in process, the service it runs (the chat route's direct dispatch in front
/// of its Router) and the secret of its one key.
pub struct Rig<S> {
    service: S,
    secret: Option<String>,
    _redis_probe: Option<AbortOnDrop>,
    _dir: tempfile::TempDir,
}

/// Stops a background task with the rig.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Rig<()> {
    /// Builds the server for `profile` (on Redis at `redis_url` when given) and asks the
    /// question once, so every later request is a cache hit.
    pub async fn start(profile: Profile, redis_url: Option<&str>) -> Rig<impl AppService> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut settings = Settings::default();
        settings.server.bind = "127.0.0.1:0".parse().expect("an address");
        settings.metrics.bind = "127.0.0.1:0".to_owned();
        settings.offline.latency = Duration::ZERO;
        settings.database.url = DatabaseUrl::new(format!(
            "sqlite://{}",
            dir.path().join("records.db").display()
        ));
        if let Some(url) = redis_url {
            settings.redis.url = Secret::new(url);
        }
        let secret = match profile {
            Profile::Defaults => None,
            Profile::Keys | Profile::KeysWithLimits => {
                settings.auth.mode = AuthMode::Required;
                settings.auth.pepper = Secret::new("allocation-rig-pepper-0123456789");
                Some(add_key(&settings, profile == Profile::KeysWithLimits).await)
            }
        };
        let app = learning_chat::Application::build(settings)
            .await
            .expect("the server builds");
        // The server's Redis probe: what connects to Redis, and says it is up, in a running
        // server (`run_until_stopped` starts it).
        let redis_probe = app.state().redis.as_ref().map(|link| link.start());
        let service = learning_chat::app::service(app.state().clone());

        let rig = Rig {
            service,
            secret,
            _redis_probe: redis_probe.map(AbortOnDrop),
            _dir: dir,
        };
        if redis_url.is_some() {
            rig.wait_for_redis().await;
        }
        let (status, body) = rig.ask().await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let (status, body) = rig.ask().await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            String::from_utf8_lossy(&body).contains(r#""cached":true"#),
            "the second ask is a cache hit"
        );
        rig
    }
}

impl<S: AppService> Rig<S> {
    /// One request as wrk sends it (gzip accepted), built fresh.
    pub fn request(&self) -> Request<Body> {
        let mut request = Request::post("/api/v1/agents/math")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT_ENCODING, "gzip");
        if let Some(secret) = &self.secret {
            request = request.header(header::AUTHORIZATION, format!("Bearer {secret}"));
        }
        request
            .body(Body::from(QUESTION))
            .expect("a well-formed request")
    }

    /// Sends `request` through the router and reads its answer frame by frame, dropping each
    /// as hyper drops what it has written: what the server does for one request, without the
    /// socket. Returns the status.
    pub async fn serve(&self, request: Request<Body>) -> StatusCode {
        use http_body_util::BodyExt;
        let response = self.respond(request).await;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            drop(frame.expect("the body reads"));
        }
        status
    }

    /// Sends `request` through the router and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, axum::body::Bytes) {
        let response = self.respond(request).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads");
        (status, body)
    }

    /// The service's response to `request`.
    async fn respond(&self, request: Request<Body>) -> axum::response::Response {
        self.service
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible")
    }

    /// Waits until the server reaches Redis (`/ready`), so the Redis profiles are counted on
    /// the path that talks to it, not on the one taken while Redis is away.
    async fn wait_for_redis(&self) {
        let guard = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let request = Request::get("/ready")
                .body(Body::empty())
                .expect("a request");
            let (_, body) = self.send(request).await;
            let state: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            if state["redis"] == "up" {
                return;
            }
            assert!(
                std::time::Instant::now() < guard,
                "the server never reached Redis: {state}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the question once.
    pub async fn ask(&self) -> (StatusCode, axum::body::Bytes) {
        self.send(self.request()).await
    }
}

/// Stores a key (as `learning-chat keys create` does) and returns its secret.
async fn add_key(settings: &Settings, limited: bool) -> String {
    let records = Records::connect(&ConnectOptions {
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
    records.migrate().await.expect("migrations apply");
    let secret = keys::generate_secret();
    let mut limits = keys::KeyLimits::default();
    if limited {
        limits.rpm = 1_000_000;
        limits.tokens_per_day = 1_000_000_000;
    }
    let key = keys::ApiKey {
        id: keys::generate_id(),
        name: "allocation rig".into(),
        hash: keys::hash_secret(&settings.auth.pepper, &secret),
        agents: Vec::new(),
        limits,
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
    records
        .create_key(&key, "allocation-rig")
        .await
        .expect("the key is stored");
    records.close().await;
    secret
}
