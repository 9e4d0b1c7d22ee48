//! `POST /api/v1/agents/{agent_id}/stream`: the answer as server-sent events.
//!
//! `event: delta` with `{"text": ...}` as the model produces the answer, then one `event: done`
//! carrying the same JSON as the non-streamed answer, or one `event: error` with the usual
//! `{"error": {"code", "message"}}`. Nothing is sent until there is something to say: an error
//! found before the first piece of text (unknown agent, bad body, overload, quota, a model that
//! fails before answering) keeps its normal status and JSON body. While the stream is open, a
//! `: ping` comment goes out every `stream.keepalive_ms` so proxies keep a quiet stream open.

use super::AppState;
use super::{owner, ApiError, ApiJson, ChatRequest, ChatResponse};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use learning_chat_engine::chat::{StreamTap, Tapped};
use learning_chat_engine::coalesce::fanout::{FanoutReader, Sent};
use learning_chat_engine::conversations::{ConversationAnswer, ConversationError};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant as StdInstant;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The streams open on this server, bounded by `stream.max_open`.
#[derive(Debug)]
pub struct OpenStreams {
    open: AtomicUsize,
    max: usize,
}

impl OpenStreams {
    /// No stream open yet; at most `max` at once.
    pub fn new(max: usize) -> OpenStreams {
        crate::metrics::streams_limit(max);
        crate::metrics::streams_open(0);
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
        crate::metrics::streams_open(open);
        Some(StreamSlot(self.clone()))
    }
}

/// One open stream; frees its place when the stream ends, however it ends.
struct StreamSlot(Arc<OpenStreams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        crate::metrics::streams_open(open);
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
    let super::Question {
        agent_id,
        agent,
        request,
        message,
    } = super::question(&state, path, body)?;
    let Some(slot) = state.streams.try_open() else {
        crate::metrics::stream_refused();
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many answers are streaming on this server; try again shortly",
        );
        error.retry_after = Some(state.settings.stream.retry_after);
        return Err(error);
    };
    let deadline = Instant::now() + state.settings.request_timeout();
    let (tap, readers) = StreamTap::new();
    let owner = owner(caller.as_ref()).map(str::to_owned);
    let answer_state = state.clone();
    let answer_agent = agent;
    // Owned and boxed: after the headers go out it is polled by the response body, outside
    // this handler, with the request's flow (fair share) and trace context carried along.
    let answer: BoxFuture<'static, Result<ConversationAnswer, ConversationError>> = Box::pin(
        crate::telemetry::in_current_context(learning_chat_engine::admission::FLOW.scope(
            learning_chat_engine::admission::Flow::current(),
            async move {
                let state = answer_state;
                state
                    .conversations
                    .send_streamed(
                        &state.chat,
                        &answer_agent,
                        &message,
                        request.conversation_id.as_deref(),
                        owner.as_deref(),
                        deadline,
                        Some(&tap),
                    )
                    .await
            },
        )),
    );
    let (cost_tx, cost_rx) = tokio::sync::oneshot::channel();
    let mut driver = Driver {
        cost: Some(cost_tx),
        answer: Some(answer),
        readers,
        reader: None,
        joined: false,
        relayed: false,
        sent: Sent::new(),
        ping: None,
        started,
        first_sent: false,
        agent_id,
        slot: Some(slot),
        finished: false,
    };
    // Nothing goes out before the first piece of text or the outcome, so an early failure
    // keeps its status code.
    let first = match driver.next().await {
        Some(Event::Done(Err(error))) => {
            driver.finished = true;
            return Err(error.into());
        }
        Some(event) => event,
        None => {
            driver.finished = true;
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred",
            ));
        }
    };
    // What to charge the caller's key: known now when the whole answer was (a cached one),
    // else at the end of the stream (the key middleware waits for it).
    let cost = match &first {
        Event::Done(Ok(outcome)) => Some(crate::auth::AnswerCost {
            cached: outcome.answer.cached,
            prompt_tokens: outcome.answer.usage.prompt_tokens,
            output_tokens: outcome.answer.usage.output_tokens,
        }),
        _ => None,
    };
    let every = state.settings.stream.keepalive;
    if !every.is_zero() {
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        driver.ping = Some(ping);
    }
    let body = async_stream::stream! {
        let mut driver = driver;
        let mut event = Some(first);
        while let Some(current) = event.take() {
            let last = matches!(current, Event::Done(_));
            for frame in driver.frames(current) {
                crate::metrics::stream_bytes(frame.len());
                yield Ok::<Bytes, std::convert::Infallible>(frame);
            }
            if last {
                driver.finished = true;
                break;
            }
            event = driver.next().await;
        }
        driver.slot.take();
    };
    let mut response = Body::from_stream(body).into_response();
    match cost {
        Some(cost) => {
            response.extensions_mut().insert(cost);
        }
        None => {
            response
                .extensions_mut()
                .insert(crate::auth::PendingCost(Arc::new(parking_lot::Mutex::new(
                    Some(cost_rx),
                ))));
        }
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx honours this even where the location forgot `proxy_buffering off`.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

enum Event {
    Delta(String),
    Ping,
    Done(Result<ConversationAnswer, ConversationError>),
}

/// One stream's state: the answer being waited on, the pieces seen and sent.
struct Driver {
    answer: Option<BoxFuture<'static, Result<ConversationAnswer, ConversationError>>>,
    readers: UnboundedReceiver<Tapped>,
    reader: Option<FanoutReader>,
    /// Joined a call another request started (for the time-to-first-token label).
    joined: bool,
    /// Pieces came from another server.
    relayed: bool,
    sent: Sent,
    ping: Option<Interval>,
    started: StdInstant,
    first_sent: bool,
    agent_id: String,
    slot: Option<StreamSlot>,
    /// The outcome was sent (or answered before the stream): dropping is no cancellation.
    finished: bool,
    /// Tells the key middleware what the answer cost, once known.
    cost: Option<tokio::sync::oneshot::Sender<crate::auth::AnswerCost>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.finished {
            learning_chat_engine::metrics::stream_cancelled("client");
        }
    }
}

