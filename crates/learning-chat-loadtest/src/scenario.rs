//! The goose mode: the reference load profile as a goose scenario, with our question and agent
//! mixes.
//!
//! Defaults are the reference profile that bench/RESULTS.md measures against (the locust run
//! `locust --users 1000 --spawn-rate 50`, `between(5, 15)`, POST /api/v1/agents/math
//! {"message": "What is 2+2?"}); goose's own flags override them.

use crate::options::{AgentMix, LoadOptions, TurnRange};
use crate::questions::{QuestionBank, QuestionPicker};
use crate::recorder::{spawn_progress, Outcome, Recorder, STATUS_NO_RESPONSE};
use crate::report::Report;
use crate::sim::SimClient;
use crate::stream::{self, StreamEnd, StreamOutcome};
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::goose::{
    GooseMethod, GooseRequest, GooseUser, Scenario, Transaction, TransactionFunction,
    TransactionResult,
};
use goose::GooseAttack;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default target: a service on this machine (load tests never leave loopback by default).
pub const DEFAULT_HOST: &str = "http://127.0.0.1:8000";
/// The reference profile's 1000 users (locust's `--users 1000`).
pub const DEFAULT_USERS: usize = 1000;
/// The reference profile's 50 new users a second (locust's `--spawn-rate 50`, goose's
/// `--increase-rate`).
pub const DEFAULT_INCREASE_RATE: &str = "50";
/// locust runs until stopped; a bounded default keeps every run finite.
pub const DEFAULT_RUN_TIME_S: usize = 90;

/// What every simulated user shares.
struct Shared {
    recorder: Arc<Recorder>,
    mix: AgentMix,
    picker: QuestionPicker,
    /// Conversation mode's length range.
    conversation: Option<TurnRange>,
    /// Conversation mode's counters.
    conversations: ConversationCounts,
    /// API keys spread over the users; empty sends none.
    keys: Vec<String>,
    /// Streaming mode: the stream endpoint, read event by event.
    stream: bool,
}

/// The keys of a `--keys-file`: one per line, blank lines and `#` comments skipped.
pub fn parse_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// What conversation mode counts beyond the recorder's figures.
#[derive(Default)]
struct ConversationCounts {
    /// Conversations started (first questions answered with an id).
    started: AtomicU64,
    /// Follow-ups sent.
    follow_ups: AtomicU64,
    /// Follow-ups answered (200) within their conversation.
    follow_ups_ok: AtomicU64,
}

/// One user's conversation in progress (goose session data, which goose clones with the user).
#[derive(Clone)]
struct UserConversation {
    id: String,
    agent: String,
    /// Follow-ups still to send.
    left: u32,
}

/// Follow-ups a learner sends after a first question: generic, so identical histories can
/// still meet identical follow-ups (and share the cache) as they would in real use.
const FOLLOW_UPS: &[&str] = &[
    "Can you show me an example?",
    "Why is that?",
    "Can you explain that more simply?",
    "What is a common mistake here?",
    "How can I check my answer?",
    "Can you give me a harder one?",
];

