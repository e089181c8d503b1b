//! HTTP helpers (feature `http`): the endpoint service for HTTP clients ([`HttpEndpoint`]),
//! request keys for consistent hashing ([`key`]), keeping a request in flight until its
//! response body ends ([`OnBodyEnd`]), and request bodies whose errors are the caller's,
//! not the endpoint's ([`ClientBody`]).
//!
//! [`HttpEndpoint`] is what every HTTP user needs: the service for one endpoint, which
//! sends a request through a shared client (a hyper-util legacy `Client`, or any
//! `Service<http::Request<B>>`) to that endpoint's address, and puts [`ServedBy`] in the
//! response. See its docs for a balancer whose type can be named.
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
//!
//! A proxy forwards bodies it does not control: wrapped in [`ClientBody`], their errors (an
//! aborted upload, a malformed chunk) are [`ClientBodyError`]s, and the balancer records a
//! request that fails because of one as neither a failure nor a success of the endpoint
//! (see [`classify`](crate::classify#errors-of-the-callers-request-body)).

mod body;
mod client_body;
mod endpoint;
pub mod key;

pub use crate::classify::ClientBodyError;
pub use body::{OnBodyEnd, TrackedBody};
pub use client_body::ClientBody;
pub use endpoint::{EndpointError, HttpEndpoint, ResponseFuture, ServedBy};
