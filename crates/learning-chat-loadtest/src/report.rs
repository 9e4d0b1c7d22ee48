//! The final report: one struct, printed as text and optionally written as JSON.

use crate::recorder::{percent, quantile_ms, Snapshot, StreamCounts, STATUS_NO_RESPONSE};
use crate::sim::UpstreamStats;
use crate::stream::AnswerSource;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a microsecond histogram; zeros when it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q: f64| quantile_ms(h, q);
        Latency {
            p50: ms(0.50),
            p90: ms(0.90),
            p95: ms(0.95),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }
}

/// Streamed answers of one source (cached, coalesced or fresh).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Streams that ended with `done` from this source.
    pub completed: u64,
    /// Their time to first token.
    pub ttft_ms: Latency,
}

/// What streaming mode measured (`--stream`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Streamed requests finished.
    pub streams: u64,
    /// Streams that ended with `done`.
    pub completed: u64,
    /// Time to first token (first `delta`, or `done` for an empty answer) of every stream that
    /// got one.
    pub ttft_ms: Latency,
    /// Time to `done` of completed streams.
    pub total_ms: Latency,
    /// Completed streams by where the answer came from: `cached`, `coalesced` (only when the
    /// service's `done` says so) and `fresh`.
    pub by_source: BTreeMap<String, SourceReport>,
    /// Failures by code: the service's (`error` events, JSON error bodies), `http_<status>`
    /// without a code, or the load tester's `stream_cut`, `timeout`, `no_response`.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Failures after the stream had started.
    pub mid_stream_errors: u64,
    /// `delta` events received.
    pub deltas: u64,
    /// `: ping` comments received.
    pub pings: u64,
    /// Body bytes received.
    pub bytes: u64,
}

impl StreamReport {
    /// The report of streaming mode's counters.
    pub fn from_counts(s: &StreamCounts) -> StreamReport {
        StreamReport {
            streams: s.streams,
            completed: s.completed_total(),
            ttft_ms: Latency::from_histogram(&s.ttft_us),
            total_ms: Latency::from_histogram(&s.total_us),
            by_source: AnswerSource::ALL
                .iter()
                .map(|source| {
                    (
                        source.name().to_owned(),
                        SourceReport {
                            completed: s.completed[source.index()],
                            ttft_ms: Latency::from_histogram(&s.ttft_by_source_us[source.index()]),
                        },
                    )
                })
                .collect(),
            errors_by_code: s.errors_by_code.clone(),
            mid_stream_errors: s.mid_stream_errors,
            deltas: s.deltas,
            pings: s.pings,
            bytes: s.bytes,
        }
    }
}

/// The `failures_by_status` key of streams that started (2xx) but ended without `done`.
pub const STREAM_FAILED: &str = "stream";

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Which generator: `goose`, `open-loop` or `burst`.
    pub mode: String,
    /// What was asked (target URL, mix), for the record.
    pub description: String,
    /// Seconds from the first request to the report.
    pub duration_s: f64,
    /// Users started (goose mode), or concurrent requests (burst).
    pub users: u64,
    /// Requests finished.
    pub requests: u64,
    /// Requests finished per second over the run.
    pub requests_per_s: f64,
    /// 2xx responses.
    pub ok: u64,
    /// Requests that were not 2xx.
    pub failures: u64,
    /// Failures by status; `"0"` is no response (connection error or client timeout),
    /// `"stream"` a 2xx stream that ended without `done` (its codes: `stream.errors_by_code`).
    /// They add up to `failures`.
    pub failures_by_status: BTreeMap<String, u64>,
    /// Latency of every finished request, failures included (as locust and goose count).
    pub latency_ms: Latency,
    /// Latency of the 2xx responses alone.
    #[serde(default)]
    pub ok_latency_ms: Latency,
    /// Latency of the failures alone (how soon a refusal comes back).
    #[serde(default)]
    pub failed_latency_ms: Latency,
    /// 2xx responses with `"cached": true`.
    pub cached: u64,
    /// `cached / ok`.
    pub cache_hit_ratio: f64,
    /// Streaming mode's figures (`--stream`): time to first token, total time, stream errors.
    pub stream: Option<StreamReport>,
    /// The simulator's counters for the run, when its URL was given.
    pub upstream: Option<UpstreamStats>,
    /// Mode-specific figures (e.g. the open-loop generator's lag).
    pub extra: BTreeMap<String, f64>,
}

