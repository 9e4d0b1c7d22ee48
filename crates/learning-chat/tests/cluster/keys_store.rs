//! API keys in the records database, against real processes (learning-chat servers, redis-server,
//! PostgreSQL, the `keys` and `migrate-keys` commands): Redis is out of the key path (a revocation
//! reaches every server with Redis dead; FLUSHALL and a full `allkeys-lru` Redis lose no key),
//! an unknown key never reads the store, a PostgreSQL outage under load refuses no known key and
//! loses no usage, and keys move over once from the old Redis and file stores.

use super::auth::{create_key_on, keys_cli_on, wait_for_key, PEPPER};
use crate::support::cluster::Proc;
use crate::support::prom::{delta, scrape};
use futures::future::join_all;
use learning_chat::records::{ConnectOptions, Records};
use learning_chat_testkit::postgres::PostgresProcess;
use learning_chat_testkit::process::{server_command, spawn_server, sqlite_url};
use learning_chat_testkit::redis::RedisProcess;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A learning-chat server answering from the offline model with keys required from the records
/// database at `database_url`; `env` adds settings; its log goes to `log` when given.
fn start_server(database_url: &str, env: &[(&str, &str)], log: Option<&Path>) -> Proc {
    let (mut command, port) = server_command();
    command
        .env("LEARNING_CHAT_AUTH__MODE", "required")
        .env("LEARNING_CHAT_AUTH__PEPPER", PEPPER)
        .env("LEARNING_CHAT_DATABASE__URL", database_url)
        .env("LEARNING_CHAT_OFFLINE__LATENCY_MS", "0")
        .env("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS", "5000");
    for (key, value) in env {
        command.env(key, value);
    }
    if let Some(log) = log {
        let file = std::fs::File::create(log).expect("log file");
        command
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file));
    }
    spawn_server(command, port)
}

fn http() -> reqwest::Client {
    learning_chat_testkit::http::client_builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

fn base(server: &Proc) -> String {
    format!("http://127.0.0.1:{}", server.port)
}

/// Asks `message` on `server` with `secret`; returns the status.
async fn ask(http: &reqwest::Client, server: &Proc, secret: &str, message: &str) -> StatusCode {
    http.post(format!("{}/api/v1/agents/math", base(server)))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "message": message }))
        .send()
        .await
        .expect("the server answers")
        .status()
}