/// Runs the goose attack described by `options` and goose's own `goose_args`, and returns the
/// report (also printed and, when asked, written as JSON by the caller).
pub async fn run(options: LoadOptions, goose_args: Vec<String>) -> anyhow::Result<Report> {
    let bank = match &options.question_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            QuestionBank::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => QuestionBank::shipped(),
    };
    let mix = AgentMix::parse(&options.agents, &bank.agents()).map_err(anyhow::Error::msg)?;
    let picker = QuestionPicker::new(
        options.questions,
        options.question.clone(),
        &bank,
        &mix.agents(),
        options.zipf_exponent,
    );
    let recorder = Arc::new(Recorder::new());
    let keys = match &options.keys_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let keys = parse_keys(&text);
            anyhow::ensure!(!keys.is_empty(), "{} holds no keys", path.display());
            keys
        }
        None => Vec::new(),
    };
    let shared = Arc::new(Shared {
        recorder: recorder.clone(),
        mix,
        picker,
        conversation: options.conversation,
        conversations: ConversationCounts::default(),
        keys,
        stream: options.stream,
    });

    // goose builds a reqwest client per user.
    crate::install_crypto_provider();
    let configuration = GooseConfiguration::parse_args_default(&goose_args)
        .map_err(|e| anyhow::anyhow!("{e} (see --help)"))?;
    let mut scenario = Scenario::new("LearningChatUser")
        .register_transaction(
            Transaction::new(user_started(shared.clone()))
                .set_name("user started")
                .set_on_start(),
        )
        .register_transaction(Transaction::new(ask(shared.clone())).set_name("ask"));
    if !options.wait.max.is_zero() {
        scenario = scenario.set_wait_time(options.wait.min, options.wait.max)?;
    }
    let mut attack = GooseAttack::initialize_with_config(configuration)?
        .register_scenario(scenario)
        .set_default(GooseDefault::Host, DEFAULT_HOST)?
        .set_default(GooseDefault::Users, DEFAULT_USERS)?
        .set_default(GooseDefault::IncreaseRate, DEFAULT_INCREASE_RATE)?
        // A load tester should open no port by default; goose's WebSocket controller is off
        // unless asked for, its telnet one is not.
        .set_default(GooseDefault::NoTelnet, true)?;
    // goose refuses a run time or a metrics flag next to --iterations or --test-plan.
    let bounded_otherwise = ["--iterations", "--test-plan"]
        .iter()
        .any(|flag| has_flag(&goose_args, flag));
    if !bounded_otherwise {
        attack = attack
            .set_default(GooseDefault::RunTime, DEFAULT_RUN_TIME_S)?
            // Count the ramp-up too, like our recorder does, so both agree.
            .set_default(GooseDefault::NoResetMetrics, true)?;
    }

    let sim = SimClient::reset_if_given(options.sim_url.as_deref()).await?;
    let progress = spawn_progress(
        recorder.clone(),
        Duration::from_secs(options.progress_every),
    );
    let started = Instant::now();
    let result = attack.execute().await;
    if let Some(progress) = progress {
        progress.abort();
    }
    let metrics = result?;

    let host = metrics
        .hosts
        .iter()
        .next()
        .cloned()
        .unwrap_or_else(|| DEFAULT_HOST.to_owned());
    let host = host.trim_end_matches('/');
    let mut description = format!(
        "POST {host}/api/v1/agents/{{{}}}{}, questions {:?}, wait {:?}-{:?}",
        options.agents,
        if options.stream { "/stream" } else { "" },
        options.questions,
        options.wait.min,
        options.wait.max
    );
    if let Some(turns) = options.conversation {
        description.push_str(&format!(
            ", conversations of {}-{} questions",
            turns.min, turns.max
        ));
    }
    let mut snapshot = recorder.snapshot();
    snapshot.elapsed = started.elapsed();
    let mut report = Report::from_snapshot("goose", description, &snapshot);
    let goose_requests: usize = metrics
        .requests
        .values()
        .map(|r| r.success_count + r.fail_count)
        .sum();
    report
        .extra
        .insert("goose_counted_requests".to_owned(), goose_requests as f64);
    report
        .extra
        .insert("goose_max_users".to_owned(), metrics.maximum_users as f64);
    if options.conversation.is_some() {
        let counts = &shared.conversations;
        for (name, counter) in [
            ("conversations_started", &counts.started),
            ("follow_ups", &counts.follow_ups),
            ("follow_ups_ok", &counts.follow_ups_ok),
        ] {
            report
                .extra
                .insert(name.to_owned(), counter.load(Ordering::Relaxed) as f64);
        }
    }
    if let Some(sim) = sim {
        let upstream = sim.stats().await?;
        if snapshot.ok > 0 {
            report.extra.insert(
                "model_calls_per_answer".to_owned(),
                upstream.requests as f64 / snapshot.ok as f64,
            );
        }
        report.upstream = Some(upstream);
    }
    Ok(report)
}

/// True when `flag` is among `args`, alone or as `flag=value`.
fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
}

/// Forces the higher-ranked closure signature goose's transactions need.
fn transaction_fn<F>(f: F) -> TransactionFunction
where
    F: for<'r> Fn(
            &'r mut GooseUser,
        ) -> Pin<Box<dyn Future<Output = TransactionResult> + Send + 'r>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

fn user_started(shared: Arc<Shared>) -> TransactionFunction {
    transaction_fn(move |_user| {
        shared.recorder.user_started();
        Box::pin(async { Ok(()) })
    })
}

fn ask(shared: Arc<Shared>) -> TransactionFunction {
    transaction_fn(move |user| {
        let shared = shared.clone();
        Box::pin(async move { ask_once(&shared, user).await })
    })
}

