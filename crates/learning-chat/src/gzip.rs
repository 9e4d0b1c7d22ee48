//! Gzip of the service's responses (`server.gzip_min_bytes`): tower-http's compression, left out
//! altogether for a response whose length is known and below the minimum.
//!
//! Why: tower-http works out a request's coding from its `Accept-Encoding` when the request
//! arrives, then checks its predicates against every response and wraps every body, compressed
//! or not. A cached answer (under a kilobyte: never compressed) paid all of that, about a
//! sixteenth of its instructions (bench 16, bench/RESULTS.md run 20). tower-http leaves such a
//! response as it is (no header added, the body passed through), so skipping it changes no
//! byte. Every other response goes through tower-http exactly as before: the request's
//! `Accept-Encoding` is kept and handed to a tower-http compression service around the
//! finished response.

use axum::body::Body;
use axum::http::header::ACCEPT_ENCODING;
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use http_body::Body as _;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_http::compression::predicate::{And, DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLayer, ResponseFuture};

/// The predicate of the service's gzip: tower-http's defaults and `server.gzip_min_bytes`.
type GzipWhen = And<DefaultPredicate, SizeAbove>;

/// Gzips responses of at least `min_bytes` for clients that accept it ([`Gzip`]).
#[derive(Debug, Clone, Copy)]
pub struct GzipLayer {
    min_bytes: u16,
}

impl GzipLayer {
    /// Gzip for responses of at least `min_bytes` (`server.gzip_min_bytes`).
    pub fn new(min_bytes: u16) -> GzipLayer {
        GzipLayer { min_bytes }
    }
}

impl<S> Layer<S> for GzipLayer {
    type Service = Gzip<S>;

    fn layer(&self, inner: S) -> Gzip<S> {
        Gzip {
            inner,
            min_bytes: self.min_bytes,
        }
    }
}

/// The service of [`GzipLayer`].
#[derive(Debug, Clone)]
pub struct Gzip<S> {
    inner: S,
    min_bytes: u16,
}

impl<S, B> Service<Request<B>> for Gzip<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GzipFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let accept = AcceptEncoding::of(&request);
        GzipFuture {
            state: State::Answering {
                inner: self.inner.call(request),
                accept: Some(accept),
            },
            min_bytes: self.min_bytes,
        }
    }
}

/// A request's `Accept-Encoding`, kept for its response: one value without allocating.
enum AcceptEncoding {
    None,
    One(HeaderValue),
    Many(Vec<HeaderValue>),
}

impl AcceptEncoding {
    fn of<B>(request: &Request<B>) -> AcceptEncoding {
        let mut values = request.headers().get_all(ACCEPT_ENCODING).iter();
        match (values.next(), values.next()) {
            (None, _) => AcceptEncoding::None,
            (Some(only), None) => AcceptEncoding::One(only.clone()),
            (Some(first), Some(second)) => {
                let mut all = vec![first.clone(), second.clone()];
                all.extend(values.cloned());
                AcceptEncoding::Many(all)
            }
        }
    }

    /// A request carrying these values, for tower-http to choose the coding from.
    fn into_request(self) -> Request<()> {
        let mut request = Request::new(());
        let headers = request.headers_mut();
        match self {
            AcceptEncoding::None => {}
            AcceptEncoding::One(value) => {
                headers.insert(ACCEPT_ENCODING, value);
            }
            AcceptEncoding::Many(values) => {
                for value in values {
                    headers.append(ACCEPT_ENCODING, value);
                }
            }
        }
        request
    }
}

/// Hands tower-http's compression the response it is to compress, once.
struct Finished(Option<Response<Body>>);

/// [`Finished`] called twice: never, as each is called once right after it is made.
#[derive(Debug)]
struct AlreadyTaken;

