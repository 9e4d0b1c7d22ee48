//! The open-loop generator: requests leave at a fixed rate whatever the answers do (unlike goose's
//! closed loop, where a slow answer delays the user's next request and hides queueing).
//!
//! Each request's latency is recorded twice: from its actual send (the service time) and from its
//! scheduled send (corrected for coordinated omission: a generator that fell behind shows up).

use crate::options::{QuestionMode, SEED_QUESTION};
use crate::questions::{QuestionBank, QuestionPicker};
use crate::recorder::{spawn_progress, Outcome, Recorder, STATUS_NO_RESPONSE};
use crate::report::Report;
use crate::scenario::cached_flag;
use crate::sim::SimClient;
use crate::stream::{self, StreamOutcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the requests are sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// learning-chat: POST {url}/api/v1/agents/{agent} {"message": ...}.
    Service,
    /// A Gemini endpoint (gemini-sim): POST {url}/v1beta/models/{model}:generateContent, the
    /// request learning-chat itself would send (to measure the gateway's overhead by difference).
    Gemini,
}

/// Fixed or unique questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Questions {
    /// The same question every time.
    Fixed,
    /// A new question every time (nothing cacheable).
    Unique,
}

impl From<Questions> for QuestionMode {
    fn from(q: Questions) -> Self {
        match q {
            Questions::Fixed => QuestionMode::Fixed,
            Questions::Unique => QuestionMode::Unique,
        }
    }
}

/// Where and what to send; shared by the open-loop and burst generators.
#[derive(Clone, Debug, clap::Args)]
pub struct TargetArgs {
    /// Base URL of the service or simulator (loopback in benchmarks).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// learning-chat or a Gemini endpoint.
    #[arg(long, value_enum, default_value = "service")]
    pub target: Target,
    /// Agent id (service target).
    #[arg(long, default_value = "math")]
    pub agent: String,
    /// Model (gemini target).
    #[arg(long, default_value = "gemini-2.5-flash")]
    pub model: String,
    /// API key sent as x-goog-api-key (gemini target).
    #[arg(long, default_value = "bench")]
    pub api_key: String,
    /// The fixed question, and the stem of unique ones.
    #[arg(long, default_value = SEED_QUESTION)]
    pub question: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// gemini-sim's base URL: reset its /stats first, report its counts at the end.
    #[arg(long)]
    pub sim_url: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Streaming mode (service target): POST {url}/api/v1/agents/{agent}/stream, read the SSE
    /// events as they come, report time to first token and total time.
    #[arg(long)]
    pub stream: bool,
}

/// A request ready to send.
pub struct Prepared {
    url: String,
    target: Target,
    api_key: String,
    stream: bool,
}

/// What one request got back.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A whole JSON answer: status (0: no response) and the `cached` flag.
    Plain {
        /// HTTP status.
        status: u16,
        /// `"cached": true`.
        cached: bool,
    },
    /// A streamed answer.
    Stream(StreamOutcome),
}

impl Answer {
    /// The HTTP status (0: no response).
    pub fn status(&self) -> u16 {
        match self {
            Answer::Plain { status, .. } => *status,
            Answer::Stream(s) => s.status,
        }
    }

    /// The answer came from the cache.
    pub fn cached(&self) -> bool {
        match self {
            Answer::Plain { cached, .. } => *cached,
            Answer::Stream(s) => s.cached(),
        }
    }

    /// Records it in `recorder`; `latency` is the plain answer's (a stream brings its own
    /// times).
    pub fn record(&self, recorder: &Recorder, latency: Duration) {
        match self {
            Answer::Plain { status, cached } => recorder.record(Outcome {
                status: *status,
                latency,
                cached: *cached,
            }),
            Answer::Stream(s) => recorder.record_stream(s),
        }
    }
}

impl TargetArgs {
    /// The client used for every request: keep-alive, no Nagle, a pool as large as needed.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(crate::client_builder()
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs_f64(self.timeout.max(0.001)))
            .build()?)
    }

    /// The URL and headers every request uses.
    pub fn prepare(&self) -> anyhow::Result<Prepared> {
        let base = self.url.trim_end_matches('/');
        let url = match (self.target, self.stream) {
            (Target::Service, false) => format!("{base}/api/v1/agents/{}", self.agent),
            (Target::Service, true) => format!("{base}{}", stream::stream_path(&self.agent)),
            (Target::Gemini, false) => {
                format!("{base}/v1beta/models/{}:generateContent", self.model)
            }
            (Target::Gemini, true) => anyhow::bail!("--stream needs --target service"),
        };
        Ok(Prepared {
            url,
            target: self.target,
            api_key: self.api_key.clone(),
            stream: self.stream,
        })
    }

    /// One line describing the target, for the report.
    pub fn describe(&self) -> String {
        let url = self.prepare().map(|p| p.url).unwrap_or_default();
        let streamed = if self.stream { ", streamed" } else { "" };
        format!("POST {url} ({:?} target{streamed})", self.target)
    }

    /// A question picker for `mode`.
    pub fn picker(&self, mode: QuestionMode) -> QuestionPicker {
        QuestionPicker::new(
            mode,
            self.question.clone(),
            &QuestionBank::shipped(),
            std::slice::from_ref(&self.agent),
            1.0,
        )
    }
}

