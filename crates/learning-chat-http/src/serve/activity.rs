//! What each connection is doing, for the watchdog that enforces the read, idle and send bounds.

use super::ConnectionLimits;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Counts a connection in the open-connections gauge while it lives.
pub(super) struct OpenConnection;

impl OpenConnection {
    pub(super) fn new() -> OpenConnection {
        crate::serve::metrics::http_connections_open(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::serve::metrics::http_connections_open(-1.0);
    }
}

/// No value yet (for [`Activity::head_started_ms`]).
const NONE: u64 = u64::MAX;

/// What a connection is doing, as the watchdog needs to know it: requests in flight, when the
/// last one ended, when the bytes of the next one began. Times in ms since `opened`.
pub(super) struct Activity {
    pub(super) opened: Instant,
    pub(super) in_flight: AtomicUsize,
    pub(super) requests: AtomicU64,
    pub(super) idle_since_ms: AtomicU64,
    pub(super) head_started_ms: AtomicU64,
    /// HTTP/2: bytes between requests are not the start of a request head.
    pub(super) multiplexed: AtomicBool,
    /// When (ms since `opened`) a write to the socket last found it full, until a write goes
    /// through again; [`NONE`] while writes go through. A client that reads nothing stalls the
    /// connection here even when no response body is left to wait: hyper has taken the whole
    /// of a response it knew complete and holds it in its buffer.
    write_blocked_since_ms: AtomicU64,
    /// The responses being sent, by id, for the stall watch.
    outgoing: Mutex<HashMap<u64, Arc<Outgoing>>>,
    next_response: AtomicU64,
    /// Wakes the stall watch when a response is tracked on a connection that had none.
    tracked: Notify,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
            multiplexed: AtomicBool::new(false),
            write_blocked_since_ms: AtomicU64::new(NONE),
            outgoing: Mutex::new(HashMap::new()),
            next_response: AtomicU64::new(0),
            tracked: Notify::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes arriving while no request is in flight are the start of the next request's head.
    pub(super) fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.is_multiplexed() {
            return;
        }
        // The first byte only; the watchdog reads it when it next looks ([`Self::bound_passed`]).
        let _ = self.head_started_ms.compare_exchange(
            NONE,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// A write found the socket full: the client owes a read from now on, unless it already did.
    pub(super) fn on_write_blocked(&self) {
        let blocked = self.write_blocked_since_ms.compare_exchange(
            NONE,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if blocked.is_ok() {
            // The stall watch may be waiting for a response to be tracked: it must look now.
            self.tracked.notify_one();
        }
    }

    /// A write went through: the client is reading. One load on every write; a store only
    /// after a block.
    pub(super) fn on_write_progress(&self) {
        if self.write_blocked_since_ms.load(Ordering::Acquire) != NONE {
            self.write_blocked_since_ms.store(NONE, Ordering::Release);
        }
    }

    pub(super) fn is_multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing changes, and for which bound; no bound
    /// while a request is in flight (the deadline is then only when to look again).
    pub(super) fn next_deadline(
        &self,
        limits: &ConnectionLimits,
    ) -> (Instant, Option<&'static str>) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Only the request ending can start a bound: look again later (within the horizon
            // of `bound_passed`).
            let recheck = limits.header_read.max(limits.keep_alive_idle);
            return (Instant::now() + recheck, None);
        }
        let at = |ms: u64, bound: Duration| self.opened + Duration::from_millis(ms) + bound;
        let head_started = self.head_started_ms.load(Ordering::Acquire);
        if head_started != NONE {
            (at(head_started, limits.header_read), Some("header"))
        } else if self.requests.load(Ordering::Acquire) == 0 {
            (at(0, limits.header_read), Some("header"))
        } else {
            let idle_since = self.idle_since_ms.load(Ordering::Acquire);
            (at(idle_since, limits.keep_alive_idle), Some("idle"))
        }
    }

    /// Completes, with the bound's name, once the connection has passed one of its bounds.
    ///
    /// Nothing tells it of a request starting or ending: a bound starts at such an event and
    /// lasts the header or the idle bound, so none can end sooner than the shorter of the two
    /// from now. Looking again at least that often, it is never late, and a busy keep-alive
    /// connection re-arms no timer and takes no wake-up per request (it did both, twice per
    /// request, before).
    pub(super) async fn bound_passed(&self, limits: &ConnectionLimits) -> &'static str {
        let horizon = limits.header_read.min(limits.keep_alive_idle);
        loop {
            let (deadline, bound) = self.next_deadline(limits);
            let now = Instant::now();
            if let Some(bound) = bound.filter(|_| deadline <= now) {
                return bound;
            }
            tokio::time::sleep_until(deadline.min(now + horizon)).await;
        }
    }

