//! [`SseStream`]: the decoder over a body that arrives as a stream of byte chunks (reqwest's
//! `bytes_stream()`, or any other), so no reader repeats the feed/drain/end loop.

use super::{SseDecoder, SseError, SseItem};
use futures_core::Stream;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why an [`SseStream`] stopped early.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The body itself failed (a broken connection, a timeout).
    Body(E),
    /// The bytes are not a valid event stream.
    Decode(SseError),
}

impl<E: fmt::Display> fmt::Display for StreamError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Body(e) => write!(f, "reading the event stream: {e}"),
            StreamError::Decode(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for StreamError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Body(e) => Some(e),
            StreamError::Decode(e) => Some(e),
        }
    }
}

/// The items of an event stream read from a body of byte chunks. It ends after the first error,
/// and at the end of the body yields an unfinished last event as [`SseDecoder::end`] describes.
pub struct SseStream<S> {
    body: Pin<Box<S>>,
    decoder: SseDecoder,
    body_done: bool,
    /// The body ended inside a line or an event.
    cut: bool,
    done: bool,
}

impl<S> fmt::Debug for SseStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("decoder", &self.decoder)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S> SseStream<S> {
    /// Decodes `body` with a default [`SseDecoder`].
    pub fn new(body: S) -> Self {
        Self::with_decoder(body, SseDecoder::new())
    }

    /// Decodes `body` with `decoder` (another size limit, say).
    pub fn with_decoder(body: S, decoder: SseDecoder) -> Self {
        SseStream {
            body: Box::pin(body),
            decoder,
            body_done: false,
            cut: false,
            done: false,
        }
    }

    /// True once the body has ended inside a line or an event (its last event, if it had
    /// data, was still yielded): for readers that count that as a cut stream.
    pub fn ended_unfinished(&self) -> bool {
        self.cut
    }
}

impl<S, B, E> Stream for SseStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    type Item = Result<SseItem, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the body is boxed), so the stream is too.
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.next_item() {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) if this.body_done => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(StreamError::Decode(e))));
                }
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.decoder.feed(chunk.as_ref()),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(StreamError::Body(e))));
                }
                Poll::Ready(None) => {
                    this.body_done = true;
                    this.cut = this.decoder.has_pending();
                    this.decoder.end();
                }
            }
        }
    }
}
