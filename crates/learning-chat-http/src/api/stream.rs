//! `POST /api/v1/agents/{agent_id}/stream`: the answer as server-sent events.
//!
//! `event: delta` with `{"text": ...}` as the model produces the answer, then one `event: done`
//! carrying the same JSON as the non-streamed answer, or one `event: error` with the usual
//! `{"error": {"code", "message"}}`. Nothing is sent until there is something to say: an error
//! found before the first piece of text (unknown agent, bad body, overload, quota, a model that
//! fails before answering) keeps its normal status and JSON body. While the stream is open, a
//! `: ping` comment goes out after `stream.keepalive_ms` without an event, so proxies keep a
//! quiet stream open (axum's [`Sse`] with [`KeepAlive`]).

pub mod metrics;

use super::AppState;
use super::{asker, bill, ApiError, ApiJson, ChatRequest, ChatResponse};
use crate::auth::Bill;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use learning_chat_engine::chat::{Answer, Ask, ChatError, Live, Piece, Reply};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant as StdInstant;
use tokio::time::Instant;
use tracing::Instrument;

/// The streams open on this server, bounded by `stream.max_open`.
#[derive(Debug)]
pub struct OpenStreams {
    open: AtomicUsize,
    max: usize,
}

impl OpenStreams {
    /// No stream open yet; at most `max` at once.
    pub fn new(max: usize) -> OpenStreams {
        crate::api::stream::metrics::streams_limit(max);
        crate::api::stream::metrics::streams_open(0);
        OpenStreams {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn try_open(self: &Arc<Self>) -> Option<StreamSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        let open = taken.ok()? + 1;
        crate::api::stream::metrics::streams_open(open);
        Some(StreamSlot(self.clone()))
    }
}

/// One open stream; frees its place when the stream ends, however it ends.
pub(crate) struct StreamSlot(Arc<OpenStreams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        crate::api::stream::metrics::streams_open(open);
    }
}

/// The text of an `event: delta`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamDelta {
    /// The next piece of the answer (never empty); the pieces joined are the whole answer.
    pub text: String,
}

/// Stream a tutor's answer as server-sent events. Same body as the chat endpoint.
///
/// Events, in order: `delta` (data `{"text": "..."}`, one or more), then exactly one of `done`
/// (data: the same JSON object as the chat endpoint's answer, `conversation_id` included) or
/// `error` (data `{"error": {"code", "message"}}`, e.g. a model stream cut mid-way). Comment
/// lines `: ping` keep an idle stream open. Errors found before the first piece of text answer
/// with their usual status and JSON body instead of a stream.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/stream",
    params(("agent_id" = String, Path, description = "Agent id, e.g. `math`")),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "`text/event-stream`: `event: delta` (data: StreamDelta)..., then `event: done` (data: ChatResponse) or `event: error` (data: ErrorBody); `: ping` comments in between", content_type = "text/event-stream", body = StreamDelta),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 401, description = "Missing or unknown API key (auth.mode = required)", body = super::ErrorBody),
        (status = 404, description = "Unknown agent or conversation", body = super::ErrorBody),
        (status = 409, description = "Conversation of another agent, or busy", body = super::ErrorBody),
        (status = 422, description = "Missing or empty message, or blocked by safety filters", body = super::ErrorBody),
        (status = 429, description = "A per-key or per-learner limit; see Retry-After", body = super::ErrorBody),
        (status = 502, description = "The model failed before the first piece of text", body = super::ErrorBody),
        (status = 503, description = "Overloaded, quota used up, or `stream.max_open` streams open (`too_many_streams`); see Retry-After", body = super::ErrorBody),
        (status = 504, description = "Deadline exceeded before the first piece of text", body = super::ErrorBody),
    )
)]
pub async fn chat_stream(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = StdInstant::now();
    let Path(agent_id) = path?;
    let caller = caller.as_ref().map(|axum::Extension(caller)| caller);
    let super::Question {
        agent,
        request,
        message,
    } = super::question(&state, &agent_id, body.map(|ApiJson(r)| r))?;
    let slot = open_stream(&state)?;
    let ask = Ask {
        agent,
        message,
        conversation: request.conversation_id.into(),
        deadline: Instant::now() + state.settings.request_timeout(),
        caller: asker(caller),
        wants_stream: true,
    };
    let reply = state.chat.ask(ask).await?;
    let stream = Streamed {
        started,
        bill: bill(caller).cloned(),
        slot,
    };
    respond(&state, reply, stream, Events { agent_id }).await
}

/// Takes a place for a stream under `stream.max_open`, or refuses with 503 `too_many_streams`.
pub(crate) fn open_stream(state: &AppState) -> Result<StreamSlot, ApiError> {
    state.streams.try_open().ok_or_else(|| {
        crate::api::stream::metrics::stream_refused();
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many answers are streaming on this server; try again shortly",
        );
        error.retry_after = Some(state.settings.stream.retry_after);
        error
    })
}

/// How a stream's pieces go out: this service's events, or OpenAI's chunks.
pub(crate) trait StreamFormat: Send + 'static {
    /// The event of the next piece of the answer's text (never empty), if it goes out.
    fn text(&mut self, text: String) -> Option<Event>;
    /// The events that end the stream with its answer (begun at `started`).
    fn done(&mut self, answer: Answer, started: StdInstant) -> Vec<Event>;
    /// The events that end the stream with an error.
    fn error(&mut self, error: ChatError) -> Vec<Event>;
}

/// The native stream's events: `delta`, then `done` or `error`.
struct Events {
    agent_id: String,
}

impl StreamFormat for Events {
    fn text(&mut self, text: String) -> Option<Event> {
        Some(delta(text))
    }