/// One question: pick agent and question (in conversation mode: a follow-up in the user's
/// conversation, or a new conversation's first question), POST, read the whole body, record.
async fn ask_once(shared: &Shared, user: &mut GooseUser) -> TransactionResult {
    let ongoing = match shared.conversation {
        Some(_) => user
            .get_session_data_mut::<Option<UserConversation>>()
            .and_then(Option::take),
        None => None,
    };
    let (agent, question, conversation_id, left) = {
        // ThreadRng is not Send: drawn and dropped before the first await.
        let mut rng = rand::rng();
        match ongoing {
            Some(c) => {
                let follow_up =
                    FOLLOW_UPS[rand::RngExt::random_range(&mut rng, 0..FOLLOW_UPS.len())];
                (c.agent, follow_up.to_owned(), Some(c.id), c.left - 1)
            }
            None => {
                let agent = shared.mix.pick(&mut rng).to_owned();
                let question = shared.picker.pick(&agent, &mut rng);
                let left = shared.conversation.map_or(0, |t| {
                    rand::RngExt::random_range(&mut rng, t.min..=t.max) - 1
                });
                (agent, question, None, left)
            }
        }
    };
    let mut body = serde_json::json!({ "message": question });
    if let Some(id) = &conversation_id {
        body["conversation_id"] = serde_json::Value::String(id.clone());
        shared
            .conversations
            .follow_ups
            .fetch_add(1, Ordering::Relaxed);
    }
    // Users are numbered from 0 as they start: user i is always key i mod N.
    let key = (!shared.keys.is_empty())
        .then(|| shared.keys[user.weighted_users_index % shared.keys.len()].clone());
    let (ok, answer) = if shared.stream {
        let outcome = ask_streamed(user, &agent, &body, key.as_deref()).await?;
        shared.recorder.record_stream(&outcome);
        let conversation_id = match &outcome.end {
            StreamEnd::Done {
                conversation_id, ..
            } => conversation_id.clone(),
            StreamEnd::Failed { .. } => None,
        };
        (
            outcome.completed(),
            AnswerFields {
                cached: outcome.cached(),
                conversation_id,
            },
        )
    } else {
        ask_plain(shared, user, &agent, &body, key.as_deref()).await?
    };
    if shared.conversation.is_some() {
        let counts = &shared.conversations;
        match &conversation_id {
            Some(_) if ok => {
                counts.follow_ups_ok.fetch_add(1, Ordering::Relaxed);
            }
            None if ok && answer.conversation_id.is_some() => {
                counts.started.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        // A failed follow-up ends the conversation (a learner would start again); a new one
        // goes on while it has questions left and the service gave it an id.
        let next = match (ok, answer.conversation_id) {
            (true, Some(id)) if left > 0 => Some(UserConversation { id, agent, left }),
            _ => None,
        };
        user.set_session_data(next);
    }
    Ok(())
}

/// POST to the JSON endpoint, read the whole body, record; returns whether it was a 2xx and the
/// answer's fields.
async fn ask_plain(
    shared: &Shared,
    user: &mut GooseUser,
    agent: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> Result<(bool, AnswerFields), Box<goose::goose::TransactionError>> {
    let path = format!("/api/v1/agents/{agent}");
    let started = Instant::now();
    let response = match key {
        None => user.post_json(&path, body).await?,
        Some(key) => {
            let builder = user
                .get_request_builder(&GooseMethod::Post, &path)?
                .bearer_auth(key)
                .json(body);
            user.request(
                GooseRequest::builder()
                    .method(GooseMethod::Post)
                    .path(path.as_str())
                    .set_request_builder(builder)
                    .build(),
            )
            .await?
        }
    };
    // goose records its own metric for this request (status, failure); we also need the
    // `cached` flag and the time to the whole body, so the body is read here.
    let (status, answer) = match response.response {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(body) => (status, answer_fields(&body)),
                // Headers came but the body did not: not a usable answer.
                Err(_) => (STATUS_NO_RESPONSE, AnswerFields::default()),
            }
        }
        Err(_) => (STATUS_NO_RESPONSE, AnswerFields::default()),
    };
    shared.recorder.record(Outcome {
        status,
        latency: started.elapsed(),
        cached: answer.cached,
    });
    Ok(((200..300).contains(&status), answer))
}

/// POST to the stream endpoint and read its events as they come.
///
/// goose records the request when the headers arrive (its time is the time to first byte);
/// our recorder gets the time to first token and to `done`. Sent through goose (so it counts the
/// request), read like [`stream::send`]'s.
async fn ask_streamed(
    user: &mut GooseUser,
    agent: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> Result<StreamOutcome, Box<goose::goose::TransactionError>> {
    let path = stream::stream_path(agent);
    let mut builder = user
        .get_request_builder(&GooseMethod::Post, &path)?
        .header("accept", "text/event-stream")
        .json(body);
    if let Some(key) = key {
        builder = builder.bearer_auth(key);
    }
    let sent = std::time::Instant::now();
    let response = user
        .request(
            GooseRequest::builder()
                .method(GooseMethod::Post)
                .path(path.as_str())
                .set_request_builder(builder)
                .build(),
        )
        .await?;
    Ok(stream::read(sent, response.response).await)
}

/// What the load tester reads from an answer.
#[derive(Debug, Default, PartialEq)]
pub struct AnswerFields {
    /// `"cached": true`.
    pub cached: bool,
    /// The conversation to follow up in.
    pub conversation_id: Option<String>,
}

/// The fields of a learning-chat answer the load tester uses; defaults for anything else.
pub fn answer_fields(body: &[u8]) -> AnswerFields {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        cached: bool,
        #[serde(default)]
        conversation_id: Option<String>,
    }
    serde_json::from_slice::<Answer>(body).map_or_else(
        |_| AnswerFields::default(),
        |a| AnswerFields {
            cached: a.cached,
            conversation_id: a.conversation_id,
        },
    )
}

/// The `cached` field of a learning-chat answer; false for anything else.
pub fn cached_flag(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        cached: bool,
    }
    serde_json::from_slice::<Answer>(body).is_ok_and(|a| a.cached)
}

