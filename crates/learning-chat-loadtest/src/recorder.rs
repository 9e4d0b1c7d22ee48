//! Records every request: latency (exact to 0.1 %, in microseconds), status and `cached` flag.
//!
//! goose keeps its own metrics too, but rounds response times and has no p95 column, and knows
//! nothing of `cached`; this recorder is the source of the report's figures.

use crate::stream::{StreamEnd, StreamOutcome};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Status recorded for a request that got no HTTP response (connect error, timeout, reset).
pub const STATUS_NO_RESPONSE: u16 = 0;
/// Largest latency the histogram holds (longer ones are clamped to it): one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Shared by every simulated user; cheap to lock (a few counter updates per request).
pub struct Recorder {
    started: Instant,
    users: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    latency_us: Histogram<u64>,
    /// Latency of the 2xx responses alone, and of everything else: a refusal that comes at
    /// once and one that comes after a long wait look alike in the overall percentiles.
    ok_latency_us: Histogram<u64>,
    failed_latency_us: Histogram<u64>,
    by_status: BTreeMap<u16, u64>,
    ok: u64,
    cached: u64,
    /// Streaming mode's figures; `None` until the first streamed request.
    stream: Option<StreamCounts>,
    /// For the progress line's rate over the last interval.
    last_total: u64,
    last_at: Instant,
}

/// What streaming mode records beyond status and total time.
#[derive(Clone, Debug)]
pub struct StreamCounts {
    /// Streamed requests finished.
    pub streams: u64,
    /// Streams that ended with `done`, by [`AnswerSource`].
    pub completed: [u64; 3],
    /// Time to first token of every stream that got one, in microseconds.
    pub ttft_us: Histogram<u64>,
    /// Time to first token of completed streams, by [`AnswerSource`].
    pub ttft_by_source_us: [Histogram<u64>; 3],
    /// Time to `done` of completed streams.
    pub total_us: Histogram<u64>,
    /// Failures by code (the service's, or the load tester's: `stream_cut`, `timeout`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Failures after the stream started (`error` events, cuts).
    pub mid_stream_errors: u64,
    /// `delta` events received.
    pub deltas: u64,
    /// Comments (`: ping`) received.
    pub pings: u64,
    /// Body bytes received.
    pub bytes: u64,
}

impl StreamCounts {
    fn new() -> StreamCounts {
        StreamCounts {
            streams: 0,
            completed: [0; 3],
            ttft_us: new_histogram(),
            ttft_by_source_us: [new_histogram(), new_histogram(), new_histogram()],
            total_us: new_histogram(),
            errors_by_code: BTreeMap::new(),
            mid_stream_errors: 0,
            deltas: 0,
            pings: 0,
            bytes: 0,
        }
    }

    /// Streams that ended with `done`.
    pub fn completed_total(&self) -> u64 {
        self.completed.iter().sum()
    }
}

/// A latency histogram in microseconds, 1 us to one hour.
#[allow(clippy::expect_used)] // constant, valid bounds
fn new_histogram() -> Histogram<u64> {
    // 3 significant figures: p99 of 2800 ms is known to within about 3 ms.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// A duration in whole microseconds, within the histograms' bounds.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(MAX_LATENCY_US)
        .clamp(1, MAX_LATENCY_US)
}

/// Percentile `quantile` (0..=1) of a microsecond histogram in milliseconds; 0 when empty.
pub fn quantile_ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// What one finished request looked like.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// HTTP status, or [`STATUS_NO_RESPONSE`].
    pub status: u16,
    /// Time from sending (or from the scheduled send, for open-loop runs) to the full body.
    pub latency: Duration,
    /// The response said `"cached": true`.
    pub cached: bool,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Time since the recorder was made.
    pub elapsed: Duration,
    /// Users started so far (goose mode).
    pub users: u64,
    /// Requests finished.
    pub requests: u64,
    /// 2xx responses.
    pub ok: u64,
    /// 2xx responses that were cache hits.
    pub cached: u64,
    /// Requests by status (0: no response).
    pub by_status: BTreeMap<u16, u64>,
    /// Latency distribution in microseconds.
    pub latency_us: Histogram<u64>,
    /// Latency of the 2xx responses, in microseconds.
    pub ok_latency_us: Histogram<u64>,
    /// Latency of the other responses (refusals, errors, no response), in microseconds.
    pub failed_latency_us: Histogram<u64>,
    /// Streaming mode's figures, when requests were streamed.
    pub stream: Option<StreamCounts>,
}

