//! One model call per question on this server: identical questions in flight share one spawned
//! call, so the model is asked once and the answer is kept even if the first asker goes away.
//!
//! The call runs in its own task under its first asker's deadline. Its entry is removed by a drop
//! guard, so a call that ends, panics or is aborted never leaves its question stuck. A later asker
//! with more time left, whose shared call failed only because the first asker's time ran out,
//! asks again (at most [`MAX_REASKS`] times) instead of inheriting that failure.
//!
//! Each asker holds a [`Subscription`]: the pieces of the answer so far, then live, then the
//! call's outcome. Each call has a [`Fanout`]: a call started by a streaming request publishes
//! its pieces there and is cancelled when its last waiter goes away (its output tokens would be
//! paid for nobody); a call started by a JSON request runs to the end, as its answer is kept for
//! the next asker.

use super::fanout::Fanout;
pub use super::subscription::{Subscription, Update};
use crate::cache::CacheKey;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Asks beyond the first for one question when the shared call ran out of someone else's
/// deadline; bounds the loop, not the time (each ask is bounded by the asker's own deadline).
pub const MAX_REASKS: u32 = 2;

/// What the coalescer needs to know of a call's error type.
pub trait CallError: Clone + Send + Sync + 'static {
    /// The error of an asker whose own deadline passed while it waited.
    fn timed_out() -> Self;
    /// The error of a call whose task ended without a result (it panicked or was aborted).
    fn task_failed(error: tokio::task::JoinError) -> Self;
    /// True when the error says only that the call's own time ran out: someone else waiting on
    /// the same call with more time left should ask again instead of inheriting it.
    fn bound_by_deadline(&self) -> bool;
}

type SharedResult<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

/// What starts a call: handed the fan-out to stream into when the asker streams.
pub(super) type Start<T, E> =
    Box<dyn FnMut(Option<Arc<Fanout>>) -> BoxFuture<'static, Result<T, E>> + Send>;

/// The calls in flight on this server, one per question; cheap to clone.
pub struct LocalCoalescer<T, E> {
    calls: Arc<Calls<T, E>>,
}

impl<T, E> Clone for LocalCoalescer<T, E> {
    fn clone(&self) -> Self {
        LocalCoalescer {
            calls: self.calls.clone(),
        }
    }
}

