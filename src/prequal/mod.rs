//! Prequal (feature `prequal`): balancing on probed requests in flight and server-side
//! latency, on both sides of a connection.
//!
//! Wydrowski, Kleinberg, Rumble and Archer, "Load is not what you should balance:
//! Introducing Prequal" (NSDI 2024, arXiv 2312.10172). At YouTube, against weighted round
//! robin, it cut tail latency by about 2× and tail requests in flight by 5 to 10×. Its idea:
//! a client should not balance on the load it can see, but ask servers for their requests
//! in flight (RIF) and their latency at that load, with probes sent asynchronously and
//! reused, and pick by a hot–cold rule.
//!
//! - **The server:** [`PrequalLayer`] wraps a server's service (hyper, axum, tonic): it
//!   counts requests in flight, estimates latency by RIF ([`LoadEstimator`]), answers
//!   probes on `/prequal/probe` without reaching the application, and can attach the same
//!   numbers to every response.
//! - **The wire:** [`wire`]: `GET /prequal/probe`, answered with `x-prequal-rif` and
//!   `x-prequal-latency-us`, as envoy-prequal and the `prequal-server` crate do, so clients
//!   and servers of the three interoperate. [`ProbeAnswer::from_headers`] never panics;
//!   bad answers are an [`AnswerError`].
//! - **The client:** the [`Prequal`] strategy (also at `strategy::Prequal`), its probe pool
//!   ([`pool`]) and its [`ProbeTransport`]: [`HttpTransport`] over any HTTP client
//!   service, or [`ServiceTransport`] over any `tower::Service`.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_lb::prequal::{HttpTransport, Prequal};
//! use tower_lb::{discover, Balance};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! let prequal = Prequal::new(HttpTransport::new(client.clone()));
//! let monitor = prequal.monitor();
//! let addrs = ["127.0.0.1:8001", "127.0.0.1:8002"];
//! let balance = Balance::builder()
//!     .strategy(prequal)
//!     .build(discover::static_list(addrs.map(|a| (a, client.clone()))))?;
//! // ... send requests through `balance` ...
//! println!("{:?}", monitor.stats());
//! # drop(balance); Ok(()) }
//! ```

pub mod estimator;
mod layer;
pub mod pool;
mod prober;
mod strategy;
mod transport;
pub mod wire;

use std::sync::{Mutex, MutexGuard};

pub use estimator::{Arrival, LoadEstimator, MAX_TRACKED_RIF, MIN_SAMPLES, SAMPLES_PER_RIF};
pub use layer::{PrequalFuture, PrequalLayer, PrequalService};
pub use pool::{reuse_budget, Selection};
pub use strategy::{KeyHasher, PooledProbe, Prequal, PrequalMonitor, PrequalStats, PrequalTable};
pub use transport::{HttpTransport, ProbeError, ProbeTransport, ServiceTransport};
pub use wire::{AnswerError, ProbeAnswer, LATENCY_HEADER, PROBE_PATH, RIF_HEADER};

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