    fn done(&mut self, answer: Answer, started: StdInstant) -> Vec<Event> {
        let agent_id = std::mem::take(&mut self.agent_id);
        vec![event("done", &ChatResponse::new(answer, agent_id, started))]
    }

    fn error(&mut self, error: ChatError) -> Vec<Event> {
        vec![error_event(error)]
    }
}

/// What a stream's request brings to its response.
pub(crate) struct Streamed {
    /// When the request began.
    pub started: StdInstant,
    /// Charged when the answer is complete.
    pub bill: Option<Bill>,
    /// Its place under `stream.max_open`.
    pub slot: StreamSlot,
}

/// The server-sent events of `reply` in `format`. Nothing goes out before the first piece of
/// text or the outcome, so an error found before it keeps its status code (returned here).
pub(crate) async fn respond<F: StreamFormat>(
    state: &AppState,
    reply: Reply,
    streamed: Streamed,
    format: F,
) -> Result<Response, ApiError> {
    let Streamed {
        started,
        bill,
        slot,
    } = streamed;
    let mut driver = Driver {
        started,
        first_sent: false,
        bill,
        finished: false,
        format,
        _slot: slot,
    };
    let (first, live) = match reply {
        Reply::Ready(answer) => {
            // Charged now: the key's hold ends with this handler, as for a JSON answer.
            if let Some(bill) = driver.bill.take() {
                bill.charge(&answer);
            }
            (Piece::Done(Ok(answer)), None)
        }
        Reply::Live(mut live) => match live.next().await {
            Some(Piece::Done(Err(error))) => {
                driver.finished = true;
                return Err(error.into());
            }
            Some(piece) => (piece, Some(live)),
            None => {
                driver.finished = true;
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred",
                ));
            }
        },
    };
    // Polled by the response body, outside this handler: the request's trace and Sentry
    // context go along.
    let span = tracing::Span::current();
    let hub = sentry::Hub::current();
    let events = async_stream::stream! {
        let mut driver = driver;
        let mut live = live;
        let mut piece = Some(first);
        while let Some(current) = piece.take() {
            let coalesced = live.as_deref().is_some_and(Live::coalesced);
            let done = matches!(current, Piece::Done(_));
            for event in driver.events(current, coalesced) {
                yield Ok::<Event, Infallible>(event);
            }
            if done {
                break;
            }
            if let Some(live) = live.as_mut() {
                let next = live.next().instrument(span.clone());
                piece = sentry::SentryFutureExt::bind_hub(next, hub.clone()).await;
            }
        }
    };
    let sse = Sse::new(events);
    let every = state.settings.stream.keepalive;
    let mut response = if !every.is_zero() {
        sse.keep_alive(KeepAlive::new().interval(every).text("ping"))
            .into_response()
    } else {
        sse.into_response()
    };
    // nginx honours this even where the location forgot `proxy_buffering off`.
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Every byte sent, keep-alive comments included.
    Ok(response.map(|body| {
        Body::from_stream(body.into_data_stream().inspect(|frame| {
            if let Ok(bytes) = frame {
                crate::api::stream::metrics::stream_bytes(bytes.len());
            }
        }))
    }))
}

/// One stream's state: what was sent, for the metrics and the bill.
struct Driver<F> {
    started: StdInstant,
    /// Some text went out.
    first_sent: bool,
    /// Charged when the answer is complete; dropped then, so the key is settled.
    bill: Option<Bill>,
    /// The outcome was sent (or answered before the stream): dropping is no cancellation.
    finished: bool,
    format: F,
    _slot: StreamSlot,
}

impl<F> Drop for Driver<F> {
    fn drop(&mut self) {
        if !self.finished {
            learning_chat_engine::coalesce::metrics::stream_cancelled("client");
        }
    }
}

impl<F: StreamFormat> Driver<F> {
    /// The SSE events of a piece (a ready answer is its text as one piece, then the end).
    fn events(&mut self, piece: Piece, coalesced: bool) -> Vec<Event> {
        match piece {
            Piece::Text(text) => {
                self.first_text(false, coalesced);
                self.format.text(text).into_iter().collect()
            }
            Piece::Done(Ok(answer)) => {
                self.finished = true;
                let mut events = Vec::with_capacity(3);
                // A live reply's pieces make up its answer; a ready one (from the cache) goes
                // out here as one piece.
                if !self.first_sent && !answer.text.is_empty() {
                    self.first_text(answer.cached, coalesced);
                    events.extend(self.format.text(answer.text.to_string()));
                }
                if let Some(bill) = self.bill.take() {
                    bill.charge(&answer);
                }
                events.extend(self.format.done(answer, self.started));
                events
            }
            Piece::Done(Err(error)) => {
                self.finished = true;
                self.format.error(error)
            }
        }
    }

    /// Records the time to the first text once.
    fn first_text(&mut self, cached: bool, coalesced: bool) {
        if self.first_sent {
            return;
        }
        self.first_sent = true;
        let source = if cached {
            "cached"
        } else if coalesced {
            "coalesced"
        } else {
            "fresh"
        };
        crate::api::stream::metrics::stream_ttft(source, self.started.elapsed());
    }
}

/// An `event: NAME` with `data` as its JSON (one line: JSON escapes line breaks).
fn event<T: Serialize>(name: &str, data: &T) -> Event {
    // Serialising these plain structs cannot fail; an empty object keeps the event valid.
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(name).data(json)
}

fn delta(text: String) -> Event {
    event("delta", &StreamDelta { text })
}

fn error_event(error: ChatError) -> Event {
    event("error", &ApiError::from(error).body())
}
