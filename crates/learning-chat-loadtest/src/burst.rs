//! The burst generator: N requests released at the same instant (a thundering herd of identical
//! new questions, or N distinct ones to hold N connections open at once).

use crate::openloop::TargetArgs;
use crate::options::QuestionMode;
use crate::recorder::Recorder;
use crate::report::Report;
use crate::sim::SimClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// Identical or distinct questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BurstMode {
    /// One question, new to the service (tagged with this run), asked N times at once.
    Identical,
    /// N different questions at once.
    Unique,
    /// `--question` exactly as given, N times at once: cache hits once the service has answered
    /// it (ask it once before, e.g. with `--count 1`).
    Fixed,
}

/// `learning-chat-loadtest burst`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "learning-chat-loadtest burst")]
pub struct BurstArgs {
    /// The target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Requests released at once.
    #[arg(long, default_value_t = 500)]
    pub count: u32,
    /// Identical (new) question, unique questions, or the fixed `--question`.
    #[arg(long, value_enum, default_value = "identical")]
    pub mode: BurstMode,
}

/// Opens every connection, releases all requests together, waits for every answer.
pub async fn run(args: BurstArgs) -> anyhow::Result<Report> {
    if args.count == 0 || args.count > 20_000 {
        anyhow::bail!("--count must be in 1..=20000");
    }
    let client = args.target.client()?;
    let prepared = Arc::new(args.target.prepare()?);
    let sim = SimClient::reset_if_given(args.target.sim_url.as_deref()).await?;
    let picker = args.target.picker(QuestionMode::Unique);
    // A question the service has not seen: the stem plus this run's tag, the same for all.
    let identical = picker.pick(&args.target.agent, &mut rand::rng());
    let recorder = Arc::new(Recorder::new());
    let barrier = Arc::new(Barrier::new(args.count as usize + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.count {
        let message = match args.mode {
            BurstMode::Identical => identical.clone(),
            BurstMode::Fixed => args.target.question.clone(),
            BurstMode::Unique => picker.pick(&args.target.agent, &mut rand::rng()),
        };
        let (client, prepared, recorder, barrier) = (
            client.clone(),
            prepared.clone(),
            recorder.clone(),
            barrier.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            let answer = prepared.send(&client, &message).await;
            let done = Instant::now();
            answer.record(&recorder, done - sent);
            done
        });
    }
    // Every task is parked at the barrier; releasing it starts the herd.
    barrier.wait().await;
    let released = Instant::now();
    let mut last_done = released;
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            last_done = last_done.max(done);
        }
    }
    let all_answered = last_done.saturating_duration_since(released);
    let mut snapshot = recorder.snapshot();
    snapshot.elapsed = all_answered.max(Duration::from_micros(1));
    snapshot.users = u64::from(args.count);
    let description = format!(
        "{}, {} requests at once, {:?} questions",
        args.target.describe(),
        args.count,
        args.mode
    );
    let mut report = Report::from_snapshot("burst", description, &snapshot);
    report.extra.insert(
        "time_to_answer_all_ms".into(),
        all_answered.as_secs_f64() * 1000.0,
    );
    if let Some(sim) = sim {
        report.upstream = Some(sim.stats().await?);
    }
    Ok(report)
}