/// The `--help` text: ours, then goose's.
pub fn help() -> String {
    format!(
        "learning-chat-loadtest: the reference load profile on goose (1000 users, 50/s, 5-15 s think time,\n\
         POST /api/v1/agents/math {{\"message\": \"What is 2+2?\"}} against {DEFAULT_HOST} for {DEFAULT_RUN_TIME_S} s).\n\n\
         Other generators (see `learning-chat-loadtest open-loop --help` / `burst --help`):\n  \
         open-loop   fixed request rate, latency measured from the scheduled send time\n  \
         burst       N requests at once (thundering herd, connection hold)\n\n\
         --stream (any generator) posts to /api/v1/agents/{{agent}}/stream and reports time to first token.\n\n{}\n{}",
        LoadOptions::help(),
        <GooseConfiguration as clap::CommandFactory>::command().render_long_help()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_skip_blanks_and_comments() {
        assert_eq!(
            parse_keys("# class keys\nlc_a\n\n  lc_b  \n"),
            ["lc_a", "lc_b"]
        );
    }

    #[test]
    fn cached_flag_reads_answers() {
        assert!(cached_flag(br#"{"response":"4","cached":true}"#));
        assert!(!cached_flag(br#"{"response":"4","cached":false}"#));
        assert!(!cached_flag(br#"{"error":{"code":"x"}}"#));
        assert!(!cached_flag(b"not json"));
    }

    #[test]
    fn answer_fields_read_the_conversation_id() {
        assert_eq!(
            answer_fields(br#"{"response":"4","cached":true,"conversation_id":"ab"}"#),
            AnswerFields {
                cached: true,
                conversation_id: Some("ab".to_owned())
            }
        );
        assert_eq!(
            answer_fields(br#"{"response":"4","conversation_id":null}"#),
            AnswerFields::default()
        );
        assert_eq!(answer_fields(b"not json"), AnswerFields::default());
    }

    #[test]
    fn flags_are_found_in_both_spellings() {
        let args: Vec<String> = vec!["--iterations=3".into(), "-u".into()];
        assert!(has_flag(&args, "--iterations"));
        assert!(!has_flag(&args, "--iter"));
        assert!(!has_flag(&args, "--test-plan"));
    }

    #[test]
    fn goose_parses_what_we_leave() {
        let args: Vec<String> = [
            "--host",
            "http://127.0.0.1:1",
            "-u",
            "3",
            "--report-file",
            "r.html",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let config = GooseConfiguration::parse_args_default(&args).unwrap();
        assert_eq!(config.users, Some(3));
        assert_eq!(config.report_file, ["r.html"]);
        assert!(GooseConfiguration::parse_args_default(&["--questions".to_owned()]).is_err());
    }
}