impl Prepared {
    /// Sends `message` and reads the whole answer (or the whole stream).
    pub async fn send(&self, client: &reqwest::Client, message: &str) -> Answer {
        if self.stream {
            let request = client
                .post(&self.url)
                .json(&serde_json::json!({ "message": message }));
            return Answer::Stream(stream::send(request).await);
        }
        let request = match self.target {
            Target::Service => client
                .post(&self.url)
                .json(&serde_json::json!({ "message": message })),
            Target::Gemini => client
                .post(&self.url)
                .header("x-goog-api-key", &self.api_key)
                .json(&gemini_body(message)),
        };
        // Same reading as the goose scenario's `ask_plain`.
        let (status, cached) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(body) => (status, cached_flag(&body)),
                    Err(_) => (STATUS_NO_RESPONSE, false),
                }
            }
            Err(_) => (STATUS_NO_RESPONSE, false),
        };
        Answer::Plain { status, cached }
    }
}

/// A generateContent body shaped like learning-chat's own: a tutor's system prompt, one user turn.
pub fn gemini_body(message: &str) -> serde_json::Value {
    serde_json::json!({
        "systemInstruction": {"parts": [{"text": "You are a patient, encouraging math tutor. Explain step by step, check understanding, and never just give the final answer without the reasoning."}]},
        "contents": [{"role": "user", "parts": [{"text": message}]}],
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 1024}
    })
}

/// `learning-chat-loadtest open-loop`: a fixed request rate for a fixed time.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "learning-chat-loadtest open-loop")]
pub struct OpenLoopArgs {
    /// The target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before the measured part, not recorded (opens connections, warms caches).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// fixed or unique questions.
    #[arg(long, value_enum, default_value = "unique")]
    pub questions: Questions,
    /// Requests allowed in flight; a send beyond it is skipped and counted (bounds memory).
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    pub progress_every: u64,
}

/// Runs the open-loop load and returns its report.
pub async fn run(args: OpenLoopArgs) -> anyhow::Result<Report> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        anyhow::bail!("--rate must be in (0, 100000]");
    }
    let duration_ok = args.duration > 0.0 && args.duration <= 3600.0;
    if !duration_ok || !(0.0..=600.0).contains(&args.warmup) {
        anyhow::bail!("--duration must be in (0, 3600] and --warmup in [0, 600]");
    }
    let client = args.target.client()?;
    let prepared = Arc::new(args.target.prepare()?);
    let picker = Arc::new(args.target.picker(args.questions.into()));
    let sim = SimClient::reset_if_given(args.target.sim_url.as_deref()).await?;
    let warm = (args.rate * args.warmup).round() as u64;
    let measured = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let service_time = Arc::new(Recorder::new());
    let from_schedule = Arc::new(Recorder::new());
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut skipped = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut tasks = tokio::task::JoinSet::new();
    let progress = spawn_progress(
        service_time.clone(),
        Duration::from_secs(args.progress_every),
    );
    let start = Instant::now() + Duration::from_millis(20);
    let measured_start = start + interval * u32::try_from(warm).unwrap_or(u32::MAX);
    for i in 0..warm + measured {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(Instant::now().saturating_duration_since(at));
        while tasks.try_join_next().is_some() {}
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let record = i >= warm;
        let (client, prepared, picker) = (client.clone(), prepared.clone(), picker.clone());
        let (service_time, from_schedule, in_flight) = (
            service_time.clone(),
            from_schedule.clone(),
            in_flight.clone(),
        );
        let agent = args.target.agent.clone();
        tasks.spawn(async move {
            let message = picker.pick(&agent, &mut rand::rng());
            let sent = Instant::now();
            let answer = prepared.send(&client, &message).await;
            let done = Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if record {
                answer.record(&service_time, done - sent);
                from_schedule.record(Outcome {
                    status: answer.status(),
                    latency: done - at,
                    cached: answer.cached(),
                });
            }
            done
        });
    }
    let mut last_done = Instant::now();
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            last_done = last_done.max(done);
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut snapshot = service_time.snapshot();
    snapshot.elapsed = last_done.saturating_duration_since(measured_start);
    let description = format!(
        "{}, open loop {} req/s for {} s (+{} s warm-up), {:?} questions",
        args.target.describe(),
        args.rate,
        args.duration,
        args.warmup,
        args.questions
    );
    let mut report = Report::from_snapshot("open-loop", description, &snapshot);
    let scheduled = from_schedule.snapshot();
    let extra = &mut report.extra;
    extra.insert("offered_rate_per_s".into(), args.rate);
    extra.insert("skipped_over_max_in_flight".into(), skipped as f64);
    extra.insert(
        "generator_max_lag_ms".into(),
        max_lag.as_secs_f64() * 1000.0,
    );
    extra.insert("from_schedule_p50_ms".into(), scheduled.latency_ms(0.5));
    extra.insert("from_schedule_p99_ms".into(), scheduled.latency_ms(0.99));
    if let Some(sim) = sim {
        report.upstream = Some(sim.stats().await?);
    }
    Ok(report)
}
