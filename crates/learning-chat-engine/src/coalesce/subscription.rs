//! One request's wait on the call for its question ([`Subscription`]): the answer's pieces so
//! far, then live, then the call's outcome; asked again when the call joined ran out of its
//! first asker's earlier deadline (see [`super::local`]).

use super::fanout::{FanoutReader, Sent};
use super::local::{CallError, Joined, LocalCoalescer, Start, MAX_REASKS};
use crate::cache::CacheKey;
use std::pin::Pin;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

/// What a [`Subscription`] has next.
#[derive(Debug, PartialEq)]
pub enum Update<T, E> {
    /// More of the answer's text: never sent before, even across a call asked again.
    Piece(String),
    /// The call's outcome (or the asker's deadline): the last update.
    Done(Result<T, E>),
}

/// One request's wait on the call for its question: the answer's pieces so far, then live, then
/// the outcome. Dropping it gives up the wait (the last waiter of a streamed call cancels it).
pub struct Subscription<T, E> {
    calls: LocalCoalescer<T, E>,
    key: CacheKey,
    deadline: Instant,
    streaming: bool,
    start: Start<T, E>,
    /// The call waited on now; `None` once the outcome is out.
    waiting: Option<Waiting<T, E>>,
    reasks: u32,
    /// A call waited on was started by another request (for the time-to-first-token label).
    joined: bool,
    /// Pieces came from another server.
    relayed: bool,
    sent: Sent,
    /// The asker's deadline, made on the first wait for pieces.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The call a subscription waits on now.
struct Waiting<T, E> {
    joined: Joined<T, E>,
    /// `None` for an asker that does not stream, and once the pieces end.
    reader: Option<FanoutReader>,
    /// Spans the wait; the call's task, when this request started it, hangs under it.
    span: tracing::Span,
}

impl<T, E> Subscription<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: CallError,
{
    /// A wait on `key` for an asker with `deadline`, started now.
    pub(super) fn new(
        calls: LocalCoalescer<T, E>,
        key: CacheKey,
        deadline: Instant,
        streaming: bool,
        start: Start<T, E>,
    ) -> Subscription<T, E> {
        let mut subscription = Subscription {
            calls,
            key,
            deadline,
            streaming,
            start,
            waiting: None,
            reasks: 0,
            joined: false,
            relayed: false,
            sent: Sent::new(),
            timer: None,
        };
        subscription.wait();
        subscription
    }

    /// Joins or starts the call to wait on.
    fn wait(&mut self) {
        // The call's task starts inside this span, so the model call hangs under the wait of
        // the request that started it; a request that joined one has a wait with no children.
        let span = crate::trace_span!("coalesce.wait", coalesce.attempt = i64::from(self.reasks));
        let joined = span.in_scope(|| {
            self.calls
                .join_or_start(self.key, self.deadline, self.streaming, &mut self.start)
        });
        self.joined |= joined.joined;
        let reader = self.streaming.then(|| joined.fanout.subscribe());
        self.waiting = Some(Waiting {
            joined,
            reader,
            span,
        });
    }

    /// Takes the call's result: `None` when this asker asks again instead.
    fn settle(&mut self, result: Result<T, E>) -> Option<Result<T, E>> {
        let call_deadline = self.waiting.take().map(|w| w.joined.deadline)?;
        match result {
            // The call ran out of its first asker's time, not ours: ask again (the entry is
            // gone by now, so this starts, or joins, a call under a later deadline).
            Err(error)
                if error.bound_by_deadline()
                    && call_deadline < self.deadline
                    && self.reasks < MAX_REASKS
                    && Instant::now() < self.deadline =>
            {
                self.reasks += 1;
                crate::coalesce::metrics::coalesced_retry();
                self.wait();
                None
            }
            result => Some(result),
        }
    }

    /// The next piece of the answer, or the outcome; `None` after the outcome.
    pub async fn next(&mut self) -> Option<Update<T, E>> {
        let deadline = self.deadline;
        loop {
            let Subscription {
                waiting,
                timer,
                sent,
                relayed,
                ..
            } = self;
            let waiting = waiting.as_mut()?;
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let Waiting {
                joined,
                reader,
                span,
            } = waiting;
            let next = async {
                tokio::select! {
                    biased;
                    piece = next_piece(reader) => Next::Piece(piece),
                    result = &mut joined.shared => Next::Outcome(result),
                    () = timer.as_mut() => Next::TimedOut,
                }
            }
            .instrument(span.clone())
            .await;
            match next {
                Next::Piece(Some((offset, text))) => {
                    if let Some(new) = sent.accept(offset, &text) {
                        *relayed |= reader.as_ref().is_some_and(FanoutReader::relayed);
                        return Some(Update::Piece(new));
                    }
                }
                Next::Piece(None) => *reader = None,
                Next::TimedOut => {
                    self.waiting = None;
                    return Some(Update::Done(Err(E::timed_out())));
                }
                Next::Outcome(result) => {
                    if let Some(result) = self.settle(result) {
                        return Some(Update::Done(result));
                    }
                }
            }
        }
    }

    /// The outcome, without the pieces.
    pub async fn finish(mut self) -> Result<T, E> {
        loop {
            let Some(waiting) = self.waiting.as_mut() else {
                // Only after `next` took the outcome: nothing is left to wait for.
                return Err(E::timed_out());
            };
            let shared = &mut waiting.joined.shared;
            let result = tokio::time::timeout_at(self.deadline, shared)
                .instrument(waiting.span.clone())
                .await;
            let Ok(result) = result else {
                return Err(E::timed_out());
            };
            if let Some(result) = self.settle(result) {
                return result;
            }
        }
    }

    /// True when a call waited on was started by another request.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// True when pieces came from another server's stream.
    pub fn relayed(&self) -> bool {
        self.relayed
    }

    /// The text handed out as pieces so far.
    pub fn sent(&self) -> &str {
        self.sent.text()
    }
}

enum Next<T, E> {
    Piece(Option<(usize, String)>),
    Outcome(Result<T, E>),
    TimedOut,
}

async fn next_piece(reader: &mut Option<FanoutReader>) -> Option<(usize, String)> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}