impl Report {
    /// A report from a recorder snapshot.
    pub fn from_snapshot(mode: &str, description: String, snapshot: &Snapshot) -> Report {
        let seconds = snapshot.elapsed.as_secs_f64().max(1e-9);
        let mut failures_by_status: BTreeMap<String, u64> = snapshot
            .by_status
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(status, n)| (status.to_string(), *n))
            .collect();
        // Every failure after the stream started came with a 2xx status.
        if let Some(s) = snapshot.stream.as_ref().filter(|s| s.mid_stream_errors > 0) {
            failures_by_status.insert(STREAM_FAILED.to_owned(), s.mid_stream_errors);
        }
        Report {
            mode: mode.to_owned(),
            description,
            duration_s: snapshot.elapsed.as_secs_f64(),
            users: snapshot.users,
            requests: snapshot.requests,
            requests_per_s: snapshot.requests as f64 / seconds,
            ok: snapshot.ok,
            failures: snapshot.failures(),
            failures_by_status,
            latency_ms: Latency::from_histogram(&snapshot.latency_us),
            ok_latency_ms: Latency::from_histogram(&snapshot.ok_latency_us),
            failed_latency_ms: Latency::from_histogram(&snapshot.failed_latency_us),
            cached: snapshot.cached,
            cache_hit_ratio: if snapshot.ok == 0 {
                0.0
            } else {
                snapshot.cached as f64 / snapshot.ok as f64
            },
            stream: snapshot.stream.as_ref().map(StreamReport::from_counts),
            upstream: None,
            extra: BTreeMap::new(),
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "=== learning-chat load test report ({}) ===",
            self.mode
        );
        let _ = writeln!(out, "target:        {}", self.description);
        if self.users > 0 {
            let _ = writeln!(
                out,
                "duration:      {:.1} s, {} users",
                self.duration_s, self.users
            );
        } else {
            let _ = writeln!(out, "duration:      {:.1} s", self.duration_s);
        }
        let _ = writeln!(
            out,
            "requests:      {} ({:.1} req/s), {} ok, {} failed",
            self.requests, self.requests_per_s, self.ok, self.failures
        );
        if self.failures_by_status.is_empty() {
            let _ = writeln!(out, "failures:      none");
        } else {
            let parts: Vec<String> = self
                .failures_by_status
                .iter()
                .map(|(status, n)| {
                    if status == &STATUS_NO_RESPONSE.to_string() {
                        format!("no response: {n}")
                    } else if status == STREAM_FAILED {
                        format!("failed mid-stream: {n}")
                    } else {
                        format!("{status}: {n}")
                    }
                })
                .collect();
            let _ = writeln!(out, "failures:      {}", parts.join(", "));
        }
        let _ = writeln!(out, "latency (ms):  {}", percentiles(l));
        if self.failures > 0 && self.ok > 0 {
            let _ = writeln!(out, "  ok (ms):     {}", percentiles(&self.ok_latency_ms));
            let _ = writeln!(
                out,
                "  failed (ms): {}",
                percentiles(&self.failed_latency_ms)
            );
        }
        let _ = writeln!(
            out,
            "cache hits:    {} of {} ok ({:.1}%)",
            self.cached,
            self.ok,
            percent(self.cached, self.ok)
        );
        if let Some(s) = &self.stream {
            let _ = writeln!(
                out,
                "streams:       {} streamed, {} completed, {} failed mid-stream; {} deltas, {} pings, {} bytes",
                s.streams, s.completed, s.mid_stream_errors, s.deltas, s.pings, s.bytes
            );
            let _ = writeln!(out, "ttft (ms):     {}", percentiles(&s.ttft_ms));
            let _ = writeln!(
                out,
                "total (ms):    {}   (completed streams)",
                percentiles(&s.total_ms)
            );
            for (source, r) in &s.by_source {
                if r.completed > 0 {
                    let _ = writeln!(
                        out,
                        "  {source:<11} {} completed, ttft {}",
                        r.completed,
                        percentiles(&r.ttft_ms)
                    );
                }
            }
            if !s.errors_by_code.is_empty() {
                let parts: Vec<String> = s
                    .errors_by_code
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect();
                let _ = writeln!(out, "stream errors: {}", parts.join(", "));
            }
        }
        match &self.upstream {
            Some(u) => {
                let _ = writeln!(
                    out,
                    "upstream:      {} calls seen by gemini-sim ({} ok, {} rate-limited, {} errors), in-flight peak {}, {:.3} calls per request",
                    u.requests,
                    u.ok,
                    u.rate_limited,
                    u.errors,
                    u.in_flight_peak,
                    if self.requests == 0 { 0.0 } else { u.requests as f64 / self.requests as f64 }
                );
                if u.streams > 0 {
                    let _ = writeln!(
                        out,
                        "               {} of them streams ({} cut by the simulator, {} cancelled by the service)",
                        u.streams, u.stream_cut, u.cancelled
                    );
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "upstream:      (pass --sim-url to count gemini-sim's calls)"
                );
            }
        }
        for (key, value) in &self.extra {
            let _ = writeln!(out, "{key}: {value:.3}");
        }
        out
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// `p50 .. p90 .. p95 .. p99 .. p99.9 .. max .. mean ..` in milliseconds.
fn percentiles(l: &Latency) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p95 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
        l.p50, l.p90, l.p95, l.p99, l.p999, l.max, l.mean
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Outcome, Recorder};
    use std::time::Duration;

    #[test]
    fn report_text_and_json() {
        let recorder = Recorder::new();
        for status in [200, 200, 200, 503, 0] {
            recorder.record(Outcome {
                status,
                latency: Duration::from_millis(10),
                cached: status == 200,
            });
        }
        let mut report = Report::from_snapshot("goose", "http://x".into(), &recorder.snapshot());
        report.upstream = Some(UpstreamStats {
            requests: 1,
            ..Default::default()
        });
        assert_eq!(report.failures, 2);
        assert_eq!(report.failures_by_status["503"], 1);
        assert_eq!(report.cache_hit_ratio, 1.0);
        let text = report.to_text();
        assert!(
            text.contains("503: 1") && text.contains("no response: 1"),
            "{text}"
        );
        assert!(text.contains("1 calls seen by gemini-sim"), "{text}");
        // A rate that serde_json's default (inexact) float parser reads
        // back one ulp off; reports must survive a JSON round trip exactly.
        report.requests_per_s = 3.979_188_680_520_228_3;
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