async fn next_piece(reader: &mut Option<FanoutReader>) -> Option<(usize, String)> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

async fn next_ping(ping: &mut Option<Interval>) {
    match ping {
        Some(ping) => {
            ping.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Driver {
    /// The next thing to send; `None` only if the answer was already delivered.
    async fn next(&mut self) -> Option<Event> {
        let Driver {
            answer,
            readers,
            reader,
            joined,
            relayed,
            sent,
            ping,
            ..
        } = self;
        let answer_future = answer.as_mut()?;
        loop {
            tokio::select! {
                biased;
                Some(tapped) = readers.recv() => {
                    *joined |= tapped.joined;
                    *reader = Some(tapped.reader);
                }
                piece = next_piece(reader) => match piece {
                    Some((offset, text)) => {
                        if let Some(new) = sent.accept(offset, &text) {
                            *relayed |= reader.as_ref().is_some_and(FanoutReader::relayed);
                            return Some(Event::Delta(new));
                        }
                    }
                    None => *reader = None,
                },
                result = answer_future.as_mut() => {
                    *answer = None;
                    return Some(Event::Done(result));
                }
                () = next_ping(ping) => return Some(Event::Ping),
            }
        }
    }

    /// The SSE frames of an event (a `done` may be preceded by the text the pieces missed).
    fn frames(&mut self, event: Event) -> Vec<Bytes> {
        match event {
            Event::Ping => vec![Bytes::from_static(b": ping\n\n")],
            Event::Delta(text) => {
                self.first_text(false);
                vec![delta_frame(&text)]
            }
            Event::Done(Ok(outcome)) => {
                let mut frames = Vec::with_capacity(2);
                let text = &outcome.answer.text;
                // The final answer fills in what the pieces did not deliver (a cached answer,
                // another server's answer, pieces trimmed from a long Redis Stream).
                match text.strip_prefix(self.sent.text()) {
                    Some(rest) => {
                        if !rest.is_empty() {
                            self.first_text(outcome.answer.cached);
                            frames.push(delta_frame(rest));
                        }
                    }
                    None => {
                        // The pieces sent belong to an answer that was then asked again and
                        // came out different: the learner's text cannot be completed.
                        tracing::warn!("streamed pieces disagree with the final answer");
                        let error = ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "stream_inconsistent",
                            "the answer changed while it was streaming; please ask again",
                        );
                        frames.push(error_frame(error));
                        return frames;
                    }
                }
                let answer = outcome.answer;
                if let Some(cost) = self.cost.take() {
                    let _ = cost.send(crate::auth::AnswerCost {
                        cached: answer.cached,
                        prompt_tokens: answer.usage.prompt_tokens,
                        output_tokens: answer.usage.output_tokens,
                    });
                }
                let body = ChatResponse {
                    response: answer.text,
                    agent_id: std::mem::take(&mut self.agent_id),
                    cached: answer.cached,
                    model: answer.model,
                    usage: answer.usage,
                    finish_reason: answer.finish_reason.to_owned(),
                    latency_ms: self.started.elapsed().as_millis() as u64,
                    conversation_id: outcome.conversation_id,
                    turn: outcome.turn,
                    history_truncated: outcome.history_truncated,
                };
                frames.push(frame("done", &body));
                frames
            }
            Event::Done(Err(error)) => vec![error_frame(error.into())],
        }
    }

    /// Records the time to the first text once.
    fn first_text(&mut self, cached: bool) {
        if self.first_sent {
            return;
        }
        self.first_sent = true;
        let source = if cached {
            "cached"
        } else if self.joined || self.relayed {
            "coalesced"
        } else {
            "fresh"
        };
        crate::metrics::stream_ttft(source, self.started.elapsed());
    }
}

fn frame<T: Serialize>(event: &str, data: &T) -> Bytes {
    // Serialising these plain structs cannot fail; an empty object keeps the frame valid.
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

fn delta_frame(text: &str) -> Bytes {
    frame(
        "delta",
        &StreamDelta {
            text: text.to_owned(),
        },
    )
}

fn error_frame(error: ApiError) -> Bytes {
    frame("error", &error.body())
}
