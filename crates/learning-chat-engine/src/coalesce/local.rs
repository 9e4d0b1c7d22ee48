//! One model call per question on this server: identical questions in flight share one spawned
//! call, so the model is asked once and the answer is kept even if the first asker goes away.
//!
//! The call runs in its own task under its first asker's deadline. Its entry is removed by a drop
//! guard, so a call that ends, panics or is aborted never leaves its question stuck. A later asker
//! with more time left, whose shared call failed only because the first asker's time ran out,
//! asks again (at most [`MAX_REASKS`] times) instead of inheriting that failure.
//!
//! Each call has a [`Fanout`]: a call started by a streaming request publishes its pieces there
//! and is cancelled when its last waiter goes away (its output tokens would be paid for nobody);
//! a call started by a JSON request runs to the end, as its answer is kept for the next asker.

use super::fanout::{Fanout, FanoutReader};
use crate::cache::CacheKey;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

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

/// Where a streaming request is handed the pieces of the answer it waits on.
#[derive(Debug, Clone)]
pub struct StreamTap(tokio::sync::mpsc::UnboundedSender<Tapped>);

/// The pieces of the call a streaming request waits on.
#[derive(Debug)]
pub struct Tapped {
    /// Reads the answer's pieces from its first one.
    pub reader: FanoutReader,
    /// True when the request joined a call another request had started.
    pub joined: bool,
}

impl StreamTap {
    /// A tap and the receiving end: one [`Tapped`] per call the request waits on (a second
    /// one only if the first call ran out of its first asker's time and was asked again).
    pub fn new() -> (StreamTap, tokio::sync::mpsc::UnboundedReceiver<Tapped>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (StreamTap(tx), rx)
    }
}

