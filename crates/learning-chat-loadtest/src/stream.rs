//! Streaming mode: one request to `POST /api/v1/agents/{agent}/stream`, its event stream read as
//! it arrives, and what the learner saw: the time to the first words, the time to the end, and
//! how it ended.
//!
//! The stream's events: `delta` `{"text"}` chunks, then one `done` with the answer's
//! fields (`cached`, ...) or one `error` `{"error": {"code", "message"}}`; `: ping` comments keep
//! idle streams open. Errors found before the stream starts keep their HTTP status and JSON body.
//!
//! [`StreamTracker`] holds the reading logic without any HTTP client, so the goose scenario
//! (goose's own reqwest) and the open-loop and burst generators (ours) share it.

use crate::recorder::STATUS_NO_RESPONSE;
use gemini_wire::sse::{SseDecoder, SseEvent, SseItem};
use std::time::{Duration, Instant};

/// Where a completed answer came from, as far as the `done` event tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnswerSource {
    /// `"cached": true`: served from the answer cache.
    Cached,
    /// Joined another learner's upstream stream (`"coalesced": true`, when the service says so).
    Coalesced,
    /// Neither: this request's own model call (or a service that does not tell coalescing).
    Fresh,
}

impl AnswerSource {
    /// Every source, in report order.
    pub const ALL: [AnswerSource; 3] = [
        AnswerSource::Cached,
        AnswerSource::Coalesced,
        AnswerSource::Fresh,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            AnswerSource::Cached => "cached",
            AnswerSource::Coalesced => "coalesced",
            AnswerSource::Fresh => "fresh",
        }
    }

    /// Index into per-source arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Failure codes the load tester gives itself (the service's own codes come from its bodies).
pub mod codes {
    /// The body ended, or the connection broke, before a `done` or `error` event.
    pub const STREAM_CUT: &str = "stream_cut";
    /// The client's timeout ran out while reading.
    pub const TIMEOUT: &str = "timeout";
    /// No HTTP response at all (connect error, reset before the headers).
    pub const NO_RESPONSE: &str = "no_response";
    /// A `done` event whose data is not a JSON object.
    pub const BAD_DONE: &str = "bad_done_event";
    /// An `error` event without `{"error": {"code"}}`.
    pub const BAD_ERROR: &str = "bad_error_event";
    /// A 2xx answer that is not `text/event-stream` (e.g. the JSON endpoint).
    pub const NOT_EVENT_STREAM: &str = "not_event_stream";
    /// Bytes that do not decode as an event stream (not UTF-8, or an event over the decoder's
    /// size limit).
    pub const BAD_STREAM: &str = "bad_event_stream";
}

/// How one stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// A `done` event.
    Done {
        /// Cached, coalesced or fresh.
        source: AnswerSource,
        /// The conversation to follow up in, when the service started or continued one.
        conversation_id: Option<String>,
    },
    /// Anything else; `code` is the service's error code (from an `error` event or a pre-stream
    /// JSON body, `http_<status>` without one) or one of [`codes`].
    Failed {
        /// What went wrong.
        code: String,
        /// True when it happened after the stream started (an `error` event or a cut), false
        /// for an HTTP error status or no response.
        mid_stream: bool,
    },
}

/// What one streamed request looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOutcome {
    /// HTTP status, or [`STATUS_NO_RESPONSE`].
    pub status: u16,
    /// Time from sending to the first `delta` (or to `done` for an answer without text).
    pub ttft: Option<Duration>,
    /// Time from sending to the `done` or `error` event, or to the end of the body.
    pub total: Duration,
    /// How it ended.
    pub end: StreamEnd,
    /// `delta` events received.
    pub deltas: u64,
    /// Comments received (`: ping`).
    pub pings: u64,
    /// Body bytes received.
    pub bytes: u64,
}

impl StreamOutcome {
    /// True when the stream delivered a whole answer.
    pub fn completed(&self) -> bool {
        matches!(self.end, StreamEnd::Done { .. })
    }

