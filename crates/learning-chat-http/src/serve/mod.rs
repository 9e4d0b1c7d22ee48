//! The HTTP server loop: HTTP/1.1 and HTTP/2, in plain text or TLS, with every way a client can
//! hold the server's resources bounded.
//!
//! Protocols: on a plain port a connection starting with the HTTP/2 preface is served as h2c
//! (prior knowledge: what gRPC-style proxies and ingress controllers speak upstream), any other
//! as HTTP/1.1. With `server.tls_cert` set ([`crate::tls`]) ALPN picks: `h2` or `http/1.1`.
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
//! idle, after the response in flight otherwise), and every HTTP/1.1 response written from then
//! on carries `Connection: close`, so proxies move on to other servers; an HTTP/2 connection gets
//! a GOAWAY instead, and its streams in flight finish.
//!
//! HTTP/2 multiplexes: a connection's requests are its streams, the idle bound runs while none is
//! open, and bytes between streams (pings, window updates) do not start the header bound. A
//! connection passing the idle bound gets a GOAWAY rather than a bare close, so a client never
//! opens a stream on a connection already being closed.
//!
//! Sending is bounded too. A client must take what it asked for: an HTTP/2 peer that announces
//! a zero flow-control window and never opens it gets every stream's headers and no byte of a
//! body, and until now each such stream held its response (a `stream.max_open` slot, a
//! connection) for as long as the peer liked. Each response body records when it last handed
//! data to hyper without being asked for more ([`activity::Outgoing`]); one that has waited
//! `server.send_stall_timeout_ms` is dropped by the watchdog, which frees whatever it held.
//! An HTTP/1 connection with a stalled response is closed at once (it can carry nothing else);
//! an HTTP/2 connection after `server.max_stalled_streams_per_connection` stalls gets a GOAWAY
//! and is closed. The socket is watched as well: a response hyper knew complete has no body
//! left to wait (hyper took all of it into its buffer), so a client that reads nothing is also
//! seen by its writes ([`activity::TrackedIo`]): a connection whose socket took no data for the
//! bound is closed, whatever its protocol. HTTP/2 keep-alive pings close a connection whose
//! peer stopped answering.

use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use learning_chat_engine::config::ServerSettings;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

mod activity;
mod body;
pub mod metrics;

use activity::{Activity, OpenConnection, Stall, TrackedIo};
use body::{DeadlineBody, ResponseBody};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_streams: u32,
    /// Longest a response may wait for the client to take its data.
    pub send_stall: Duration,
    /// Stalled responses after which an HTTP/2 connection is closed.
    pub max_stalled_streams: u32,
    /// Interval of HTTP/2 keep-alive pings; `None` sends none.
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long a keep-alive ping may go unanswered.
    pub http2_keep_alive_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits configured in `[server]`.
    pub fn from_settings(server: &ServerSettings) -> ConnectionLimits {
        ConnectionLimits {
            header_read: server.header_read_timeout,
            body_read: server.body_read_timeout,
            keep_alive_idle: server.keep_alive_idle_timeout,
            max_connections: server.max_connections.get(),
            http2_max_streams: server.http2_max_concurrent_streams.get(),
            send_stall: server.send_stall_timeout,
            max_stalled_streams: server.max_stalled_streams_per_connection.get(),
            http2_keep_alive_interval: (!server.http2_keep_alive_interval.is_zero())
                .then_some(server.http2_keep_alive_interval),
            http2_keep_alive_timeout: server.http2_keep_alive_timeout,
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

/// hyper's connection builders: by sniffing (plain port) and one per ALPN protocol (TLS).
struct Protocols {
    sniffed: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &ConnectionLimits) -> Protocols {
        let mut sniffed = auto::Builder::new(TokioExecutor::new());
        // Bounded by the watchdog instead (see the module docs); `None` also means no timer needed.
        sniffed.http1().header_read_timeout(None).keep_alive(true);
        sniffed
            .http2()
            .max_concurrent_streams(limits.http2_max_streams)
            // Pings need hyper's timer; a peer that stops answering them is closed.
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout);
        Protocols {
            http1: sniffed.clone().http1_only(),
            http2: sniffed.clone().http2_only(),
            sniffed,
        }
    }
}

/// What the server runs for each request: the application's service (an axum Router, or
/// [`crate::dispatch::Dispatch`] in front of one).
pub trait AppService:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> AppService for T where
    T: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting and returns
