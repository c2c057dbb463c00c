//! `--max-request-bytes` answered as gRPC's status-code table says: RESOURCE_EXHAUSTED, naming
//! the limit.
//!
//! tonic refuses a request message over `max_decoding_message_size` before any handler runs,
//! but with OUT_OF_RANGE and no detail. This wrapper rewrites exactly that answer. It knows it
//! by the `Status` tonic leaves in the response's extensions: OUT_OF_RANGE without details is
//! only ever tonic's size refusal, since every OUT_OF_RANGE of the bridge's own carries an
//! `ErrorInfo`. Other responses pass through untouched, with no allocation.

use super::status::{with_info, BRIDGE_DOMAIN};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;

/// A gRPC service whose oversized requests are refused with RESOURCE_EXHAUSTED.
#[derive(Clone, Debug)]
pub struct RequestLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> RequestLimit<S> {
    /// Wraps `inner`, which must itself refuse messages over `limit` bytes
    /// (`max_decoding_message_size(limit)`); this only says so properly.
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: NamedService> NamedService for RequestLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, Req, Body> Service<Req> for RequestLimit<S>
where
    S: Service<Req, Response = http::Response<Body>>,
    S::Future: Unpin,
    Body: Default,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        LimitFuture {
            inner: self.inner.call(request),
            limit: self.limit,
        }
    }
}

/// The inner service's response future, with tonic's size refusal rewritten.
pub struct LimitFuture<F> {
    inner: F,
    limit: usize,
}

impl<F, Body, E> Future for LimitFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
    Body: Default,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limit = self.limit;
        Pin::new(&mut self.inner).poll(cx).map_ok(|response| {
            let refused = response
                .extensions()
                .get::<Status>()
                .is_some_and(|s| s.code() == Code::OutOfRange && s.details().is_empty());
            if refused {
                too_large(limit).into_http()
            } else {
                response
            }
        })
    }
}

/// The status of a request message over the limit.
pub fn too_large(limit: usize) -> Status {
    with_info(
        Code::ResourceExhausted,
        format!(
            "the request message is larger than this bridge's limit of {limit} bytes (--max-request-bytes)"
        ),
        BRIDGE_DOMAIN,
        "REQUEST_TOO_LARGE",
        &[("limit_bytes", limit.to_string())],
    )
}
