//! The HTTP server loop: HTTP/1.1 (as before; axum was built without HTTP/2), with every way a
//! client can hold the server's resources bounded.
//!
//! `axum::serve` bounds none of them, so a client sending part of its headers or body and then
//! waiting held a task and a socket forever. Here:
//!
//! - open connections are bounded (`server.max_connections`): at the bound the loop stops
//!   accepting and new connections wait in the kernel's accept backlog until one closes;
//! - a request's headers must arrive within `server.header_read_timeout_ms` of its first byte
//!   (of the accept, for a connection's first request), or the connection is closed;
//! - its body must arrive within `server.body_read_timeout_ms` of its headers, or it is answered
//!   408 `request_timeout` (the body extractor's error maps to it in [`crate::api::ApiError`]);
//! - a keep-alive connection idle for `server.keep_alive_idle_timeout_ms` between requests is
//!   closed.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a connection waits for a
//! request, so it would also cut idle keep-alive connections at the header bound, and a proxy
//! reusing one then races the close. Instead each connection's reads and requests are tracked
//! ([`Activity`]) and a watchdog next to the connection drops it when a bound is passed.
//!
//! On shutdown the loop stops accepting, every connection is told to finish (closed at once when
//! idle, after the response in flight otherwise), and every response written from then on carries
//! `Connection: close`, so proxies move on to other servers.

use crate::config::ServerSettings;
use axum::body::Bytes;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bounds on what one client connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers.
    pub header_read: Duration,
    /// Longest wait for a request's whole body, from the end of its headers.
    pub body_read: Duration,
    /// Longest idle time of a keep-alive connection between two requests.
    pub keep_alive_idle: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits configured in `[server]`.
    pub fn from_settings(server: &ServerSettings) -> ConnectionLimits {
        ConnectionLimits {
            header_read: Duration::from_millis(server.header_read_timeout_ms),
            body_read: Duration::from_millis(server.body_read_timeout_ms),
            keep_alive_idle: Duration::from_millis(server.keep_alive_idle_timeout_ms),
            max_connections: server.max_connections.max(1),
        }
    }
}

/// The error a request body yields when it was not received within its bound.
#[derive(Debug)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// True when `error` (or any error it wraps) is a [`BodyReadTimeout`].
pub fn is_body_read_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyReadTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and returns
/// once every connection has finished its in-flight requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    // Bounded by the watchdog instead (see the module docs); `None` also means no timer needed.
    builder.header_read_timeout(None).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    crate::metrics::http_connections_limit(limits.max_connections);
    let mut last_limit_line: Option<std::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                crate::metrics::http_connection_limit_wait();
                // At most one line a second: at the bound this runs once per closed connection.
                let quiet = match last_limit_line {
                    None => true,
                    Some(at) => at.elapsed() >= Duration::from_secs(1),
                };
                if quiet {
                    last_limit_line = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait in the accept backlog"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: retrying at once would spin. The
                    // pause is axum::serve's, kept.
                    tracing::error!("accepting a connection failed: {e}");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        crate::metrics::http_connection_accepted();
        tokio::spawn(serve_connection(
            stream,
            permit,
            graceful.watcher(),
            builder.clone(),
            router.clone(),
            limits,
            draining.clone(),
        ));
    }
    drop(listener);
    draining.store(true, Ordering::Release);
    graceful.shutdown().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    watcher: Watcher,
    builder: http1::Builder,
    router: Router,
    limits: ConnectionLimits,
    draining: Arc<AtomicBool>,
) {
    let _permit = permit;
    let _open = OpenConnection::new();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = ConnectionService {
        router,
        activity: activity.clone(),
        draining,
        body_read: limits.body_read,
    };
    let connection = watcher.watch(builder.serve_connection(io, service));
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!("client connection ended with an error: {e}");
            }
        }
        phase = activity.bound_passed(&limits) => {
            crate::metrics::http_connection_timeout(phase);
            tracing::debug!(phase, "client connection closed by its read bound");
        }
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        crate::metrics::http_connections_open(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::http_connections_open(-1.0);
    }
}

/// No value yet (for [`Activity::head_started_ms`]).
const NONE: u64 = u64::MAX;

/// What a connection is doing, as the watchdog needs to know it: requests in flight, when the
/// last one ended, when the bytes of the next one began. Times in ms since `opened`.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since_ms: AtomicU64,
    head_started_ms: AtomicU64,
    /// Wakes the watchdog when a change may bring its deadline forward.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes arriving while no request is in flight are the start of the next request's head.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let started = self.head_started_ms.compare_exchange(
            NONE,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if started.is_ok() {
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NONE, Ordering::Release);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing changes, and for which bound; no bound
    /// while a request is in flight (the deadline is then only when to look again).
    fn next_deadline(&self, limits: &ConnectionLimits) -> (Instant, Option<&'static str>) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Only a change (the request ending) can start a bound; look again then, or after a
            // while in case of a missed wake-up.
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
    async fn bound_passed(&self, limits: &ConnectionLimits) -> &'static str {
        loop {
            let (deadline, bound) = self.next_deadline(limits);
            match bound {
                Some(bound) if deadline <= Instant::now() => return bound,
                _ => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A request in flight on a connection, until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// The socket, reporting what it reads to the connection's [`Activity`].
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
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

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs the router for one connection's requests, tracking each until its response is sent.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
    body_read: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        let deadline = Instant::now() + self.body_read;
        let request = request.map(|body| DeadlineBody {
            inner: body,
            deadline,
            sleep: None,
            expired: false,
        });
        let router = self.router.clone();
        let draining = self.draining.clone();
        Box::pin(async move {
            let mut response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // A 408 leaves the body unread: the connection cannot carry another request.
            let closing = draining.load(Ordering::Acquire)
                || response.status() == StatusCode::REQUEST_TIMEOUT;
            if closing {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| ResponseBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A request body that fails with [`BodyReadTimeout`] once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made on the first wait only: most bodies are read without ever waiting.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired = true;
            crate::metrics::http_connection_timeout("body");
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted in flight until it is sent or dropped.
pub struct ResponseBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(75),
            max_connections: 1,
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

    #[test]
    fn a_body_read_timeout_is_found_through_wrapping_errors() {
        let wrapped = axum::Error::new(BodyReadTimeout);
        assert!(is_body_read_timeout(&wrapped));
        assert!(!is_body_read_timeout(&axum::Error::new(io::Error::other(
            "reset"
        ))));
    }
}
