//! Refuses, before any work, a request whose `Accept-Encoding` admits no coding the service can
//! send (neither gzip nor the plain body): 406 with the JSON error body.
//!
//! Without it, the gzip layer (tower-http 0.7, RFC 9110 section 12.5.3) turns such a request's
//! finished answer into a 406 that still carries the answer: the model call is made and charged,
//! and the client gets an error status around a body it cannot use.

use super::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Wraps a service in [`RefuseUnacceptableEncoding`]. A plain tower layer, not an axum
/// `from_fn`: those clone the stack beneath them on every request, which cache hits feel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseUnacceptableEncodingLayer;

impl<S> Layer<S> for RefuseUnacceptableEncodingLayer {
    type Service = RefuseUnacceptableEncoding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseUnacceptableEncoding { inner }
    }
}

/// Answers 406 `not_acceptable` when [`accepts_a_coding_we_send`] is false; passes the rest on.
#[derive(Debug, Clone)]
pub struct RefuseUnacceptableEncoding<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RefuseUnacceptableEncoding<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if accepts_a_coding_we_send(request.headers()) {
            Either::Right(self.inner.call(request))
        } else {
            let refusal = ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not_acceptable",
                "Accept-Encoding refuses every coding this service sends: allow gzip or identity",
            );
            Either::Left(futures::future::ready(Ok(refusal.into_response())))
        }
    }
}

/// True unless `Accept-Encoding` refuses both the plain body (`identity`) and `gzip`. No header,
/// or an empty one, means the plain body is fine. A coding named explicitly wins over `*`; `q=0`
/// refuses; a q-value that does not parse counts as accepting, so only a clear refusal refuses.
pub fn accepts_a_coding_we_send(headers: &HeaderMap) -> bool {
    let values = headers.get_all(header::ACCEPT_ENCODING);
    // Without a parameter nothing is refused: no `q=0`, so `identity` (named, behind `*` or
    // unnamed) is accepted. Most clients send such a list (`gzip, deflate, br`); one byte scan
    // answers them.
    values.iter().all(|value| !value.as_bytes().contains(&b';')) || weighs_codings(values)
}

/// [`accepts_a_coding_we_send`] by reading every coding and its q-value.
fn weighs_codings(values: header::GetAll<'_, HeaderValue>) -> bool {
    let mut identity = None;
    let mut gzip = None;
    let mut any = None;
    for value in values {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for element in value.split(',') {
            let mut parts = element.split(';');
            // Compared without allocating: this runs on every request, cache hits included.
            let coding = parts.next().unwrap_or_default().trim();
            let accepted = parts
                .filter_map(|param| param.trim().split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, q)| q.trim().parse::<f32>().ok())
                .is_none_or(|q| q > 0.0);
            if coding.eq_ignore_ascii_case("identity") {
                identity = Some(accepted);
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.unwrap_or(false) || accepted);
            } else if coding == "*" {
                any = Some(accepted);
            }
        }
    }
    let identity = identity.or(any).unwrap_or(true);
    let gzip = gzip.or(any).unwrap_or(false);
    identity || gzip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        accepts_a_coding_we_send(&headers)
    }

    #[test]
    fn the_plain_body_is_fine_unless_refused() {
        assert!(accepts(&[]));
        assert!(accepts(&[""]));
        assert!(accepts(&["br"]));
        assert!(accepts(&["br;q=1, zstd"]));
        assert!(accepts(&["identity;q=0.5"]));
        assert!(accepts(&["*;q=0, identity"]));
        assert!(accepts(&["identity;q=nonsense"]));
    }

    #[test]
    fn gzip_alone_is_enough() {
        assert!(accepts(&["gzip, identity;q=0"]));
        assert!(accepts(&["x-gzip;q=0.1, *;q=0"]));
        assert!(accepts(&["GZIP;Q=1", "identity;q=0"]));
        assert!(accepts(&["*;q=0.5, identity;q=0"]));
    }

    #[test]
    fn refusing_identity_and_gzip_is_unacceptable() {
        assert!(!accepts(&["identity;q=0"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(!accepts(&["br, identity;q=0"]));
        assert!(!accepts(&["gzip;q=0, identity;q=0"]));
        assert!(!accepts(&["br", "*;q=0.000"]));
    }

    #[test]
    fn a_list_without_parameters_is_accepted_as_the_full_reading_accepts_it() {
        // The shortcut for lists without `;` must answer what reading them answers.
        let lists: &[&[&str]] = &[
            &[],
            &[""],
            &["gzip"],
            &["identity"],
            &["*"],
            &["br, zstd"],
            &["gzip, deflate, br"],
            &["x-gzip", "identity, *"],
            &[" , ,"],
            &["identity, *", "br"],
        ];
        for list in lists {
            let mut headers = HeaderMap::new();
            for value in *list {
                headers.append(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let read = weighs_codings(headers.get_all(header::ACCEPT_ENCODING));
            assert!(read, "{list:?} would be refused by the full reading");
            assert_eq!(accepts(list), read, "{list:?}");
        }
    }
}