/// once every connection has finished its in-flight requests (the caller bounds that wait).
/// With `tls`, every connection is TLS and ALPN chooses HTTP/2 or HTTP/1.1.
pub async fn serve<S: AppService>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new(&limits));
    let acceptor = tls.map(|tls| tls.acceptor().clone());
    // `true` tells every connection to finish; the sender's `closed()` is every connection gone.
    let (drain_tx, drain_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    crate::serve::metrics::http_connections_limit(limits.max_connections);
    let mut last_limit_line: Option<std::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                crate::serve::metrics::http_connection_limit_wait();
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
        crate::serve::metrics::http_connection_accepted();
        tokio::spawn(serve_connection(
            stream,
            permit,
            Shared {
                drain: drain_rx.clone(),
                protocols: protocols.clone(),
                service: service.clone(),
                limits,
                draining: draining.clone(),
            },
            acceptor.clone(),
        ));
    }
    drop(listener);
    drop(drain_rx);
    draining.store(true, Ordering::Release);
    // No receiver left (no connection open) is fine: nothing to drain.
    let _ = drain_tx.send(true);
    drain_tx.closed().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What every connection task gets from the accept loop.
struct Shared<S> {
    drain: watch::Receiver<bool>,
    protocols: Arc<Protocols>,
    service: S,
    limits: ConnectionLimits,
    draining: Arc<AtomicBool>,
}

async fn serve_connection<S: AppService>(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    shared: Shared<S>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _permit = permit;
    let _open = OpenConnection::new();
    let Some(acceptor) = tls else {
        let protocols = shared.protocols.clone();
        return run_connection(stream, &protocols.sniffed, shared).await;
    };
    // The handshake is the connection's first "header": bounded the same way.
    let stream =
        match tokio::time::timeout(shared.limits.header_read, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                crate::serve::metrics::http_connection_timeout("header");
                tracing::debug!("TLS handshake not completed within the header bound");
                return;
            }
        };
    let protocols = shared.protocols.clone();
    let builder = if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        &protocols.http2
    } else {
        &protocols.http1
    };
    run_connection(stream, builder, shared).await;
}

async fn run_connection<I, S>(stream: I, builder: &auto::Builder<TokioExecutor>, shared: Shared<S>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    let Shared {
        mut drain,
        service: app,
        limits,
        draining,
        ..
    } = shared;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = ConnectionService {
        app,
        activity: activity.clone(),
        draining,
        body_read: limits.body_read,
    };
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut told_to_finish = false;
    // Set once an HTTP/2 connection got its GOAWAY for a bound: closed at this time at the latest.
    let mut close_by: Option<Instant> = None;
    let mut stalls: u32 = 0;
    let mut closing_for_stalls = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("client connection ended with an error: {e}");
                }
                return;
            }
            // An error is the accept loop gone: finish as well.
            _ = drain.changed(), if !told_to_finish => {
                told_to_finish = true;
                connection.as_mut().graceful_shutdown();
            }
            phase = activity.bound_passed(&limits), if close_by.is_none() => {
                crate::serve::metrics::http_connection_timeout(phase);
                tracing::debug!(phase, "client connection closed by its read bound");
                if !activity.is_multiplexed() {
                    return;
                }
                if !told_to_finish {
                    told_to_finish = true;
                    connection.as_mut().graceful_shutdown();
                }
                close_by = Some(Instant::now() + limits.header_read);
            }
            stall = activity.stalled(limits.send_stall) => {
                let multiplexed = activity.is_multiplexed();
                let stalled = match stall {
                    Stall::Responses(stalled) => stalled,
                    Stall::Socket => {
                        // Nothing goes out at all: no GOAWAY could reach the peer either.
                        crate::serve::metrics::http_stalled_responses(multiplexed, 1);
                        crate::serve::metrics::http_stalled_connection_closed();
                        tracing::debug!("client connection closed: it reads nothing");
                        return;
                    }
                };
                crate::serve::metrics::http_stalled_responses(multiplexed, stalled);
                stalls = stalls.saturating_add(u32::try_from(stalled).unwrap_or(u32::MAX));
                if !multiplexed {
                    // The stalled response blocks the connection: nothing else can use it.
                    crate::serve::metrics::http_stalled_connection_closed();
                    tracing::debug!("client connection closed: it did not read its response");
                    return;
                }
                if stalls >= limits.max_stalled_streams && !closing_for_stalls {
                    crate::serve::metrics::http_stalled_connection_closed();
                    tracing::debug!(stalls, "HTTP/2 connection closed: its peer takes no data");
                    closing_for_stalls = true;
                    if !told_to_finish {
                        told_to_finish = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    // Streams still flowing get one more stall bound to finish.
                    let at = Instant::now() + limits.send_stall;
                    close_by = Some(close_by.map_or(at, |by| by.min(at)));
                }
            }
            () = sleep_until_some(close_by) => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the application for one connection's requests, tracking each until its response is
/// sent.
#[derive(Clone)]
struct ConnectionService<S> {
    app: S,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
    body_read: Duration,
}

impl<S: AppService> hyper::service::Service<Request<Incoming>> for ConnectionService<S> {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ConnectionFuture<tower::util::Oneshot<S, Request<Body>>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let multiplexed = request.version() >= Version::HTTP_2;
        if multiplexed {
            self.activity.multiplexed.store(true, Ordering::Relaxed);
        }
        let in_flight = self.activity.request_started();
        let deadline = Instant::now() + self.body_read;
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline,
                sleep: None,
                expired: false,
            })
        });
        // A named future rather than a box: a box here copied the application's whole future
        // (several kB for a question) to the heap on every request.
        ConnectionFuture {
            inner: self.app.clone().oneshot(request),
            after: Some(AfterApp {
                activity: self.activity.clone(),
                draining: self.draining.clone(),
                in_flight,
                multiplexed,
            }),
        }
    }
}