impl Snapshot {
    /// Requests that were not 2xx.
    pub fn failures(&self) -> u64 {
        self.requests - self.ok
    }

    /// The latency at `quantile` (0..=1) in milliseconds; 0 without requests.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.latency_us, quantile)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Inner {
    fn count(&mut self, outcome: Outcome, ok: bool) {
        self.latency_us.saturating_record(micros(outcome.latency));
        if ok {
            self.ok_latency_us
                .saturating_record(micros(outcome.latency));
        } else {
            self.failed_latency_us
                .saturating_record(micros(outcome.latency));
        }
        *self.by_status.entry(outcome.status).or_default() += 1;
        if ok {
            self.ok += 1;
            if outcome.cached {
                self.cached += 1;
            }
        }
    }
}

impl Recorder {
    /// An empty recorder; its clock starts now.
    pub fn new() -> Recorder {
        let latency_us = new_histogram();
        Recorder {
            started: Instant::now(),
            users: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                ok_latency_us: latency_us.clone(),
                failed_latency_us: latency_us.clone(),
                latency_us,
                by_status: BTreeMap::new(),
                ok: 0,
                cached: 0,
                stream: None,
                last_total: 0,
                last_at: Instant::now(),
            }),
        }
    }

    /// Counts one more started user.
    pub fn user_started(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished request.
    pub fn record(&self, outcome: Outcome) {
        let mut inner = self.inner.lock();
        inner.count(outcome, (200..300).contains(&outcome.status));
    }

    /// Records one finished streamed request: its status and total time like any request
    /// (a 200 whose stream failed is counted under 200 but not as ok), and the stream figures.
    pub fn record_stream(&self, outcome: &StreamOutcome) {
        let mut inner = self.inner.lock();
        inner.count(
            Outcome {
                status: outcome.status,
                latency: outcome.total,
                cached: outcome.cached(),
            },
            outcome.completed(),
        );
        let s = inner.stream.get_or_insert_with(StreamCounts::new);
        s.streams += 1;
        s.deltas += outcome.deltas;
        s.pings += outcome.pings;
        s.bytes += outcome.bytes;
        if let Some(ttft) = outcome.ttft {
            s.ttft_us.saturating_record(micros(ttft));
        }
        match &outcome.end {
            StreamEnd::Done { source, .. } => {
                s.completed[source.index()] += 1;
                s.total_us.saturating_record(micros(outcome.total));
                if let Some(ttft) = outcome.ttft {
                    s.ttft_by_source_us[source.index()].saturating_record(micros(ttft));
                }
            }
            StreamEnd::Failed { code, mid_stream } => {
                *s.errors_by_code.entry(code.clone()).or_default() += 1;
                if *mid_stream {
                    s.mid_stream_errors += 1;
                }
            }
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock();
        Snapshot {
            elapsed: self.started.elapsed(),
            users: self.users.load(Ordering::Relaxed),
            requests: inner.by_status.values().sum(),
            ok: inner.ok,
            cached: inner.cached,
            by_status: inner.by_status.clone(),
            latency_us: inner.latency_us.clone(),
            ok_latency_us: inner.ok_latency_us.clone(),
            failed_latency_us: inner.failed_latency_us.clone(),
            stream: inner.stream.clone(),
        }
    }

    /// One progress line: elapsed, users, request rate since the previous line, failures,
    /// cache hits and latency percentiles so far.
    pub fn progress_line(&self) -> String {
        let snapshot = self.snapshot();
        let rate = {
            let mut inner = self.inner.lock();
            let now = Instant::now();
            let seconds = now.duration_since(inner.last_at).as_secs_f64().max(1e-3);
            let rate = (snapshot.requests.saturating_sub(inner.last_total)) as f64 / seconds;
            inner.last_total = snapshot.requests;
            inner.last_at = now;
            rate
        };
        let mut line = format!(
            "[{:>5.0}s] users {:>5}  req/s {:>8.1}  requests {:>8}  failures {:>6}  cached {:>5.1}%  p50 {:>8.1} ms  p99 {:>8.1} ms",
            snapshot.elapsed.as_secs_f64(),
            snapshot.users,
            rate,
            snapshot.requests,
            snapshot.failures(),
            percent(snapshot.cached, snapshot.ok),
            snapshot.latency_ms(0.50),
            snapshot.latency_ms(0.99),
        );
        if let Some(s) = &snapshot.stream {
            line.push_str(&format!(
                "  ttft p50 {:>8.1} ms  p99 {:>8.1} ms",
                quantile_ms(&s.ttft_us, 0.50),
                quantile_ms(&s.ttft_us, 0.99)
            ));
        }
        line
    }
}

/// `part / whole` in percent, 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Prints [`Recorder::progress_line`] to stderr every `every` until the task is aborted.
pub fn spawn_progress(
    recorder: std::sync::Arc<Recorder>,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            eprintln!("{}", recorder.progress_line());
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let recorder = Recorder::new();
        for ms in 1..=100u64 {
            recorder.record(Outcome {
                status: 200,
                latency: Duration::from_millis(ms),
                cached: ms % 4 == 0,
            });
        }
        recorder.record(Outcome {
            status: 503,
            latency: Duration::from_millis(1),
            cached: false,
        });
        recorder.record(Outcome {
            status: STATUS_NO_RESPONSE,
            latency: Duration::from_millis(1),
            cached: true,
        });
        let s = recorder.snapshot();
        assert_eq!(s.requests, 102);
        assert_eq!(s.ok, 100);
        assert_eq!(s.failures(), 2);
        assert_eq!(s.cached, 25);
        assert_eq!(s.by_status[&503], 1);
        let p95 = s.latency_ms(0.95);
        assert!((92.0..=96.0).contains(&p95), "{p95}");
        assert!((99.9..=100.1).contains(&s.latency_ms(1.0)));
        assert!(recorder.progress_line().contains("requests      102"));
    }

    #[test]
    fn streams_count_as_ok_only_when_done() {
        use crate::stream::{AnswerSource, StreamEnd, StreamOutcome};
        let recorder = Recorder::new();
        let outcome = |ttft: Option<u64>, total: u64, end: StreamEnd| StreamOutcome {
            status: 200,
            ttft: ttft.map(Duration::from_millis),
            total: Duration::from_millis(total),
            end,
            deltas: 2,
            pings: 1,
            bytes: 100,
        };
        let done = |source| StreamEnd::Done {
            source,
            conversation_id: None,
        };
        recorder.record_stream(&outcome(Some(5), 6, done(AnswerSource::Cached)));
        recorder.record_stream(&outcome(Some(900), 2000, done(AnswerSource::Fresh)));
        recorder.record_stream(&outcome(
            Some(100),
            150,
            StreamEnd::Failed {
                code: "stream_cut".into(),
                mid_stream: true,
            },
        ));
        recorder.record_stream(&StreamOutcome::http_error(
            503,
            br#"{"error":{"code":"overloaded","message":"m"}}"#,
            Duration::from_millis(1),
        ));
        let s = recorder.snapshot();
        assert_eq!((s.requests, s.ok, s.cached, s.failures()), (4, 2, 1, 2));
        assert_eq!(s.by_status[&200], 3);
        let st = s.stream.unwrap();
        assert_eq!(st.streams, 4);
        assert_eq!(st.completed, [1, 0, 1]);
        assert_eq!(st.ttft_us.len(), 3);
        assert_eq!(st.total_us.len(), 2);
        assert_eq!(st.errors_by_code["stream_cut"], 1);
        assert_eq!(st.errors_by_code["overloaded"], 1);
        assert_eq!(st.mid_stream_errors, 1);
        assert_eq!((st.deltas, st.pings), (6, 3));
        assert!((4.9..=5.1).contains(&quantile_ms(&st.ttft_by_source_us[0], 0.5)));
        assert!(recorder.progress_line().contains("ttft p50"));
    }
}