type SharedResult<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

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

    /// The result of the call for `key`: joins the one in flight, or starts one with `start`
    /// (handed the fan-out to stream into when `tap` is given) in its own task under `deadline`.
    /// Waits at most until `deadline`; asks again, up to [`MAX_REASKS`] times, when the call
    /// joined failed only because its first asker's earlier deadline passed. With `tap`, each
    /// call waited on is announced there with a reader of its pieces. `start` runs with the
    /// map of calls locked, so it only builds the call; the call runs once spawned.
    pub async fn ask<F, Fut>(
        &self,
        key: CacheKey,
        deadline: Instant,
        tap: Option<&StreamTap>,
        mut start: F,
    ) -> Result<T, E>
    where
        F: FnMut(Option<Arc<Fanout>>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut reasks = 0;
        loop {
            // The call's task starts inside this span, so the model call hangs under the wait of
            // the request that started it; a request that joined one has a wait with no children.
            let wait = crate::trace_span!("coalesce.wait", coalesce.attempt = i64::from(reasks));
            let joined =
                wait.in_scope(|| self.join_or_start(key, deadline, tap.is_some(), &mut start));
            let Joined {
                shared,
                deadline: call_deadline,
                subscription: _subscription,
                fanout,
                joined,
            } = joined;
            if let Some(StreamTap(tx)) = tap {
                let _ = tx.send(Tapped {
                    reader: fanout.subscribe(),
                    joined,
                });
            }
            let result = tokio::time::timeout_at(deadline, shared)
                .instrument(wait)
                .await
                .map_err(|_| E::timed_out())?;
            match result {
                // The call ran out of its first asker's time, not ours: ask again (the entry is
                // gone by now, so this starts, or joins, a call under a later deadline).
                Err(error)
                    if error.bound_by_deadline()
                        && call_deadline < deadline
                        && reasks < MAX_REASKS
                        && Instant::now() < deadline =>
                {
                    reasks += 1;
                    crate::metrics::coalesced_retry();
                }
                result => return result,
            }
        }
    }

    /// Joins the call in flight for `key`, or starts one with `start` in its own task (handed
    /// the fan-out when `streaming`).
    fn join_or_start<F, Fut>(
        &self,
        key: CacheKey,
        deadline: Instant,
        streaming: bool,
        start: &mut F,
    ) -> Joined<T, E>
    where
        F: FnMut(Option<Arc<Fanout>>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut in_flight = self.calls.in_flight.lock();
        if let Some(existing) = in_flight.get_mut(&key) {
            crate::metrics::coalesced("local");
            existing.subscribers += 1;
            return Joined {
                shared: existing.shared.clone(),
                deadline: existing.deadline,
                subscription: Subscription {
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
            subscription: Subscription {
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
struct Joined<T, E> {
    shared: SharedResult<T, E>,
    /// The deadline the call runs under.
    deadline: Instant,
    /// Held while the request waits.
    subscription: Subscription<T, E>,
    fanout: Arc<Fanout>,
    /// True when another request started the call.
    joined: bool,
}

/// One request's interest in a call; the last one of a streamed call to go cancels it.
struct Subscription<T, E> {
    calls: Arc<Calls<T, E>>,
    key: CacheKey,
    id: u64,
}

impl<T, E> Drop for Subscription<T, E> {
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
            crate::metrics::stream_cancelled("upstream");
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
            calls.ask(
                key("2+2"),
                deadline,
                None,
                answering(&starts, Ok(4), second)
            ),
            calls.ask(
                key("2+2"),
                deadline,
                None,
                answering(&starts, Ok(5), second)
            ),
        );
        assert_eq!((first, joined), (Ok(4), Ok(4)));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(calls.in_flight(), 0, "the entry goes when the call ends");

        // Another question is another call; the same one after the first ended is asked anew.
        let other = calls.ask(
            key("3+3"),
            deadline,
            None,
            answering(&starts, Ok(6), second),
        );
        assert_eq!(other.await, Ok(6));
        let again = calls.ask(
            key("2+2"),
            deadline,
            None,
            answering(&starts, Ok(7), second),
        );
        assert_eq!(again.await, Ok(7));
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_panicking_call_fails_its_waiters_and_leaves_no_entry() {
        let calls = Coalescer::new();
        let deadline = in_secs(10);
        fn boom() -> Result<u32, Failure> {
            panic!("the call panics")
        }
        let panicking = calls.ask(key("boom"), deadline, None, |_| async { boom() });
        assert_eq!(panicking.await, Err(Failure::TaskFailed));
        assert_eq!(calls.in_flight(), 0);
        let starts = Arc::new(AtomicUsize::new(0));
        let next = calls.ask(
            key("boom"),
            deadline,
            None,
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
                None,
                // Fails before its asker's deadline, so that asker sees this failure.
                answering(&starts, Err(Failure::OutOfTime), Duration::from_millis(500)),
            ),
            calls.ask(
                key("slow"),
                late,
                None,
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
                None,
                answering(&starts, Err(Failure::Refused), second)
            ),
            calls.ask(
                key("no"),
                in_secs(10),
                None,
                answering(&starts, Ok(1), second)
            ),
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
                None,
                answering(&starts, Err(Failure::OutOfTime), second)
            ),
            calls.ask(
                key("slow"),
                deadline,
                None,
                answering(&starts, Ok(1), second)
            ),
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
        let (tap, mut tapped) = StreamTap::new();
        let forever = |stream: Option<Arc<Fanout>>| async move {
            if let Some(stream) = stream {
                stream.push_at(0, "Once upon");
            }
            std::future::pending::<Result<u32, Failure>>().await
        };
        let result = calls
            .ask(key("story"), in_secs(1), Some(&tap), forever)
            .await;
        assert_eq!(result, Err(Failure::TimedOut));
        assert_eq!(
            calls.in_flight(),
            0,
            "the call was cancelled with its last waiter"
        );
        let Some(Tapped { mut reader, joined }) = tapped.recv().await else {
            panic!("the tap got no call")
        };
        assert!(!joined);
        assert_eq!(reader.next().await, Some((0, "Once upon".to_owned())));
        assert_eq!(reader.next().await, None, "the fan-out is closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_call_runs_on_without_waiters_and_a_stream_joins_it() {
        let calls = Coalescer::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let slow = Duration::from_secs(5);
        let gone = calls.ask(key("q"), in_secs(1), None, answering(&starts, Ok(3), slow));
        assert_eq!(gone.await, Err(Failure::TimedOut));
        assert_eq!(calls.in_flight(), 1, "the call runs on for the next asker");

        let (tap, mut tapped) = StreamTap::new();
        let joined = calls.ask(
            key("q"),
            in_secs(10),
            Some(&tap),
            answering(&starts, Ok(4), slow),
        );
        assert_eq!(joined.await, Ok(3));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let Some(Tapped { mut reader, joined }) = tapped.recv().await else {
            panic!("the tap got no call")
        };
        assert!(joined);
        assert_eq!(reader.next().await, None, "a JSON call streams nothing");
    }
}