/// The `calls` of one command in redis `INFO commandstats` (0 when never run).
fn redis_calls(redis: &RedisProcess, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A records handle on `url` from the test process.
async fn records(url: &str) -> Records {
    Records::connect(&ConnectOptions {
        url: url.to_owned(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .expect("the records database opens")
}

/// Requests the ledger holds for `key_id` (every day, every learner).
async fn ledger_requests(records: &Records, key_id: &str) -> u64 {
    records
        .key_usage(key_id, "1970-01-01")
        .await
        .expect("the ledger reads")
        .iter()
        .map(|d| d.usage.requests)
        .sum()
}

#[tokio::test]
async fn a_revocation_reaches_a_second_server_with_redis_dead() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let redis = RedisProcess::start();
    let servers: Vec<Proc> = (0..2)
        .map(|_| start_server(&database, &[("REDIS_URL", &redis.url())], None))
        .collect();
    let http = http();
    let (id, secret) = create_key_on(&database, &["--name", "class 9"]);
    for server in &servers {
        wait_for_key(&http, server.port, &secret, StatusCode::OK).await;
        assert_eq!(
            ask(&http, server, &secret, "What is 2+2?").await,
            StatusCode::OK
        );
    }
    redis.kill();
    // Still answering with Redis gone (limits and cache fall back to the process).
    assert_eq!(
        ask(&http, &servers[1], &secret, "What is 3+3?").await,
        StatusCode::OK
    );
    keys_cli_on(&database, &["revoke", &id]);
    // Both servers refuse it within the 5 s bound (the refresh is every second).
    for server in &servers {
        wait_for_key(&http, server.port, &secret, StatusCode::FORBIDDEN).await;
    }
    let reply: serde_json::Value = http
        .post(format!("{}/api/v1/agents/math", base(&servers[1])))
        .bearer_auth(&secret)
        .json(&serde_json::json!({ "message": "What is 4+4?" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "api_key_revoked");
    // Both changes are in the audit log, by the CLI.
    let audit = keys_cli_on(&database, &["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    assert!(
        lines[0].contains("\tcli\tkey.revoked\t") && lines[0].contains(&id),
        "{audit}"
    );
    assert!(
        lines[1].contains("\tcli\tkey.created\t") && lines[1].contains(&id),
        "{audit}"
    );
}

#[tokio::test]
async fn a_key_keeps_working_after_flushall_and_in_a_full_allkeys_lru_redis() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let redis = RedisProcess::start();
    redis.cli(&["CONFIG", "SET", "maxmemory", "20mb"]);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let server = start_server(&database, &[("REDIS_URL", &redis.url())], None);
    let http = http();
    let (_, secret) = create_key_on(&database, &["--name", "flushed"]);
    wait_for_key(&http, server.port, &secret, StatusCode::OK).await;
    redis.cli(&["FLUSHALL"]);
    assert_eq!(
        ask(&http, &server, &secret, "after flushall").await,
        StatusCode::OK
    );
    // Flood Redis far past its 20 MB with values of 64 KiB: the LRU evicts at will.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let blob = "x".repeat(64 * 1024);
    for batch in 0..10 {
        let mut pipe = redis::pipe();
        for n in 0..100 {
            pipe.set(format!("flood:{batch}:{n}"), &blob).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        // Asked in between, so the key is used while Redis evicts.
        assert_eq!(
            ask(&http, &server, &secret, &format!("during flood {batch}")).await,
            StatusCode::OK
        );
    }
    let evicted: u64 = redis
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "the flood should have made Redis evict");
    for n in 0..5 {
        assert_eq!(
            ask(&http, &server, &secret, &format!("after flood {n}")).await,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn unknown_keys_are_refused_without_reading_any_store_and_logged_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let redis = RedisProcess::start();
    let log = dir.path().join("server.log");
    // Made before the server starts, so its first (whole) read holds it.
    let (_, known) = create_key_on(&database, &["--name", "known"]);
    // A slow refresh, so no poll falls inside the measured window.
    let server = start_server(
        &database,
        &[
            ("REDIS_URL", &redis.url()),
            ("LEARNING_CHAT_DATABASE__KEY_REFRESH_MS", "60000"),
            ("RUST_LOG", "info"),
        ],
        Some(&log),
    );
    let http = http();
    assert_eq!(ask(&http, &server, &known, "control").await, StatusCode::OK);
    let before = scrape(&http, &server.metrics_base()).await;
    let gets_before = redis_calls(&redis, "get");
    let started = Instant::now();
    let statuses = join_all((0..300).map(|n| {
        let http = http.clone();
        let url = format!("{}/api/v1/agents/math", base(&server));
        async move {
            let secret = format!("lc_random-unknown-key-{n:04}-{}", "z".repeat(30));
            http.post(url)
                .bearer_auth(secret)
                .json(&serde_json::json!({ "message": "hi" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    }))
    .await;
    let elapsed = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let after = scrape(&http, &server.metrics_base()).await;
    // No read of the key table, and no Redis lookup, for any of them.
    assert_eq!(
        delta(&before, &after, "learning_chat_auth_key_reads_total", &[]),
        0.0
    );
    assert_eq!(redis_calls(&redis, "get"), gets_before);
    assert_eq!(
        delta(
            &before,
            &after,
            "learning_chat_auth_failures_total",
            &[("reason", "unknown")]
        ),
        300.0
    );
    // The refusals are logged at most once a second, with counts.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.contains("API key checks refused"))
        .count();
    assert!(lines >= 1, "no refusal line in the log");
    assert!(
        lines as u64 <= elapsed.as_secs() + 1,
        "{lines} refusal lines in {elapsed:?}"
    );
}

#[tokio::test]
async fn postgres_killed_and_restarted_under_load_refuses_no_known_key_and_loses_no_usage() {
    let postgres = PostgresProcess::start();
    let database = postgres.fresh_database();
    let env = [
        ("LEARNING_CHAT_DATABASE__ACQUIRE_TIMEOUT_MS", "300"),
        ("LEARNING_CHAT_DATABASE__LEDGER_FLUSH_MS", "200"),
    ];
    let servers: Vec<Proc> = (0..2)
        .map(|_| start_server(&database, &env, None))
        .collect();
    let servers = Arc::new(servers);
    let http = http();
    let (id, secret) = create_key_on(&database, &["--name", "under load"]);
    for server in servers.iter() {
        wait_for_key(&http, server.port, &secret, StatusCode::OK).await;
    }
    // Load: 8 workers, each a bounded number of requests, phases marked by a shared counter.
    let phase = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let refused = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (http, servers, secret) = (http.clone(), servers.clone(), secret.clone());
            let (phase, answered, refused) = (phase.clone(), answered.clone(), refused.clone());
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(60);
                let mut n = 0usize;
                while phase.load(Ordering::SeqCst) < 3 && Instant::now() < until && n < 20_000 {
                    n += 1;
                    let p = phase.load(Ordering::SeqCst);
                    let status = ask(
                        &http,
                        &servers[(w + n) % 2],
                        &secret,
                        &format!("question {}", n % 5),
                    )
                    .await;
                    if status == StatusCode::OK {
                        answered[p.min(2)].fetch_add(1, Ordering::SeqCst);
                    } else {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let wait_answers = |phase_index: usize, at_least: usize| {
        let answered = answered.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(20);
            while answered[phase_index].load(Ordering::SeqCst) < at_least {
                assert!(
                    Instant::now() < until,
                    "the load stalled in phase {phase_index}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let load_started = Instant::now();
    wait_answers(0, 300).await;
    postgres.kill();
    phase.store(1, Ordering::SeqCst);
    let before_kill = answered[0].load(Ordering::SeqCst) as u64;
    // One second's worth of answers at the rate of the first phase (its duration includes the
    // kill, so this errs high: a tolerance, not a claim about speed).
    let per_second = (before_kill as f64 / load_started.elapsed().as_secs_f64()).ceil() as u64;
    // Known keys keep working while PostgreSQL is down.
    wait_answers(1, 300).await;
    postgres.restart();
    // A key made after the restart reaches both servers.
    let (_, fresh) = create_key_on(&database, &["--name", "after the outage"]);
    for server in servers.iter() {
        wait_for_key(&http, server.port, &fresh, StatusCode::OK).await;
    }
    phase.store(2, Ordering::SeqCst);
    wait_answers(2, 100).await;
    phase.store(3, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(refused.load(Ordering::SeqCst), 0, "a known key was refused");
    // What was answered before the kill is in the ledger once PostgreSQL is back (less at
    // most one second's worth, were a flush lost).
    let records = records(&database).await;
    let until = Instant::now() + Duration::from_secs(10);
    while ledger_requests(&records, &id).await + per_second < before_kill {
        assert!(Instant::now() < until, "the ledger never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A graceful stop writes the rest: no answer lost. (A batch whose commit reached
    // PostgreSQL just as it was killed may be counted twice: at most one flush's worth.)
    let total = answered
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .sum::<usize>() as u64;
    let servers = Arc::into_inner(servers).expect("the workers are done");
    for mut server in servers {
        server.signal("-TERM");
        assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    }
    let counted = ledger_requests(&records, &id).await;
    assert!(
        counted >= total && counted <= total + per_second,
        "ledger {counted}, answered {total}"
    );
    let usage = keys_cli_on(&database, &["usage", &id]);
    assert!(
        usage
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(&format!("\t{counted}\t"))),
        "{usage}"
    );
}

/// Runs `learning-chat migrate-keys` with `args` against `database_url`; returns stdout.
fn migrate_keys(database_url: &str, args: &[&str]) -> String {
    let output = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_learning-chat")))
        .arg("migrate-keys")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LEARNING_CHAT_DATABASE__URL", database_url)
        .output()
        .expect("learning-chat migrate-keys runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "migrate-keys {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An old key record, as the old stores wrote it (JSON in Redis, TOML in the file).
fn old_record(id: &str, name: &str, secret: &str, revoked: bool) -> serde_json::Value {
    let pepper = learning_chat::config::Secret::new(PEPPER);
    let mut record = serde_json::json!({
        "id": id,
        "name": name,
        "hash": learning_chat::auth::keys::hash_secret(&pepper, secret),
        "agents": ["math"],
        "limits": {"rpm": 0, "tokens_per_day": 0, "concurrency": 0, "learner_rpm": 3, "learner_tokens_per_day": 0},
        "weight": 2,
        "created_at": 1_700_000_000u64,
    });
    if revoked {
        record["revoked_at"] = serde_json::json!(1_700_000_500u64);
    }
    record
}

#[tokio::test]
async fn migrate_keys_moves_old_redis_and_file_keys_once_and_they_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let redis = RedisProcess::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The old Redis store's writes, copied from the server that made them: the record under
    // its hash, the id's index, the set of ids; one key whose index was evicted (found by SCAN).
    let prefix = "learning-chat";
    let redis_keys = [
        (
            "key_0000000000a1",
            "redis class",
            "lc_old-redis-secret-one-0123456789abcdefghijk",
        ),
        (
            "key_0000000000a2",
            "redis app",
            "lc_old-redis-secret-two-0123456789abcdefghijk",
        ),
    ];
    for (n, (id, name, secret)) in redis_keys.iter().enumerate() {
        let record = old_record(id, name, secret, false);
        let hash = record["hash"].as_str().unwrap().to_owned();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(format!("{prefix}:apikey:{{{hash}}}"), record.to_string())
            .set(format!("{prefix}:apikey-used:{{{id}}}"), 1_700_000_900u64);
        if n == 0 {
            pipe.set(format!("{prefix}:apikey-id:{{{id}}}"), &hash)
                .sadd(format!("{prefix}:apikeys:{{all}}"), *id);
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let out = migrate_keys(&database, &["--from-redis", &redis.url()]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("moved\t")).count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("# moved 2, already there 0, unreadable 0"),
        "{out}"
    );
    // Idempotent: a second run moves nothing.
    let again = migrate_keys(&database, &["--from-redis", &redis.url()]);
    assert!(
        again.contains("# moved 0, already there 2, unreadable 0"),
        "{again}"
    );

    // The old keys file: `[[keys]]` tables, one revoked.
    let file_keys = [
        (
            "key_0000000000b1",
            "file class",
            "lc_old-file-secret-one-0123456789abcdefghijkl",
            false,
        ),
        (
            "key_0000000000b2",
            "file gone",
            "lc_old-file-secret-two-0123456789abcdefghijkl",
            true,
        ),
    ];
    let mut toml_text = String::new();
    for (id, name, secret, revoked) in file_keys {
        let record = old_record(id, name, secret, revoked);
        let value: toml::Value = serde_json::from_value(record).unwrap();
        toml_text.push_str("[[keys]]\n");
        toml_text.push_str(
            &toml::to_string(&value)
                .unwrap()
                .replace("[limits]", "[keys.limits]"),
        );
    }
    let file = dir.path().join("api-keys.toml");
    std::fs::write(&file, toml_text).unwrap();
    let out = migrate_keys(&database, &["--from-file", file.to_str().unwrap()]);
    assert!(
        out.contains("# moved 2, already there 0, unreadable 0"),
        "{out}"
    );

    // Read before any server uses the key: a server's ledger moves `last_used` to today.
    let show = keys_cli_on(&database, &["show", "key_0000000000a1"]);
    assert!(
        show.contains("learner_rpm=3")
            && show.contains("weight=2")
            && show.contains("last_used=2023-"),
        "{show}"
    );

    // A server on the database accepts the moved secrets (same pepper), with their settings.
    let server = start_server(&database, &[], None);
    let http = http();
    let working = redis_keys.iter().map(|k| k.2).chain([file_keys[0].2]);
    for secret in working {
        assert_eq!(ask(&http, &server, secret, "hello").await, StatusCode::OK);
    }
    assert_eq!(
        ask(&http, &server, file_keys[1].2, "hello").await,
        StatusCode::FORBIDDEN,
        "a key revoked in the old store stays revoked"
    );
    let other_agent = http
        .post(format!("{}/api/v1/agents/science", base(&server)))
        .bearer_auth(redis_keys[0].2)
        .json(&serde_json::json!({ "message": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other_agent.status(),
        StatusCode::FORBIDDEN,
        "the agents list moved too"
    );
    let audit = keys_cli_on(&database, &["audit"]);
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\tmigrate-keys\tkey.migrated\t"))
            .count(),
        4,
        "{audit}"
    );
}
