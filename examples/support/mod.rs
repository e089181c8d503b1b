//! What the hot-path examples share: their endpoint, which answers every request at once
//! with the request itself (so that what is counted is the balancer alone), and their
//! command line and runtime.

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

/// Prints `usage` and exits with status 2.
pub fn usage(usage: &str) -> ! {
    eprintln!("{usage}");
    std::process::exit(2);
}

/// The number of requests from the command line, or the usage.
pub fn requests(n: &str, usage_text: &str) -> u64 {
    n.parse().unwrap_or_else(|_| usage(usage_text))
}

/// A current-thread runtime with its timers, where the balancer runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
