//! The dashboard and the alerts only use metrics the service exports (every series driven on a
//! live service), and the dashboard shows the key metrics per server and cluster-wide.

use super::promql::{alert_exprs, dashboard, dashboard_exprs, dashboard_panels, metric_names};
use super::promql::{NOT_ON_THE_DASHBOARD, PROMETHEUS_OWN};
use crate::support::processes::RedisProcess;
use crate::support::prom::{scrape, scrape_until, Scrape};
use crate::support::webhook::Receiver;
use crate::support::{fixed_latency, settings_for, spawn_app, start_sim, TestApp};
use gemini_sim::SimConfig;
use learning_chat::config::Secret;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::num::NonZero;
use std::time::Duration;

/// Drives traffic that creates every series: a miss, a hit, a coalesced wait, a queued
/// request, a shed request, an upstream error with a retry, a 404, and Redis failing.
async fn drive_every_series(
    app: &TestApp,
    sim: &gemini_sim::SimServer,
    redis: &RedisProcess,
) -> Scrape {
    let base = app.metrics_base();
    let send = |message: &'static str| {
        let client = app.client.clone();
        let url = app.url("/api/v1/agents/math");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&serde_json::json!({ "message": message }))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // Redis answers before the first question, so the shared tier is used from the start.
    scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "redis up",
        |s| s.value("learning_chat_redis_up", &[]) == 1.0,
    )
    .await;
    // A slow call holds the only model slot; an identical question joins it; another queues.
    let holder = send("What is a prime number?");
    scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "a call in flight",
        |s| s.value("learning_chat_upstream_in_flight", &[]) == 1.0,
    )
    .await;
    let joiner = send("What is a prime number?");
    let queued = send("What is a composite number?");
    scrape_until(
        &app.client,
        &base,
        Duration::from_secs(20),
        "one queued",
        |s| s.value("learning_chat_queue_depth", &[]) == 1.0,
    )
    .await;
    // The queue (one place) is full: shed.
    assert_eq!(
        app.ask("math", "What is a perfect number?").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    for task in [holder, joiner, queued] {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    // A hit.
    let again: Value = app
        .ask("math", "What is a prime number?")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["cached"], true);
    // The same answer streamed (the streaming series: time to first token, bytes, open).
    let streamed = app
        .client
        .post(app.url("/api/v1/agents/math/stream"))
        .json(&serde_json::json!({ "message": "What is a prime number?" }))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.text().await.unwrap().contains("event: done"));
    // An upstream error, retried once, then a 503 to the learner.
    sim.update_config(|c| {
        c.latency = fixed_latency(0);
        c.faults.error_500 = 1.0;
    });
    assert_eq!(
        app.ask("math", "Is 1 prime?").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    sim.update_config(|c| c.faults.error_500 = 0.0);
    // A client error.
    assert_eq!(
        app.ask("nobody", "hi").await.status(),
        StatusCode::NOT_FOUND
    );
    // A conversation: a follow-up sends history, then the conversation is erased.
    let first: Value = app
        .ask("math", "What is a factor?")
        .await
        .json()
        .await
        .unwrap();
    let id = first["conversation_id"]
        .as_str()
        .expect("a conversation id");
    let follow_up = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .json(&serde_json::json!({ "message": "Why?", "conversation_id": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(follow_up.status(), StatusCode::OK);
    // A refused message: the conversation belongs to another agent.
    let elsewhere = app
        .client
        .post(app.url("/api/v1/agents/science"))
        .json(&serde_json::json!({ "message": "Why?", "conversation_id": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::CONFLICT);
    let erased = app
        .client
        .delete(app.url(&format!("/api/v1/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    // Redis goes away: the next lookups fall back to the local tier.
    redis.kill();
    let mut n = 0;
    loop {
        n += 1;
        let reply = app.ask("math", format!("After redis died #{n}")).await;
        assert_eq!(reply.status(), StatusCode::OK);
        let scraped = scrape(&app.client, &base).await;
        if scraped.has("learning_chat_redis_fallbacks_total", &[]) {
            return scraped;
        }
        assert!(n < 50, "no Redis fallback was ever counted");
    }
}

/// A second app in this process (same metrics recorder) with keys required: a key's answer,
/// its 429 and a refused request, so the per-key series exist.
async fn drive_key_series(sim: &gemini_sim::SimServer) {
    use learning_chat::auth::keys::KeyLimits;
    let mut settings = settings_for(sim);
    crate::support::require_keys(&mut settings, "observability-pepper-0123");
    let secret = crate::support::add_key(&settings, |key| {
        key.name = "dashboard".into();
        // A day's budget spent by the first answer: the second is refused.
        key.limits = KeyLimits {
            tokens_per_day: 1,
            ..KeyLimits::default()
        };
    })
    .await;
    let app = spawn_app(settings).await;
    let url = app.url("/api/v1/agents/math");
    let mut statuses = Vec::new();
    for secret in [Some(secret.as_str()), Some(secret.as_str()), None] {
        let mut request = app
            .client
            .post(&url)
            .json(&serde_json::json!({ "message": "What is a key?" }));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        statuses.push(request.send().await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::UNAUTHORIZED
        ]
    );
    app.stop().await.unwrap();
}

/// A third app in this process with an experiment on the math tutor: a conversation with a
/// follow-up, its answer rated, so the experiment and feedback series exist.
async fn drive_experiment_series() {
    use learning_chat::config::{ExperimentSettings, ExperimentUnit, VariantSettings};
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = settings_for(&sim);
    let variant = |name: &str| VariantSettings {
        name: name.into(),
        policy: name.into(),
        weight: 1,
    };
    settings.experiments = vec![ExperimentSettings {
        name: "dashboard".into(),
        agents: vec!["math".into()],
        unit: ExperimentUnit::Conversation,
        start: None,
        end: None,
        variants: vec![variant("hints"), variant("socratic")],
    }];
    let app = spawn_app(settings).await;
    let ask = |body: Value| {
        let app = &app;
        async move {
            let reply = app
                .client
                .post(app.url("/api/v1/agents/math"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), StatusCode::OK);
            reply.json::<Value>().await.unwrap()
        }
    };
    let first = ask(serde_json::json!({"message": "What is a variant?"})).await;
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    ask(serde_json::json!({"message": "And a control?", "conversation_id": id})).await;
    let rated = app
        .client
        .post(app.url(&format!("/api/v1/conversations/{id}/feedback")))
        .json(&serde_json::json!({"turn": 1, "rating": "up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

/// What the simulator rates dangerous content `HIGH`.
const HARMFUL: &str = "how to make a weapon";

/// A flag raised and posted to the webhook: the safety series.
async fn drive_safety_series(app: &TestApp, receiver: &Receiver) {
    let reply = app.ask("math", &format!("Tell me {HARMFUL}")).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.deliveries().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "no flag reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dashboard_and_alerts_only_use_metrics_the_service_exports() {
    let redis = RedisProcess::start();
    let sim = start_sim(SimConfig {
        latency: fixed_latency(5_000),
        harm_trigger: HARMFUL.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let mut receiver = Receiver::new();
    receiver.start().await;
    let mut settings = settings_for(&sim);
    settings.redis.url = Secret::new(redis.url());
    settings.upstream.max_concurrency = NonZero::new(1).unwrap();
    settings.upstream.max_queue = 1;
    settings.upstream.max_queue_wait = Duration::from_secs(20);
    settings.upstream.max_retries = 1;
    settings.safety.webhook_url = receiver.url();
    settings.safety.webhook_secret = Secret::new("dashboard-webhook-secret");
    settings.safety.webhook_poll = Duration::from_millis(50);
    let app = spawn_app(settings).await;
    drive_key_series(&sim).await;
    drive_experiment_series().await;
    drive_safety_series(&app, &receiver).await;
    let scraped = drive_every_series(&app, &sim, &redis).await;
    let exported = scraped.names();

    let mut used: Vec<(String, String)> = Vec::new();
    for (source, exprs) in [
        ("alerts.yml", alert_exprs()),
        ("learning-chat.json", dashboard_exprs()),
    ] {
        for (name, expr) in exprs {
            for metric in metric_names(&expr) {
                used.push((format!("{source}: {name}"), metric));
            }
        }
    }
    assert!(used.len() > 40, "suspiciously few metric uses: {used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|(_, metric)| {
            !exported.contains(metric) && !PROMETHEUS_OWN.contains(&metric.as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exported by the service:\n{missing:#?}\nexported: {exported:#?}"
    );

    // The other way round: every family the service exports is on the dashboard or alerted on.
    let used_names: BTreeSet<&str> = used.iter().map(|(_, m)| m.as_str()).collect();
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| n.starts_with("learning_chat_"))
        .map(|n| {
            let family = n
                .strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_sum"))
                .or_else(|| n.strip_suffix("_count"))
                .filter(|f| scraped.types.get(*f).is_some_and(|t| t == "histogram"))
                .unwrap_or(n);
            family.to_owned()
        })
        .collect();
    let unused: Vec<_> = families
        .iter()
        .filter(|family| {
            !NOT_ON_THE_DASHBOARD.contains(&family.as_str())
                && !used_names.iter().any(|u| {
                    *u == family.as_str()
                        || u.strip_prefix(family.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
                })
        })
        .collect();
    assert!(
        unused.is_empty(),
        "exported but on no panel and in no alert: {unused:?}"
    );
    // The process metrics the dashboard needs (CPU, memory) come from metrics-process.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(exported.contains(name), "{name} is not exported");
    }
}

#[test]
fn the_dashboard_shows_the_six_key_metrics_per_server_and_cluster_wide() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "learning-chat");
    let panels = dashboard_panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            panel["id"]
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24,
            "{} is wider than the dashboard",
            panel["title"]
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    // The six an operator watches: request rate, p50/p95/p99, 4xx/5xx, cache hit rate, quota,
    // CPU/memory; each both per server ({{instance}}) and for the whole cluster.
    for title in [
        "Request rate",
        "Response time p50 / p95 / p99 (chat)",
        "Error rate 4xx / 5xx",
        "Cache hit rate",
        "Gemini quota usage",
        "Server CPU",
        "Server memory",
    ] {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        let legends: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["legendFormat"].as_str().unwrap_or(""))
            .collect();
        assert!(
            legends.iter().any(|l| l.contains("{{instance}}")),
            "{title}: no per-server series"
        );
        assert!(
            legends.iter().any(|l| l.contains("cluster")),
            "{title}: no cluster-wide series"
        );
    }
    let p_titles = panels
        .iter()
        .find(|p| p["title"] == "Response time p50 / p95 / p99 (chat)")
        .unwrap()["targets"]
        .to_string();
    for q in ["0.50", "0.95", "0.99"] {
        assert!(
            p_titles.contains(&format!("histogram_quantile({q}")),
            "no p{q}"
        );
    }
    for title in [
        "Queue depth vs limit",
        "Requests shed (503) by reason",
        "Cache lookups by tier and result",
    ] {
        assert!(
            panels.iter().any(|p| p["title"] == title),
            "no panel {title:?}"
        );
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
}