    /// The `cached` flag of a completed answer.
    pub fn cached(&self) -> bool {
        matches!(
            self.end,
            StreamEnd::Done {
                source: AnswerSource::Cached,
                ..
            }
        )
    }

    /// A request that got no HTTP response.
    pub fn no_response(total: Duration, timed_out: bool) -> StreamOutcome {
        StreamOutcome {
            status: STATUS_NO_RESPONSE,
            ttft: None,
            total,
            end: StreamEnd::Failed {
                code: if timed_out {
                    codes::TIMEOUT
                } else {
                    codes::NO_RESPONSE
                }
                .to_owned(),
                mid_stream: false,
            },
            deltas: 0,
            pings: 0,
            bytes: 0,
        }
    }

    /// A non-2xx answer before the stream started: the code of its JSON error body.
    pub fn http_error(status: u16, body: &[u8], total: Duration) -> StreamOutcome {
        StreamOutcome {
            status,
            ttft: None,
            total,
            end: StreamEnd::Failed {
                code: error_code(body).unwrap_or_else(|| format!("http_{status}")),
                mid_stream: false,
            },
            deltas: 0,
            pings: 0,
            bytes: body.len() as u64,
        }
    }
}

/// How reading the body stopped, as the HTTP client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body ended normally.
    Eof,
    /// The connection broke mid-body.
    Broken,
    /// The client's timeout ran out.
    TimedOut,
}

/// Reads one 2xx event stream: feed it each body chunk with the time it arrived, then
/// [`StreamTracker::finish`] it.
#[derive(Debug)]
pub struct StreamTracker {
    sent: Instant,
    status: u16,
    decoder: SseDecoder,
    ttft: Option<Duration>,
    /// The `done`/`error` event and when it came; later bytes change nothing.
    end: Option<(StreamEnd, Duration)>,
    deltas: u64,
    pings: u64,
    bytes: u64,
}

impl StreamTracker {
    /// A tracker for a response with `status` to a request sent at `sent`.
    pub fn new(sent: Instant, status: u16) -> StreamTracker {
        StreamTracker {
            sent,
            status,
            decoder: SseDecoder::new(),
            ttft: None,
            end: None,
            deltas: 0,
            pings: 0,
            bytes: 0,
        }
    }

    /// True once `done` or `error` came: the rest of the body does not matter.
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// Adds a body chunk that arrived at `at`.
    pub fn feed(&mut self, chunk: &[u8], at: Instant) {
        self.bytes += chunk.len() as u64;
        if self.end.is_some() {
            return;
        }
        let elapsed = at.saturating_duration_since(self.sent);
        self.decoder.feed(chunk);
        while self.end.is_none() {
            let item = match self.decoder.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    self.end = Some((failed(codes::BAD_STREAM), elapsed));
                    break;
                }
            };
            match item {
                SseItem::Comment(_) => self.pings += 1,
                SseItem::Event(SseEvent {
                    event: name, data, ..
                }) => match name.as_str() {
                    "delta" => {
                        self.deltas += 1;
                        self.ttft.get_or_insert(elapsed);
                    }
                    "done" => {
                        // An empty answer's first (and only) words are its `done`.
                        self.ttft.get_or_insert(elapsed);
                        let end = match done_fields(&data) {
                            Some(end) => end,
                            None => failed(codes::BAD_DONE),
                        };
                        self.end = Some((end, elapsed));
                    }
                    "error" => {
                        let code =
                            error_code(data.as_bytes()).unwrap_or_else(|| codes::BAD_ERROR.into());
                        self.end = Some((
                            StreamEnd::Failed {
                                code,
                                mid_stream: true,
                            },
                            elapsed,
                        ));
                    }
                    // Unknown events are the service's business; a load tester skips them.
                    _ => {}
                },
            }
        }
    }

    /// The outcome, once the body stopped (`how`) at `at`.
    pub fn finish(self, how: BodyEnd, at: Instant) -> StreamOutcome {
        let (end, total) = match self.end {
            Some(end) => end,
            None => {
                let code = match how {
                    BodyEnd::TimedOut => codes::TIMEOUT,
                    BodyEnd::Eof | BodyEnd::Broken => codes::STREAM_CUT,
                };
                (failed(code), at.saturating_duration_since(self.sent))
            }
        };
        StreamOutcome {
            status: self.status,
            ttft: self.ttft,
            total,
            end,
            deltas: self.deltas,
            pings: self.pings,
            bytes: self.bytes,
        }
    }
}

