//! Per-model quotas against the real service on port 0 and gemini-sim (which counts its quota per
//! key and model, as Gemini does): a chain Flash -> Flash-Lite with 20 RPM each answers 40
//! distinct questions at once, 20 each, without one 429; with `spill_over = false` the 20 the
//! primary has no room for are refused at once, told when its first slot frees, while the
//! questions sharing a call in flight and the cached answers are never refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::{prom, settings_for, spawn_app, start_sim, TestApp};
use futures::future::join_all;
use gemini_sim::{QuotaConfig, SimConfig, SimServer};
use learning_chat::config::ModelQuotaSettings;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";
/// Each model's quota, at the simulator and in the service.
const RPM: u32 = 20;
/// The service's quota window: 60 s and the default margin.
const WINDOW_MS: u64 = 60_500;

/// An agents file with one tutor on the chain Flash -> Flash-Lite.
fn agents_file(spill_over: bool) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[[agents]]\nid = 'tutor'\nname = 'Tutor'\ndescription = 'd'\n\
             system_prompt = 'You are a tutor.'\nmodels = ['{FLASH}', '{LITE}']\n\
             spill_over = {spill_over}\n"
        ),
    )
    .unwrap();
    file
}

/// The simulator with `RPM` per model and answers taking `latency_ms`, and the service on the
/// chain: Flash-Lite's quota from its own `[models]` table, Flash's from `upstream.rpm`.
async fn start(spill_over: bool, latency_ms: u64) -> (SimServer, TestApp, tempfile::NamedTempFile) {
    let sim = start_sim(SimConfig {
        quota: QuotaConfig {
            rpm: u64::from(RPM),
            ..QuotaConfig::default()
        },
        latency: crate::support::fixed_latency(latency_ms),
        ..SimConfig::default()
    })
    .await;
    let agents = agents_file(spill_over);
    let mut settings = settings_for(&sim);
    settings.agents.path = Some(agents.path().to_owned());
    settings.upstream.rpm = RPM;
    settings.models.insert(
        LITE.to_owned(),
        ModelQuotaSettings {
            rpm: Some(RPM),
            ..ModelQuotaSettings::default()
        },
    );
    let app = spawn_app(settings).await;
    (sim, app, agents)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One reply as the test looks at it.
struct Outcome {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
    took: Duration,
    /// Unix ms when the reply came.
    at_ms: u64,
}

async fn ask(app: &TestApp, message: String) -> Outcome {
    let start = Instant::now();
    let reply = app.ask("tutor", message).await;
    let status = reply.status();
    let retry_after = reply
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body: Value = reply.json().await.unwrap();
    Outcome {
        status,
        body,
        retry_after,
        took: start.elapsed(),
        at_ms: unix_ms(),
    }
}

async fn ask_all(app: &TestApp, questions: &[String]) -> Vec<Outcome> {
    join_all(questions.iter().map(|q| ask(app, q.clone()))).await
}

fn questions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("distinct question {i}")).collect()
}

fn calls(sim: &SimServer, model: &str) -> u64 {
    sim.stats().per_model.get(model).map_or(0, |s| s.requests)
}

#[tokio::test]
async fn forty_questions_at_once_are_answered_twenty_by_each_model_without_a_429() {
    let (sim, app, _agents) = start(true, 200).await;
    let outcomes = ask_all(&app, &questions(40)).await;
    let answered_by = |model: &str| {
        outcomes
            .iter()
            .filter(|o| o.status == StatusCode::OK && o.body["model"] == model)
            .count()
    };
    let statuses: Vec<StatusCode> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(
        (answered_by(FLASH), answered_by(LITE)),
        (20, 20),
        "{statuses:?}"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the service kept both quotas: {stats:?}"
    );
    assert_eq!((calls(&sim, FLASH), calls(&sim, LITE)), (20, 20));

    // /ready and the metrics show each model's window used up.
    let ready = app.get_json("/ready").await;
    for model in [FLASH, LITE] {
        let quota = &ready["quotas"][model];
        assert_eq!(quota["rpm"], RPM, "{ready}");
        assert_eq!(quota["requests_in_window"], 20, "{ready}");
        assert_eq!(quota["remaining_in_window"], 0, "{ready}");
    }
    let scrape = prom::scrape(&app.client, &app.metrics_base()).await;
    for model in [FLASH, LITE] {
        let labels = [("model", model), ("window", "minute")];
        assert_eq!(
            scrape.value("learning_chat_model_quota_limit", &labels),
            20.0
        );
        assert_eq!(
            scrape.value("learning_chat_model_quota_used", &labels),
            20.0
        );
        assert_eq!(
            scrape.value("learning_chat_model_quota_remaining", &labels),
            0.0
        );
    }
    assert_eq!(
        scrape.value("learning_chat_model_spill_over_total", &[("model", FLASH)]),
        20.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn without_spill_over_the_primary_answers_its_quota_and_the_rest_are_refused_at_once() {
    // Answers take 2 s: the questions asked again while they are in flight share their calls.
    let (sim, app, _agents) = start(false, 2_000).await;
    let all = questions(40);
    let first = ask_all(&app, &all);
    let again = async {
        // Bounded: the 20 calls are in flight within a few seconds on any machine.
        for _ in 0..400 {
            if sim.stats().in_flight >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sim.stats().in_flight, 20, "the primary's quota in flight");
        ask_all(&app, &all).await
    };
    let (first, again) = tokio::join!(first, again);

    let answered: BTreeSet<usize> = (0..40)
        .filter(|i| first[*i].status == StatusCode::OK)
        .collect();
    assert_eq!(answered.len(), 20);
    assert!(first
        .iter()
        .filter(|o| o.status == StatusCode::OK)
        .all(|o| o.body["model"] == FLASH));
    // The first model call reserved the first slot; the window frees it WINDOW_MS later.
    let timeline = sim.timeline();
    let first_call = *timeline.arrival_ms.iter().min().unwrap();
    for (i, refused) in first
        .iter()
        .enumerate()
        .filter(|(i, _)| !answered.contains(i))
    {
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "question {i}"
        );
        assert_eq!(refused.body["error"]["code"], "overloaded");
        // At once: long before the 30 s deadline it would otherwise have waited out, and
        // before the primary's calls (2 s) had ended.
        assert!(
            refused.took < Duration::from_secs(2),
            "refused after {:?}",
            refused.took
        );
        let real_wait = (first_call + WINDOW_MS).saturating_sub(refused.at_ms) as f64 / 1000.0;
        let told = refused.retry_after.unwrap() as f64;
        assert!(
            (told - real_wait).abs() <= real_wait * 0.1,
            "Retry-After {told} s, the first slot frees in {real_wait} s"
        );
    }
    // Asked again while in flight: the answered ones share the calls and are never refused.
    for (i, outcome) in again.iter().enumerate() {
        let expected = if answered.contains(&i) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        assert_eq!(outcome.status, expected, "question {i} asked again");
    }
    // Once answered, the cached answers are served whatever the quota says.
    let cached = ask_all(&app, &all).await;
    for i in &answered {
        assert_eq!(cached[*i].status, StatusCode::OK);
        assert_eq!(cached[*i].body["cached"], true);
    }
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert_eq!((calls(&sim, FLASH), calls(&sim, LITE)), (20, 0));
    app.stop().await.unwrap();
}

/// Sends `message` as a follow-up in conversation `id`.
async fn follow_up(app: &TestApp, id: &str, message: &str) -> (StatusCode, Value) {
    let reply = app
        .client
        .post(app.url("/api/v1/agents/tutor"))
        .json(&serde_json::json!({ "message": message, "conversation_id": id }))
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap())
}

