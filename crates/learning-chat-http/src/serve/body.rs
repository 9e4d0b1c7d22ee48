//! Request and response bodies of a served connection: the body read bound, and the response
//! that keeps its request counted in flight until it is sent.

use super::activity::{Activity, InFlight, Outgoing, Slot};
use super::{BodyReadTimeout, BoxError};
use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// A request body that fails with [`BodyReadTimeout`] once its deadline has passed.
pub(super) struct DeadlineBody {
    pub(super) inner: Incoming,
    pub(super) deadline: Instant,
    /// Made on the first wait only: most bodies are read without ever waiting.
    pub(super) sleep: Option<Pin<Box<Sleep>>>,
    pub(super) expired: bool,
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
            crate::serve::metrics::http_connection_timeout("body");
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

/// The error a response body yields once it was dropped for stalling: hyper then resets the
/// HTTP/2 stream (or closes the HTTP/1 connection) instead of ending the body as if complete.
#[derive(Debug)]
pub struct ResponseStalled;

impl std::fmt::Display for ResponseStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client took no data within the send stall bound")
    }
}

impl std::error::Error for ResponseStalled {}

/// A response body that keeps its request counted in flight until it is sent or dropped, and
/// tells the connection's watchdog when it waits for the client ([`Outgoing`]).
pub(super) struct ResponseBody {
    outgoing: Arc<Outgoing>,
    activity: Arc<Activity>,
    id: u64,
}

impl ResponseBody {
    /// Tracks `body` on its connection until it is sent, dropped, or dropped for stalling.
    pub(super) fn new(
        activity: &Arc<Activity>,
        body: axum::body::Body,
        in_flight: InFlight,
    ) -> ResponseBody {
        let (id, outgoing) = activity.track(body, in_flight);
        ResponseBody {
            outgoing,
            activity: activity.clone(),
            id,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.activity.untrack(self.id);
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let outgoing = &self.outgoing;
        let mut slot = outgoing.slot.lock();
        let current = match &mut *slot {
            Slot::Live(current) => current,
            Slot::Done => return Poll::Ready(None),
            Slot::Stalled => return Poll::Ready(Some(Err(axum::Error::new(ResponseStalled)))),
        };
        let polled = Pin::new(&mut current.body).poll_frame(cx);
        match &polled {
            // hyper waits for the body: nothing is owed to the client.
            Poll::Pending => outgoing.stop_waiting(),
            // hyper holds data until the client takes it, and asks again only then.
            Poll::Ready(Some(Ok(_))) => outgoing.start_waiting(&self.activity),
            // Over: what the body held goes now, not when hyper drops it.
            Poll::Ready(_) => {
                outgoing.stop_waiting();
                let done = std::mem::replace(&mut *slot, Slot::Done);
                drop(slot);
                drop(done);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &*self.outgoing.slot.lock() {
            Slot::Live(current) => current.body.is_end_stream(),
            Slot::Done => true,
            // Not complete: hyper must poll it to see the error.
            Slot::Stalled => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*self.outgoing.slot.lock() {
            Slot::Live(current) => current.body.size_hint(),
            Slot::Done => SizeHint::with_exact(0),
            Slot::Stalled => SizeHint::default(),
        }
    }
}
