//! HTTP helpers (feature `http`): request keys for consistent hashing ([`key`]), and keeping
//! a request in flight until its response body ends ([`OnBodyEnd`]).
//!
//! ```no_run
//! # #[cfg(feature = "http")] {
//! use tower_lb::{Balance, http::OnBodyEnd};
//! # fn demo<D, S>(discovery: D) where D: tower_lb::discover::Discover<std::net::SocketAddr, S> + Send + 'static, S: Clone + Send + Sync + 'static {
//! let balance = Balance::builder()
//!     .track_completion(OnBodyEnd)
//!     .build(discovery)
//!     .unwrap();
//! # }
//! # }
//! ```
//!
//! With [`OnBodyEnd`] the balancer returns `http::Response<TrackedBody<B>>`. The request
//! counts as in flight until the body yields its last frame, fails, or is dropped, which is
//! what least-request balancing wants for streaming or large responses. The outcome and the
//! latency sample are still recorded when the response head arrives, except for a gRPC
//! response whose status comes in its trailers: its outcome is recorded when they arrive
//! (see [`classify`](crate::classify#grpc)), which makes `OnBodyEnd` the policy for gRPC.

mod body;
pub mod key;

pub use body::{OnBodyEnd, TrackedBody};