/// What a request's response needs once the application answered.
struct AfterApp {
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
    in_flight: activity::InFlight,
    multiplexed: bool,
}

pin_project_lite::pin_project! {
    /// The future of [`ConnectionService`]: the application's answer, then its connection
    /// header and its tracked body.
    struct ConnectionFuture<F> {
        #[pin]
        inner: F,
        after: Option<AfterApp>,
    }
}

impl<F> Future for ConnectionFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut response = match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let Some(after) = this.after.take() else {
            // Polled after it completed: a caller's bug, answered by never completing twice
            // rather than by a panic on the request path.
            return std::task::Poll::Pending;
        };
        // A 408 leaves the body unread: the connection cannot carry another request.
        // HTTP/2 has no `Connection` header (the drain's GOAWAY says it) and a 408 ends
        // only its stream.
        let closing = !after.multiplexed
            && (after.draining.load(Ordering::Acquire)
                || response.status() == StatusCode::REQUEST_TIMEOUT);
        if closing {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let AfterApp {
            activity,
            in_flight,
            ..
        } = after;
        std::task::Poll::Ready(Ok(
            response.map(|body| ResponseBody::new(&activity, body, in_flight))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1 client that asks for a large answer and never reads it: hyper cannot hand it
    /// on, and once `send_stall` has passed the connection must be closed, whatever the idle
    /// and header bounds say.
    #[tokio::test]
    async fn an_http1_response_its_client_never_reads_closes_the_connection_at_the_stall_bound() {
        let limits = ConnectionLimits {
            header_read: Duration::from_secs(600),
            body_read: Duration::from_secs(600),
            keep_alive_idle: Duration::from_secs(600),
            max_connections: 1,
            http2_max_streams: 8,
            send_stall: Duration::from_millis(300),
            max_stalled_streams: 1,
            http2_keep_alive_interval: None,
            http2_keep_alive_timeout: Duration::from_secs(20),
        };
        const ANSWER: usize = 4 << 20;
        let service = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from(vec![b'x'; ANSWER])))
        });
        let (_drain_tx, drain) = watch::channel(false);
        let shared = Shared {
            drain,
            protocols: Arc::new(Protocols::new(&limits)),
            service,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
        };
        // A pipe that holds 64 kB: the answer cannot all go out unread.
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let protocols = shared.protocols.clone();
        let served = tokio::spawn(async move {
            run_connection(server, &protocols.http1, shared).await;
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        // Hang guard only: the bound is 300 ms.
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the stalled connection was not closed")
            .unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert!(
            received.starts_with(b"HTTP/1.1 200 OK"),
            "{:?}",
            String::from_utf8_lossy(&received[..received.len().min(64)])
        );
        assert!(received.len() < ANSWER, "{} bytes", received.len());
    }
}
