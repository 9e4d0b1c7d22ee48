//! API keys, per-key limits and fair sharing, against real processes: redis-server, gemini-sim,
//! three learning-chat servers with `auth.mode = "required"` and the shipped nginx config. Keys are
//! made with the real `learning-chat keys` subcommand against the records database the servers
//! share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::cluster::{Cluster, ClusterConfig};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const PEPPER: &str = "test-pepper-0123456789abcdef";

pub fn auth_env() -> Vec<(String, String)> {
    vec![
        ("LEARNING_CHAT_AUTH__MODE".into(), "required".into()),
        ("LEARNING_CHAT_AUTH__PEPPER".into(), PEPPER.into()),
    ]
}

/// Runs `learning-chat keys ...` against the servers' records database; returns stdout.
pub fn keys_cli(cluster: &Cluster, args: &[&str]) -> String {
    keys_cli_on(&cluster.database_url, args)
}

/// Runs `learning-chat keys ...` against the records database at `database_url`; returns
/// stdout.
pub fn keys_cli_on(database_url: &str, args: &[&str]) -> String {
    let output = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_learning-chat")))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LEARNING_CHAT_DATABASE__URL", database_url)
        .env("LEARNING_CHAT_AUTH__MODE", "required")
        .env("LEARNING_CHAT_AUTH__PEPPER", PEPPER)
        .output()
        .expect("learning-chat keys runs");
    assert!(
        output.status.success(),
        "keys {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Creates a key and waits (at most 5 s) until every server of the cluster holds it; returns
/// (id, secret).
pub async fn create_key(cluster: &Cluster, args: &[&str]) -> (String, String) {
    let (id, secret) = create_key_on(&cluster.database_url, args);
    for server in &cluster.servers {
        wait_for_key(&cluster.http, server.port, &secret, StatusCode::OK).await;
    }
    (id, secret)
}

/// Polls `GET /api/v1/agents` on the server at `port` with `secret` until it answers `want`
/// (a new key appears, a revoked key is refused), for at most 5 s; returns how many polls it
/// took.
pub async fn wait_for_key(
    http: &reqwest::Client,
    port: u16,
    secret: &str,
    want: StatusCode,
) -> usize {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut polls = 0;
    loop {
        polls += 1;
        let status = http
            .get(format!("http://127.0.0.1:{port}/api/v1/agents"))
            .bearer_auth(secret)
            .send()
            .await
            .expect("the server answers")
            .status();
        if status == want {
            return polls;
        }
        assert!(
            std::time::Instant::now() < until,
            "server on port {port} still answers {status} (want {want}) after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a key in the records database at `database_url`; returns (id, secret).
pub fn create_key_on(database_url: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = keys_cli_on(database_url, &all);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    (field("id:"), field("secret:"))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

pub async fn ask(
    cluster: &Cluster,
    url: String,
    secret: Option<&str>,
    extra: &[(&str, &str)],
    message: String,
) -> Reply {
    let mut request = cluster
        .http
        .post(url)
        .json(&serde_json::json!({ "message": message }));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let reply = request.send().await.expect("the server answers");
    let status = reply.status();
    let headers = reply.headers().clone();
    let body = reply.json::<Value>().await.unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

pub fn server_url(cluster: &Cluster, n: usize, agent: &str) -> String {
    format!(
        "http://127.0.0.1:{}/api/v1/agents/{agent}",
        cluster.servers[n].port
    )
}

/// Waits until at least `margin` is left of the current minute, so per-minute counts in one
/// test fall in one window (Redis and this process share the machine's clock).
pub async fn away_from_minute_end(margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
    if Duration::from_secs(60) - into < margin {
        tokio::time::sleep(Duration::from_secs(60) - into + Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_key_made_on_the_cli_works_on_every_server_and_revocation_reaches_all_within_the_refresh()
{
    let cluster = Cluster::start(ClusterConfig {
        server_env: [
            auth_env(),
            vec![("RUST_LOG".into(), "debug,hyper=info,h2=info".into())],
        ]
        .concat(),
        capture_logs: true,
        ..ClusterConfig::default()
    })
    .await;
    // No key, a wrong key: 401 with a challenge, in the service's error shape.
    let missing = ask(
        &cluster,
        cluster.nginx_url("/api/v1/agents/math"),
        None,
        &[],
        "q0".into(),
    )
    .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body["error"]["code"], "missing_api_key");
    assert!(missing.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let wrong = ask(
        &cluster,
        cluster.nginx_url("/api/v1/agents/math"),
        Some("lc_not-a-real-key-but-long-enough-to-look-like-one"),
        &[],
        "q0".into(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body["error"]["code"], "invalid_api_key");

    let (id, secret) = create_key(
        &cluster,
        &["--name", "class 7b", "--agents", "math,science"],
    )
    .await;
    assert!(secret.starts_with("lc_") && secret.len() >= 35, "{secret}");
    // Every server holds it within `database.key_refresh_ms` (1 s; create_key waited for
    // that), the one that just refused an unknown key included.
    for n in 0..3 {
        let reply = ask(
            &cluster,
            server_url(&cluster, n, "math"),
            Some(&secret),
            &[],
            format!("first question {n}"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "server {n}: {}", reply.body);
    }
    // x-api-key works too; an agent outside the key's list is 403.
    let via_header = ask(
        &cluster,
        cluster.nginx_url("/api/v1/agents/science"),
        None,
        &[("x-api-key", &secret)],
        "q1".into(),
    )
    .await;
    assert_eq!(via_header.status, StatusCode::OK);
    let other_agent = ask(
        &cluster,
        cluster.nginx_url("/api/v1/agents/writing"),
        Some(&secret),
        &[],
        "q2".into(),
    )
    .await;
    assert_eq!(other_agent.status, StatusCode::FORBIDDEN);
    assert_eq!(other_agent.body["error"]["code"], "agent_not_allowed");
    // Health and metrics need no key.
    let health = cluster
        .http
        .get(cluster.nginx_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let list = keys_cli(&cluster, &["list"]);
    assert!(list.lines().any(|l| l.starts_with(&id)), "{list}");
    assert!(!list.contains(&secret));

    keys_cli(&cluster, &["revoke", &id]);
    // Every server reads changed keys every `database.key_refresh_ms` (1 s).
    for server in &cluster.servers {
        wait_for_key(&cluster.http, server.port, &secret, StatusCode::FORBIDDEN).await;
    }
    for n in 0..3 {
        let reply = ask(
            &cluster,
            server_url(&cluster, n, "math"),
            Some(&secret),
            &[],
            format!("after revoke {n}"),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "server {n}: {}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "api_key_revoked");
        assert!(reply.headers.contains_key("www-authenticate"));
    }
    let show = keys_cli(&cluster, &["show", &id]);
    assert!(show.contains("revoked"), "{show}");

    // The secret (and the pepper) appear in no log line, at debug level, nor in /metrics.
    let logs = cluster.logs();
    assert!(
        logs.len() > 1000,
        "logs were not captured: {} bytes",
        logs.len()
    );
    assert!(logs.contains(&id), "the key id should be loggable context");
    let body = &secret["lc_".len()..];
    assert!(!logs.contains(body), "a secret was logged");
    assert!(!logs.contains(PEPPER), "the pepper was logged");
    for server in &cluster.servers {
        let metrics = cluster
            .http
            .get(format!("{}/metrics", server.metrics_base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!metrics.contains(body));
        assert!(
            metrics.contains(&format!("key=\"{id}\"")),
            "per-key metrics missing"
        );
    }
}

/// A conversation belongs to the key that started it: another key gets 404 for it on every
/// server (follow-up, GET and DELETE), and the owner keeps using it.
#[tokio::test]
async fn a_conversation_belongs_to_the_key_that_started_it() {
    let cluster = Cluster::start(ClusterConfig {
        server_env: auth_env(),
        ..ClusterConfig::default()
    })
    .await;
    let (_, owner) = create_key(&cluster, &["--name", "class a"]).await;
    let (_, other) = create_key(&cluster, &["--name", "class b"]).await;
    let first = ask(
        &cluster,
        cluster.nginx_url("/api/v1/agents/math"),
        Some(&owner),
        &[],
        "What is a derivative?".into(),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let id = first.body["conversation_id"].as_str().unwrap().to_owned();
    let follow_up = |secret: String, n: usize| {
        let request = cluster
            .http
            .post(server_url(&cluster, n, "math"))
            .bearer_auth(secret)
            .json(&serde_json::json!({"message": "Show me an example", "conversation_id": id}));
        async move { request.send().await.unwrap() }
    };
    let conversation_url = |n: usize| {
        format!(
            "http://127.0.0.1:{}/api/v1/conversations/{id}",
            cluster.servers[n].port
        )
    };
    for n in 0..cluster.servers.len() {
        let reply = follow_up(other.clone(), n).await;
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "server {n}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_conversation");
        let read = cluster
            .http
            .get(conversation_url(n))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::NOT_FOUND, "server {n}");
        let erase = cluster
            .http
            .delete(conversation_url(n))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(erase.status(), StatusCode::NOT_FOUND, "server {n}");
    }
    // The owner's conversation is untouched and continues on any server.
    let reply = follow_up(owner.clone(), 1).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["conversation_id"], id.as_str());
    assert_eq!(body["turn"], 2);
    let read: Value = cluster
        .http
        .get(conversation_url(2))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["turns"].as_array().unwrap().len(), 4);
}