impl Service<Request<()>> for Finished {
    type Response = Response<Body>;
    type Error = AlreadyTaken;
    type Future = Ready<Result<Response<Body>, AlreadyTaken>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AlreadyTaken>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(self.0.take().ok_or(AlreadyTaken))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Gzip`]: the inner answer, then, unless it is known to be small,
    /// tower-http's compression of it.
    pub struct GzipFuture<F> {
        #[pin]
        state: State<F>,
        min_bytes: u16,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<F> {
        Answering {
            #[pin]
            inner: F,
            accept: Option<AcceptEncoding>,
        },
        Compressing {
            #[pin]
            gzip: ResponseFuture<Ready<Result<Response<Body>, AlreadyTaken>>, GzipWhen>,
        },
    }
}

impl<F> Future for GzipFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProjection::Answering { inner, accept } => {
                    let response = match std::task::ready!(inner.poll(cx)) {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    let small = response
                        .body()
                        .size_hint()
                        .exact()
                        .is_some_and(|len| len < u64::from(*this.min_bytes));
                    let Some(accept) = accept.take().filter(|_| !small) else {
                        return Poll::Ready(Ok(response));
                    };
                    let mut gzip = compression(*this.min_bytes, Finished(Some(response)));
                    let gzip = gzip.call(accept.into_request());
                    self.as_mut()
                        .project()
                        .state
                        .set(State::Compressing { gzip });
                }
                StateProjection::Compressing { gzip } => {
                    return Poll::Ready(Ok(match std::task::ready!(gzip.poll(cx)) {
                        Ok(response) => response.map(Body::new),
                        Err(AlreadyTaken) => {
                            tracing::error!("a response was taken twice for compression");
                            crate::api::ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal",
                                "an internal error occurred",
                            )
                            .into_response()
                        }
                    }));
                }
            }
        }
    }
}

/// tower-http's gzip of the service's responses around `inner`.
fn compression<S>(min_bytes: u16, inner: S) -> Compression<S, GzipWhen> {
    CompressionLayer::new()
        .gzip(true)
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(min_bytes.into())))
        .layer(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::http::header::{CONTENT_TYPE, VARY};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const MIN: u16 = 1000;

    /// A response of `len` bytes of `content_type`, its length known or not (a stream).
    fn respond(len: usize, content_type: &'static str, known: bool) -> Response<Body> {
        let bytes = Bytes::from("x".repeat(len));
        let body = if known {
            Body::from(bytes)
        } else {
            Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(bytes)]))
        };
        Response::builder()
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    }

    fn request(accept: &[&'static str]) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        for value in accept {
            request
                .headers_mut()
                .append(ACCEPT_ENCODING, HeaderValue::from_static(value));
        }
        request
    }

    /// Status, headers and body bytes of a response, to compare two of them whole.
    async fn taken(response: Response<Body>) -> (StatusCode, Vec<(String, String)>, Bytes) {
        let (parts, body) = response.into_parts();
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, headers, bytes)
    }

    #[tokio::test]
    async fn every_response_is_as_tower_https_compression_makes_it() {
        let accepts: [&[&'static str]; 6] = [
            &[],
            &["gzip"],
            &["br"],
            &["gzip;q=0"],
            &["br", "gzip"],
            &["identity", "deflate", "gzip;q=0.5"],
        ];
        for len in [0, 10, 999, 1000, 5000] {
            for content_type in ["application/json", "text/event-stream", "image/png"] {
                for known in [true, false] {
                    for accept in accepts {
                        let case =
                            format!("{len} bytes of {content_type}, known {known}, {accept:?}");
                        let answer = move |_: Request<Body>| async move {
                            Ok::<_, Infallible>(respond(len, content_type, known))
                        };
                        let ours = GzipLayer::new(MIN)
                            .layer(tower::service_fn(answer))
                            .oneshot(request(accept))
                            .await
                            .unwrap();
                        let theirs = compression(MIN, tower::service_fn(answer))
                            .oneshot(request(accept))
                            .await
                            .unwrap()
                            .map(Body::new);
                        assert_eq!(taken(ours).await, taken(theirs).await, "{case}");
                    }
                }
            }
        }
    }

    /// A JSON answer of `len` bytes through the layer, for a client accepting gzip.
    async fn through_gzip(len: usize) -> Response<Body> {
        GzipLayer::new(MIN)
            .layer(tower::service_fn(move |_: Request<Body>| async move {
                Ok::<_, Infallible>(respond(len, "application/json", true))
            }))
            .oneshot(request(&["gzip"]))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_small_answer_is_passed_on_untouched_and_a_large_one_gzipped() {
        let small = through_gzip(999).await;
        let (_, headers, bytes) = taken(small).await;
        assert!(headers.iter().all(|(name, _)| name != VARY.as_str()));
        assert_eq!(bytes.len(), 999);

        let large = through_gzip(1000).await;
        assert_eq!(large.headers()["content-encoding"], "gzip");
        assert_eq!(large.headers()[VARY], "accept-encoding");
        let (_, _, bytes) = taken(large).await;
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, "x".repeat(1000));
    }
}