fn failed(code: &str) -> StreamEnd {
    StreamEnd::Failed {
        code: code.to_owned(),
        mid_stream: true,
    }
}

/// The end a `done` event's data describes; `None` when it is not a JSON object.
fn done_fields(data: &str) -> Option<StreamEnd> {
    #[derive(serde::Deserialize)]
    struct Done {
        #[serde(default)]
        cached: bool,
        /// Not in the documented fields of `done`; read when a service adds it.
        #[serde(default)]
        coalesced: bool,
        #[serde(default)]
        conversation_id: Option<String>,
    }
    let done: Done = serde_json::from_str(data).ok()?;
    let source = if done.cached {
        AnswerSource::Cached
    } else if done.coalesced {
        AnswerSource::Coalesced
    } else {
        AnswerSource::Fresh
    };
    Some(StreamEnd::Done {
        source,
        conversation_id: done.conversation_id,
    })
}

/// `error.code` of a learning-chat error body.
fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .map(|b| b.error.code)
        .filter(|c| !c.is_empty())
}

/// True for a `text/event-stream` content type (parameters allowed).
pub fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
    })
}

/// The stream endpoint of `agent` under the service's base URL.
pub fn stream_path(agent: &str) -> String {
    format!("/api/v1/agents/{agent}/stream")
}

/// Sends one streaming request with our reqwest client and reads its events to the end.
pub async fn send(request: reqwest::RequestBuilder) -> StreamOutcome {
    let sent = Instant::now();
    let response = request
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await;
    read(sent, response).await
}