#[tokio::test]
async fn a_follow_up_whose_answer_is_cached_is_served_while_the_quota_refuses_the_rest() {
    let (sim, app, _agents) = start(false, 50).await;
    // One learner asks and follows up: two calls, both answers cached.
    let first = ask(&app, "what is a fraction".to_owned()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let (status, body) = follow_up(
        &app,
        first.body["conversation_id"].as_str().unwrap(),
        "and a decimal?",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cached"], false);
    // Another learner asks the same first question: the cached answer, a conversation of its own.
    let second = ask(&app, "what is a fraction".to_owned()).await;
    assert_eq!(second.body["cached"], true);
    // Distinct questions spend the rest of the quota; a new one is then refused.
    ask_all(&app, &questions(30)).await;
    let refused = ask(&app, "a question nobody asked".to_owned()).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    let spent = calls(&sim, FLASH);
    // The second learner's follow-up has the same history and question: its answer is cached,
    // so the full quota does not refuse it and no call is made.
    let (status, body) = follow_up(
        &app,
        second.body["conversation_id"].as_str().unwrap(),
        "and a decimal?",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cached"], true);
    assert_eq!(body["turn"], 2);
    assert_eq!(calls(&sim, FLASH), spent);
    assert_eq!(spent, u64::from(RPM));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_redis_deciding_questions_the_quota_cannot_serve_behind_the_queue_are_refused_first() {
    let redis = crate::support::processes::RedisProcess::start();
    let sim = start_sim(SimConfig {
        latency: crate::support::fixed_latency(1000),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.redis.url = learning_chat::config::Secret::new(redis.url());
    // One model slot, four calls a minute: calls of 1 s go one after the other.
    settings.upstream.rpm = 4;
    settings.upstream.max_concurrency = std::num::NonZeroUsize::new(1).unwrap();
    let app = spawn_app(settings).await;
    app.wait_for_redis().await;
    // One call first: the server has seen Redis' window (one of its four used).
    assert_eq!(
        app.ask("math", "warm-up question").await.status(),
        StatusCode::OK
    );
    // Nine at once: one calls, two queue with a slot of the minute each before their latest
    // start; the other six would reach the quota after those three calls and find it full.
    // Each outcome in the order it came back: the status, and a refusal's error code (so a
    // failure tells the quota's refusal from a timeout or a Redis error).
    let done = std::sync::Mutex::new(Vec::new());
    join_all((0..9).map(|i| {
        let (app, done) = (&app, &done);
        async move {
            let response = app.ask("math", format!("question {i}")).await;
            let status = response.status();
            let code = match status {
                StatusCode::OK => String::new(),
                _ => {
                    let body: Value = response.json().await.unwrap_or_default();
                    body["error"]["code"].as_str().unwrap_or("?").to_owned()
                }
            };
            done.lock().unwrap().push((status, code));
        }
    }))
    .await;
    let done = done.into_inner().unwrap();
    let stats = sim.stats();
    let context = format!("{done:?}; the simulator's calls: {stats:?}");
    let answered = done.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(answered, 3, "{context}");
    // Every refusal came back before the first of the three answers (1 s each, in turn).
    assert!(
        done[..6]
            .iter()
            .all(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "refusals first, then the answers: {context}"
    );
    assert_eq!(stats.rate_limited, 0, "{context}");
}