    /// Tracks a response body until [`Activity::untrack`]; it starts out waiting for hyper to
    /// take its first frame.
    pub(super) fn track(
        &self,
        body: axum::body::Body,
        in_flight: InFlight,
    ) -> (u64, Arc<Outgoing>) {
        let outgoing = Arc::new(Outgoing {
            waiting_since_ms: AtomicU64::new(self.now_ms()),
            slot: Mutex::new(Slot::Live(Held {
                body,
                _in_flight: in_flight,
            })),
        });
        let id = self.next_response.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut tracked = self.outgoing.lock();
            tracked.insert(id, outgoing.clone());
            tracked.len() == 1
        };
        if first {
            self.tracked.notify_one();
        }
        (id, outgoing)
    }

    pub(super) fn untrack(&self, id: u64) {
        self.outgoing.lock().remove(&id);
    }

    /// Completes once the client has taken no data for `limit`: [`Stall::Socket`] when no
    /// write to its socket went through for that long (the connection is stuck as a whole);
    /// otherwise, once responses have waited that long for it, drops their bodies (freeing
    /// what they hold) and returns how many. A stall is seen between `limit` and
    /// 1.5 × `limit` after it began.
    pub(super) async fn stalled(&self, limit: Duration) -> Stall {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(NONE - 1);
        loop {
            let now = self.now_ms();
            let mut stalled = Vec::new();
            let mut earliest: Option<u64> = None;
            let blocked = self.write_blocked_since_ms.load(Ordering::Acquire);
            if blocked != NONE {
                if now.saturating_sub(blocked) >= limit_ms {
                    return Stall::Socket;
                }
                earliest = Some(blocked.saturating_add(limit_ms));
            }
            let tracking = {
                let tracked = self.outgoing.lock();
                for outgoing in tracked.values() {
                    let since = outgoing.waiting_since_ms.load(Ordering::Acquire);
                    if since == NONE {
                        continue;
                    }
                    if now.saturating_sub(since) >= limit_ms {
                        if let Some(held) = outgoing.stall() {
                            stalled.push(held);
                        }
                    } else {
                        let at = since.saturating_add(limit_ms);
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                }
                !tracked.is_empty()
            };
            // Dropped outside the lock: a body's drop can run a stream's cleanup.
            if !stalled.is_empty() {
                return Stall::Responses(stalled.len());
            }
            if !tracking && blocked == NONE {
                self.tracked.notified().await;
                continue;
            }
            // A response may begin to wait at any time without telling: look again within
            // half the bound even when none waits now.
            let wait = earliest.map_or(limit_ms / 2, |at| {
                at.saturating_sub(now).min(limit_ms / 2).max(1)
            });
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// What the stall watch found ([`Activity::stalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// No write to the socket went through for the bound: the client reads nothing.
    Socket,
    /// This many responses waited the bound for the client and were dropped.
    Responses(usize),
}

/// A response on its way to the client, as the stall watch sees it.
pub(super) struct Outgoing {
    /// When (ms since the connection opened) the body last handed hyper data, or was made, and
    /// has not been asked for more since; [`NONE`] while hyper waits for the body instead.
    waiting_since_ms: AtomicU64,
    /// The body, until it ends or stalls.
    pub(super) slot: Mutex<Slot>,
}

impl Outgoing {
    pub(super) fn start_waiting(&self, activity: &Activity) {
        self.waiting_since_ms
            .store(activity.now_ms(), Ordering::Release);
    }

    pub(super) fn stop_waiting(&self) {
        self.waiting_since_ms.store(NONE, Ordering::Release);
    }

    /// Marks the response stalled and hands back what it held, once.
    fn stall(&self) -> Option<Held> {
        let mut slot = self.slot.lock();
        if !matches!(*slot, Slot::Live(_)) {
            return None;
        }
        self.stop_waiting();
        match std::mem::replace(&mut *slot, Slot::Stalled) {
            Slot::Live(held) => Some(held),
            Slot::Done | Slot::Stalled => None,
        }
    }
}

/// Where a response body is.
pub(super) enum Slot {
    /// Being sent.
    Live(Held),
    /// Sent (or failed) and released.
    Done,
    /// Dropped because the client took no data within the bound.
    Stalled,
}

/// A live response body and its request's in-flight mark.
pub(super) struct Held {
    pub(super) body: axum::body::Body,
    _in_flight: InFlight,
}

/// A request in flight on a connection, until its response body is done or dropped.
pub(super) struct InFlight(pub(super) Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, reporting what it reads to the connection's [`Activity`].
pub(super) struct TrackedIo<I> {
    pub(super) inner: I,
    pub(super) activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if buf.filled().len() > before {
                self.activity.on_read();
            }
        }
        result
    }
}

impl<I> TrackedIo<I> {
    fn note_write(&self, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.on_write_progress(),
            Poll::Ready(_) => {}
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS takes plaintext into its own buffer and meets the full socket here instead.
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        match &flushed {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Ok(())) => self.activity.on_write_progress(),
            Poll::Ready(Err(_)) => {}
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{is_body_read_timeout, BodyReadTimeout};
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(75),
            max_connections: 1,
            http2_max_streams: 8,
            send_stall: Duration::from_secs(10),
            max_stalled_streams: 2,
            http2_keep_alive_interval: None,
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }

    /// How long from now until the watchdog fires, and for which bound.
    async fn fires_after(activity: &Activity) -> (Duration, &'static str) {
        let start = Instant::now();
        let bound = activity.bound_passed(&limits()).await;
        (start.elapsed(), bound)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_send_a_request_head_within_the_header_bound() {
        let activity = Activity::new();
        assert_eq!(
            fires_after(&activity).await,
            (Duration::from_secs(10), "header")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_bound_applies_then_the_header_bound_once_bytes_arrive() {
        let activity = Arc::new(Activity::new());
        let in_flight = activity.request_started();
        // In flight: no bound, however long the answer takes.
        let bounds = limits();
        let watchdog = activity.bound_passed(&bounds);
        assert!(tokio::time::timeout(Duration::from_secs(300), watchdog)
            .await
            .is_err());
        drop(in_flight);
        assert_eq!(
            fires_after(&activity).await,
            (Duration::from_secs(75), "idle")
        );
        // 5 s into an idle wait the next request begins: the header bound runs from its first bytes.
        let activity = Arc::new(Activity::new());
        drop(activity.request_started());
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.on_read();
        assert_eq!(
            fires_after(&activity).await,
            (Duration::from_secs(10), "header")
        );
    }

    /// Nothing wakes the watchdog when a request starts or ends or a head begins: it must
    /// still close the connection at the bound's exact end.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_watchdog_keeps_each_bound_to_the_second_without_being_told() {
        let watch = |activity: &Arc<Activity>| {
            let activity = activity.clone();
            tokio::spawn(async move { activity.bound_passed(&limits()).await })
        };
        // Idle (bound at 75 s); a head begins at 5 s: the header bound ends at 15 s.
        let activity = Arc::new(Activity::new());
        drop(activity.request_started());
        let start = Instant::now();
        let watchdog = watch(&activity);
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.on_read();
        assert_eq!(watchdog.await.unwrap(), "header");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        // A request in flight for 12 s: the idle bound runs from its end, to 87 s.
        let activity = Arc::new(Activity::new());
        let in_flight = activity.request_started();
        let start = Instant::now();
        let watchdog = watch(&activity);
        tokio::time::sleep(Duration::from_secs(12)).await;
        drop(in_flight);
        assert_eq!(watchdog.await.unwrap(), "idle");
        assert_eq!(start.elapsed(), Duration::from_secs(87));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_stalls_only_while_the_client_owes_a_read() {
        let activity = Arc::new(Activity::new());
        let (_, waits_for_its_body) =
            activity.track(axum::body::Body::empty(), activity.request_started());
        // hyper polled it and got Pending: the body owes data, not the client.
        waits_for_its_body.stop_waiting();
        let (_, owed) = activity.track(axum::body::Body::from("x"), activity.request_started());
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        assert_eq!(activity.stalled(limit).await, Stall::Responses(1));
        let seen_after = start.elapsed();
        assert!(
            seen_after >= limit && seen_after <= limit * 3 / 2,
            "{seen_after:?}"
        );
        assert!(matches!(*owed.slot.lock(), Slot::Stalled));
        assert!(matches!(*waits_for_its_body.slot.lock(), Slot::Live(_)));
        // The stalled one's request is no longer in flight; the other still is.
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 1);
    }

    /// No response is tracked (hyper took the last one whole): a socket that takes nothing is
    /// still seen, and one that takes data again before the bound is not.
    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_no_data_for_the_bound_stalls_the_connection() {
        let activity = Arc::new(Activity::new());
        let limit = Duration::from_secs(10);
        let watch = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.stalled(limit).await })
        };
        tokio::task::yield_now().await;
        activity.on_write_blocked();
        tokio::time::sleep(Duration::from_secs(8)).await;
        activity.on_write_progress();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!watch.is_finished());
        let start = Instant::now();
        activity.on_write_blocked();
        // A second block before any progress keeps the first one's time.
        tokio::time::sleep(Duration::from_secs(4)).await;
        activity.on_write_blocked();
        assert_eq!(watch.await.unwrap(), Stall::Socket);
        let seen_after = start.elapsed();
        assert!(
            seen_after >= limit && seen_after <= limit * 3 / 2,
            "{seen_after:?}"
        );
    }

    #[test]
    fn a_body_read_timeout_is_found_through_wrapping_errors() {
        let wrapped = axum::Error::new(BodyReadTimeout);
        assert!(is_body_read_timeout(&wrapped));
        assert!(!is_body_read_timeout(&axum::Error::new(io::Error::other(
            "reset"
        ))));
    }
}
