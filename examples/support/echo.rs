//! The endpoint of the hot-path examples: it answers every request at once with the
//! request itself, so that what is counted is the balancer alone.

use std::future::{ready, Ready};
use std::task::{Context, Poll};

use tower::Service;

/// An endpoint that answers every request at once with the request itself.
#[derive(Clone)]
pub struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = std::io::Error;
    type Future = Ready<Result<u64, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ready(Ok(request))
    }
}