/// Reads the answer to a streaming request sent at `sent` (by us or by goose, which uses the
/// same reqwest) to the end of its events.
pub async fn read(
    sent: Instant,
    response: Result<reqwest::Response, reqwest::Error>,
) -> StreamOutcome {
    let response = match response {
        Ok(response) => response,
        Err(e) => return StreamOutcome::no_response(sent.elapsed(), e.is_timeout()),
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = response;
    if !(200..300).contains(&status) || !is_event_stream(content_type.as_deref()) {
        let body = response.bytes().await.unwrap_or_default();
        let mut outcome = StreamOutcome::http_error(status, &body, sent.elapsed());
        if (200..300).contains(&status) {
            outcome.end = failed(codes::NOT_EVENT_STREAM);
        }
        return outcome;
    }
    let mut tracker = StreamTracker::new(sent, status);
    // Read to the end even after `done`: the connection then goes back to the pool.
    let how = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => tracker.feed(&chunk, Instant::now()),
            Ok(None) => break BodyEnd::Eof,
            Err(e) if e.is_timeout() => break BodyEnd::TimedOut,
            Err(_) => break BodyEnd::Broken,
        }
    };
    tracker.finish(how, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sent: Instant, ms: u64) -> Instant {
        sent + Duration::from_millis(ms)
    }

    #[test]
    fn ttft_is_the_first_delta_and_total_the_done() {
        let sent = Instant::now();
        let mut t = StreamTracker::new(sent, 200);
        t.feed(b": ping\n\n", at(sent, 5));
        t.feed(
            b"event: delta\ndata: {\"text\":\"Two\"}\n\nevent: del",
            at(sent, 100),
        );
        t.feed(b"ta\ndata: {\"text\":\" plus\"}\n\n", at(sent, 150));
        t.feed(
            b"event: done\ndata: {\"cached\":false,\"conversation_id\":\"c1\"}\n\n",
            at(sent, 400),
        );
        assert!(t.ended());
        let o = t.finish(BodyEnd::Eof, at(sent, 450));
        assert_eq!(o.ttft, Some(Duration::from_millis(100)));
        assert_eq!(o.total, Duration::from_millis(400));
        assert_eq!((o.deltas, o.pings), (2, 1));
        assert_eq!(
            o.end,
            StreamEnd::Done {
                source: AnswerSource::Fresh,
                conversation_id: Some("c1".into())
            }
        );
    }

    #[test]
    fn empty_answers_cached_and_coalesced() {
        let sent = Instant::now();
        let mut t = StreamTracker::new(sent, 200);
        t.feed(b"event: done\ndata: {\"cached\":true}\n\n", at(sent, 3));
        let o = t.finish(BodyEnd::Eof, at(sent, 4));
        assert_eq!(o.ttft, Some(Duration::from_millis(3)));
        assert!(o.cached() && o.completed());
        let mut t = StreamTracker::new(sent, 200);
        t.feed(b"event: done\ndata: {\"coalesced\":true}\n\n", at(sent, 3));
        assert!(matches!(
            t.finish(BodyEnd::Eof, at(sent, 4)).end,
            StreamEnd::Done {
                source: AnswerSource::Coalesced,
                ..
            }
        ));
    }

    #[test]
    fn errors_and_cuts() {
        let sent = Instant::now();
        let mut t = StreamTracker::new(sent, 200);
        t.feed(b"event: delta\ndata: {\"text\":\"a\"}\n\n", at(sent, 10));
        t.feed(
            b"event: error\ndata: {\"error\":{\"code\":\"upstream_error\",\"message\":\"m\"}}\n\n",
            at(sent, 20),
        );
        let o = t.finish(BodyEnd::Eof, at(sent, 30));
        assert_eq!(o.total, Duration::from_millis(20));
        assert_eq!(
            o.end,
            StreamEnd::Failed {
                code: "upstream_error".into(),
                mid_stream: true
            }
        );
        for (how, code) in [
            (BodyEnd::Eof, codes::STREAM_CUT),
            (BodyEnd::Broken, codes::STREAM_CUT),
            (BodyEnd::TimedOut, codes::TIMEOUT),
        ] {
            let mut t = StreamTracker::new(sent, 200);
            t.feed(
                b"event: delta\ndata: {\"text\":\"a\"}\n\nevent: done\ndata: {\"ca",
                at(sent, 10),
            );
            let o = t.finish(how, at(sent, 30));
            assert_eq!(o.total, Duration::from_millis(30));
            assert_eq!(o.ttft, Some(Duration::from_millis(10)));
            assert!(matches!(&o.end, StreamEnd::Failed { code: c, .. } if c == code));
        }
        let o = StreamOutcome::http_error(
            503,
            br#"{"error":{"code":"overloaded","message":"busy"}}"#,
            Duration::from_millis(1),
        );
        assert!(
            matches!(&o.end, StreamEnd::Failed { code, mid_stream: false } if code == "overloaded")
        );
        let o = StreamOutcome::http_error(404, b"", Duration::from_millis(1));
        assert!(matches!(&o.end, StreamEnd::Failed { code, .. } if code == "http_404"));
    }

    #[test]
    fn bytes_that_are_no_event_stream_end_it() {
        let sent = Instant::now();
        let mut t = StreamTracker::new(sent, 200);
        t.feed(
            b"event: delta\ndata: {\"text\":\"a\"}\n\nevent: delta\ndata: \xff\n\n",
            at(sent, 10),
        );
        assert!(t.ended());
        let o = t.finish(BodyEnd::Eof, at(sent, 30));
        assert_eq!((o.deltas, o.total), (1, Duration::from_millis(10)));
        assert!(matches!(
            &o.end,
            StreamEnd::Failed { code, mid_stream: true } if code == codes::BAD_STREAM
        ));
    }

    #[test]
    fn content_types() {
        assert!(is_event_stream(Some("text/event-stream")));
        assert!(is_event_stream(Some("Text/Event-Stream; charset=utf-8")));
        assert!(!is_event_stream(Some("application/json")));
        assert!(!is_event_stream(None));
    }
}