impl<T, E> Default for LocalCoalescer<T, E> {
    fn default() -> Self {
        LocalCoalescer {
            calls: Arc::new(Calls {
                in_flight: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }
}

struct Calls<T, E> {
    in_flight: Mutex<HashMap<CacheKey, InFlight<T, E>>>,
    next_id: AtomicU64,
}

/// One question's shared call in flight.
struct InFlight<T, E> {
    shared: SharedResult<T, E>,
    /// The deadline the call runs under (its first asker's).
    deadline: Instant,
    /// Tells this call's entry from a later one for the same question.
    id: u64,
    /// The answer's pieces as they stream in (stays empty for a call that does not stream).
    fanout: Arc<Fanout>,
    /// Requests waiting on the call now.
    subscribers: usize,
    /// A streamed call stops when its last waiter leaves: its output tokens would be paid for
    /// nobody. A JSON call runs on, as its answer is kept for the next asker.
    cancel_when_alone: bool,
    abort: tokio::task::AbortHandle,
}

impl<T, E> LocalCoalescer<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: CallError,
{
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls in flight, and the bytes they hold: each call's entry and the text streamed into
    /// its fan-out so far. Bounded by construction: one entry per distinct question in flight
    /// (at most the requests in progress), each holding at most one answer's text.
    pub fn held(&self) -> (usize, usize) {
        let in_flight = self.calls.in_flight.lock();
        let entry =
            std::mem::size_of::<(CacheKey, InFlight<T, E>)>() + std::mem::size_of::<Fanout>();
        let bytes = in_flight
            .values()
            .map(|call| entry + call.fanout.len())
            .sum();
        (in_flight.len(), bytes)
    }

    /// The result of the call for `key`, as [`LocalCoalescer::subscribe`] without pieces.
    pub async fn ask<F, Fut>(&self, key: CacheKey, deadline: Instant, start: F) -> Result<T, E>
    where
        F: FnMut(Option<Arc<Fanout>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.subscribe(key, deadline, false, start).finish().await
    }

    /// A wait on the call for `key`: joins the one in flight, or starts one with `start` (handed
    /// the fan-out to stream into when `streaming`) in its own task under `deadline`. `start`
    /// runs with the map of calls locked, so it only builds the call; the call runs once
    /// spawned. It is kept to ask again when the call joined failed only because its first
    /// asker's earlier deadline passed.
    pub fn subscribe<F, Fut>(
        &self,
        key: CacheKey,
        deadline: Instant,
        streaming: bool,
        mut start: F,
    ) -> Subscription<T, E>
    where
        F: FnMut(Option<Arc<Fanout>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let start: Start<T, E> = Box::new(move |fanout| start(fanout).boxed());
        Subscription::new(self.clone(), key, deadline, streaming, start)
    }

    /// Joins the call in flight for `key`, or starts one with `start` in its own task (handed
    /// the fan-out when `streaming`).
    pub(super) fn join_or_start(
        &self,
        key: CacheKey,
        deadline: Instant,
        streaming: bool,
        start: &mut Start<T, E>,
    ) -> Joined<T, E> {
        let mut in_flight = self.calls.in_flight.lock();
        if let Some(existing) = in_flight.get_mut(&key) {
            crate::coalesce::metrics::coalesced("local");
            existing.subscribers += 1;
            return Joined {
                shared: existing.shared.clone(),
                deadline: existing.deadline,
                _interest: Interest {
                    calls: self.calls.clone(),
                    key,
                    id: existing.id,
                },
                fanout: existing.fanout.clone(),
                joined: true,
            };
        }
        let id = self.calls.next_id.fetch_add(1, Ordering::Relaxed);
        let fanout = Fanout::new();
        let stream = streaming.then(|| fanout.clone());
        let calls = self.calls.clone();
        let call = start(stream.clone());
        // Spawned rather than awaited in place: the answer is fetched and kept even if the
        // first asker disconnects, and every waiter is released when it ends, success or not.
        // It keeps the first asker's context, so its log lines carry that request id.
        let task = tokio::spawn(crate::trace::in_current_context(async move {
            // Made inside the task, not before: a task dropped unrun (the runtime shutting
            // down) must not take the map's lock, which this function holds.
            let _entry = InFlightEntry { calls, key, id };
            let _close = CloseFanout(stream);
            call.await
        }));
        let abort = task.abort_handle();
        if !streaming {
            // Nothing streams into it: readers see it complete and wait for the answer.
            fanout.close();
        }
        let shared = async move {
            match task.await {
                Ok(result) => result,
                Err(e) => Err(E::task_failed(e)),
            }
        }
        .boxed()
        .shared();
        in_flight.insert(
            key,
            InFlight {
                shared: shared.clone(),
                deadline,
                id,
                fanout: fanout.clone(),
                subscribers: 1,
                cancel_when_alone: streaming,
                abort,
            },
        );
        Joined {
            shared,
            deadline,
            _interest: Interest {
                calls: self.calls.clone(),
                key,
                id,
            },
            fanout,
            joined: false,
        }
    }

    /// Calls in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.calls.in_flight.lock().len()
    }
}

/// The call a request waits on.
pub(super) struct Joined<T, E> {
    pub(super) shared: SharedResult<T, E>,
    /// The deadline the call runs under.
    pub(super) deadline: Instant,
    /// Held while the request waits.
    _interest: Interest<T, E>,
    pub(super) fanout: Arc<Fanout>,
    /// True when another request started the call.
    pub(super) joined: bool,
}

/// One request's interest in a call; the last one of a streamed call to go cancels it.
struct Interest<T, E> {
    calls: Arc<Calls<T, E>>,
    key: CacheKey,
    id: u64,
}

impl<T, E> Drop for Interest<T, E> {
    fn drop(&mut self) {
        let cancelled = {
            let mut in_flight = self.calls.in_flight.lock();
            match in_flight.get_mut(&self.key) {
                Some(entry) if entry.id == self.id => {
                    entry.subscribers = entry.subscribers.saturating_sub(1);
                    if entry.subscribers == 0 && entry.cancel_when_alone {
                        in_flight.remove(&self.key)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        // Outside the lock: the task's own drop guards take it.
        if let Some(entry) = cancelled {
            entry.abort.abort();
            entry.fanout.close();
            crate::coalesce::metrics::stream_cancelled("upstream");
        }
    }
}

/// Removes a call's in-flight entry however its task ends: completion, panic or abort.
struct InFlightEntry<T, E> {
    calls: Arc<Calls<T, E>>,
    key: CacheKey,
    id: u64,
}

impl<T, E> Drop for InFlightEntry<T, E> {
    fn drop(&mut self) {
        let mut in_flight = self.calls.in_flight.lock();
        if in_flight
            .get(&self.key)
            .is_some_and(|entry| entry.id == self.id)
        {
            in_flight.remove(&self.key);
        }
    }
}

/// Closes a call's fan-out however its task ends, so no reader waits for pieces forever.
struct CloseFanout(Option<Arc<Fanout>>);

impl Drop for CloseFanout {
    fn drop(&mut self) {
        if let Some(fanout) = &self.0 {
            fanout.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheKeyParts;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    enum Failure {
        TimedOut,
        TaskFailed,
        /// The call's own deadline passed.
        OutOfTime,
        /// Anything else the call can fail with.
        Refused,
    }

    impl CallError for Failure {
        fn timed_out() -> Self {
            Failure::TimedOut
        }

        fn task_failed(_: tokio::task::JoinError) -> Self {
            Failure::TaskFailed
        }

        fn bound_by_deadline(&self) -> bool {
            matches!(self, Failure::TimedOut | Failure::OutOfTime)
        }
    }

    type Coalescer = LocalCoalescer<u32, Failure>;

    fn key(message: &str) -> CacheKey {
        CacheKey::new(CacheKeyParts {
            provider: "test",
            agent_id: "math",
            prompt_version: "v1",
            model: "m",
            message,
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        })
    }

    fn in_secs(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    /// A call that answers `answer` after `after`, counting its starts in `starts`.
    fn answering(
        starts: &Arc<AtomicUsize>,
        answer: Result<u32, Failure>,
        after: Duration,
    ) -> impl FnMut(Option<Arc<Fanout>>) -> BoxFuture<'static, Result<u32, Failure>> {
        let starts = starts.clone();
        move |_| {
            starts.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move {
                tokio::time::sleep(after).await;
                answer
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn identical_questions_in_flight_make_one_call() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let deadline = in_secs(10);
        let second = Duration::from_secs(1);
        let (first, joined) = tokio::join!(
            calls.ask(key("2+2"), deadline, answering(&starts, Ok(4), second)),
            calls.ask(key("2+2"), deadline, answering(&starts, Ok(5), second)),
        );
        assert_eq!((first, joined), (Ok(4), Ok(4)));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(calls.in_flight(), 0, "the entry goes when the call ends");

        // Another question is another call; the same one after the first ended is asked anew.
        let other = calls.ask(key("3+3"), deadline, answering(&starts, Ok(6), second));
        assert_eq!(other.await, Ok(6));
        let again = calls.ask(key("2+2"), deadline, answering(&starts, Ok(7), second));
        assert_eq!(again.await, Ok(7));
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bytes_held_are_the_text_streamed_so_far_and_go_with_the_call() {
        let calls = Coalescer::new();
        let deadline = in_secs(10);
        let piece = "x".repeat(1000);
        let waits: Vec<_> = (0..10)
            .map(|i| {
                let piece = piece.clone();
                calls.subscribe(key(&format!("q{i}")), deadline, true, move |fanout| {
                    let piece = piece.clone();
                    async move {
                        if let Some(fanout) = fanout {
                            fanout.push_at(0, &piece);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(1)
                    }
                })
            })
            .collect();
        let finished = tokio::spawn(futures::future::join_all(
            waits.into_iter().map(|w| w.finish()),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (in_flight, bytes) = calls.held();
        assert_eq!(in_flight, 10);
        assert!(bytes >= 10 * 1000, "{bytes}");
        assert!(bytes <= 10 * (1000 + 4096), "{bytes}");
        finished.await.unwrap();
        assert_eq!(calls.held(), (0, 0));
    }

    #[tokio::test]
    async fn a_panicking_call_fails_its_waiters_and_leaves_no_entry() {
        let calls = Coalescer::new();
        let deadline = in_secs(10);
        fn boom() -> Result<u32, Failure> {
            panic!("the call panics")
        }
        let panicking = calls.ask(key("boom"), deadline, |_| async { boom() });
        assert_eq!(panicking.await, Err(Failure::TaskFailed));
        assert_eq!(calls.in_flight(), 0);
        let starts = Arc::new(AtomicUsize::new(0));
        let next = calls.ask(
            key("boom"),
            deadline,
            answering(&starts, Ok(1), Duration::ZERO),
        );
        assert_eq!(next.await, Ok(1));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_asker_with_time_left_asks_again_after_a_deadline_bound_failure() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let early = in_secs(1);
        let late = in_secs(10);
        let (first, later) = tokio::join!(
            calls.ask(
                key("slow"),
                early,
                // Fails before its asker's deadline, so that asker sees this failure.
                answering(&starts, Err(Failure::OutOfTime), Duration::from_millis(500)),
            ),
            calls.ask(
                key("slow"),
                late,
                answering(&starts, Ok(9), Duration::from_secs(1)),
            ),
        );
        assert_eq!(first, Err(Failure::OutOfTime));
        assert_eq!(later, Ok(9), "the later asker's own call answered");
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_and_equal_deadlines_are_shared_not_asked_again() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let second = Duration::from_secs(1);
        let (first, later) = tokio::join!(
            calls.ask(
                key("no"),
                in_secs(5),
                answering(&starts, Err(Failure::Refused), second)
            ),
            calls.ask(key("no"), in_secs(10), answering(&starts, Ok(1), second)),
        );
        assert_eq!(
            (first, later),
            (Err(Failure::Refused), Err(Failure::Refused))
        );
        assert_eq!(starts.load(Ordering::SeqCst), 1);

        let deadline = in_secs(5);
        let (first, same) = tokio::join!(
            calls.ask(
                key("slow"),
                deadline,
                answering(&starts, Err(Failure::OutOfTime), second)
            ),
            calls.ask(key("slow"), deadline, answering(&starts, Ok(1), second)),
        );
        assert_eq!(
            (first, same),
            (Err(Failure::OutOfTime), Err(Failure::OutOfTime))
        );
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_call_stops_when_its_last_waiter_goes() {
        let calls = Coalescer::new();
        let seen = Arc::new(Mutex::new(None::<Arc<Fanout>>));
        let kept = seen.clone();
        let forever = move |stream: Option<Arc<Fanout>>| {
            if let Some(stream) = &stream {
                stream.push_at(0, "Once upon");
            }
            *kept.lock() = stream;
            std::future::pending::<Result<u32, Failure>>()
        };
        let mut waiting = calls.subscribe(key("story"), in_secs(1), true, forever);
        assert!(!waiting.joined());
        assert_eq!(
            waiting.next().await,
            Some(Update::Piece("Once upon".to_owned()))
        );
        assert_eq!(
            waiting.next().await,
            Some(Update::Done(Err(Failure::TimedOut)))
        );
        assert_eq!(
            calls.in_flight(),
            0,
            "the call was cancelled with its last waiter"
        );
        let Some(fanout) = seen.lock().take() else {
            panic!("the call got no fan-out")
        };
        let mut reader = fanout.subscribe();
        assert_eq!(reader.next().await, Some((0, "Once upon".to_owned())));
        assert_eq!(reader.next().await, None, "the fan-out is closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_call_runs_on_without_waiters_and_a_stream_joins_it() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let slow = Duration::from_secs(5);
        let gone = calls.ask(key("q"), in_secs(1), answering(&starts, Ok(3), slow));
        assert_eq!(gone.await, Err(Failure::TimedOut));
        assert_eq!(calls.in_flight(), 1, "the call runs on for the next asker");

        let mut joined =
            calls.subscribe(key("q"), in_secs(10), true, answering(&starts, Ok(4), slow));
        assert!(joined.joined());
        // A JSON call streams nothing: the outcome is the first update.
        assert_eq!(joined.next().await, Some(Update::Done(Ok(3))));
        assert_eq!(joined.next().await, None);
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_asker_that_asks_again_gets_no_text_twice() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        // The first call streams a beginning and runs out of its asker's time; the second,
        // asked again by the later asker, streams the whole answer.
        let story = move |stream: Option<Arc<Fanout>>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let Some(stream) = stream else {
                    return Err(Failure::Refused);
                };
                stream.push_at(0, "Once ");
                tokio::time::sleep(Duration::from_millis(500)).await;
                if first {
                    return Err(Failure::OutOfTime);
                }
                stream.push_at(5, "upon");
                Ok(1)
            }
        };
        let mut early = calls.subscribe(key("tale"), in_secs(1), true, story.clone());
        let mut late = calls.subscribe(key("tale"), in_secs(10), true, story);
        assert!(late.joined());
        let mut updates = Vec::new();
        while let Some(update) = late.next().await {
            updates.push(update);
        }
        assert_eq!(
            updates,
            [
                Update::Piece("Once ".to_owned()),
                Update::Piece("upon".to_owned()),
                Update::Done(Ok(1)),
            ]
        );
        assert_eq!(late.sent(), "Once upon");
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        assert_eq!(early.next().await, Some(Update::Piece("Once ".to_owned())));
        assert_eq!(
            early.next().await,
            Some(Update::Done(Err(Failure::OutOfTime)))
        );
    }
}
