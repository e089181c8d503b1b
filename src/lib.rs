//! Client-side load balancing for [tower] services: one cloneable, lock-free balancer with
//! pluggable strategies, discovery as streams of changes, and live per-endpoint statistics.
//!
//! Wrap the service that talks to one backend (a hyper client, a tonic channel, any
//! `tower::Service`) in a [`Balance`], tell it where the backends are with a
//! [discovery source](discover), and send requests through it from as many tasks and threads
//! as you like.
//!
//! ```
//! use tower::{Service, ServiceExt};
//! use tower_lb::{discover, strategy::RoundRobin, Balance};
//! use tower_lb::classify::ErrorsAsFailures;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // One service per backend; here each answers with its own name.
//! let backend = |name: &'static str| {
//!     tower::service_fn(move |_req: ()| async move { Ok::<_, std::io::Error>(name) })
//! };
//! let mut balance = Balance::builder()
//!     .strategy(RoundRobin::new())
//!     .classify(ErrorsAsFailures) // the default classifier expects http::Response
//!     .build(discover::static_list([("a", backend("a")), ("b", backend("b"))]))
//!     .unwrap();
//!
//! let mut answers = Vec::new();
//! for _ in 0..4 {
//!     answers.push(balance.ready().await.unwrap().call(()).await.unwrap());
//! }
//! assert_eq!(answers, ["a", "b", "a", "b"]);
//! # }
//! ```
//!
//! # Why not `tower::balance::p2c`
//!
//! - **Shared without `Buffer`.** `Balance` is `Clone + Send + Sync`; clones share one
//!   endpoint snapshot (swapped atomically) and atomic counters. tower's balancer is `!Clone`
//!   and needs a `Buffer` (a channel hop and a worker task) to be shared.
//! - **Strategies.** Smooth weighted round robin, weighted random, weighted least request,
//!   peak-EWMA, or your own [`Strategy`](strategy::Strategy).
//! - **Discovery that never empties the set by accident.** Errors, ended streams and empty
//!   resets keep the last good set, and changes apply without traffic.
//! - **Honest load.** Failures (errors, HTTP 5xx and 429, failing gRPC statuses) are not
//!   fast successes, and in-flight counts return to zero on cancellation.
//! - **Fails fast with a reason** instead of waiting forever when no endpoint is eligible.
//! - **Health at the defaults.** Outlier detection is on by default, with rules that work
//!   for three endpoints as for thousands (see [panic mode](health#panic-mode)). Active
//!   probes, slow start and draining keep traffic away from broken endpoints and bring it
//!   back when they recover.
//!
//! # Modules
//!
//! | module | what is in it |
//! |---|---|
//! | [`balance`] | [`Balance`], [`Builder`], [`BalanceLayer`] |
//! | [`strategy`] | the [`Strategy`](strategy::Strategy) trait and the built-in strategies |
//! | [`discover`] | [`Change`](discover::Change), the [`Discover`](discover::Discover) trait and sources |
//! | [`endpoint`] | [`Endpoint`], per-endpoint [`Load`](endpoint::Load) and [`EndpointStats`] |
//! | [`classify`] | which results count as failures |
//! | [`completion`] | when a request stops counting as in flight |
//! | [`health`] | active probes, outlier detection, panic mode, slow start, draining, events |
//! | [`key`] | request keys for consistent hashing |
//! | `metrics` | (feature `metrics`) metric names and how the balancer records them through the `metrics` facade |
//! | `orca` | (feature `orca`) server-reported load: ORCA load reports, the server layer `OrcaLayer` |
//! | `prequal` | (feature `prequal`) Prequal on both sides: the server layer `PrequalLayer`, the `Prequal` strategy, probe transports |
//! | [`error`] | the balancer's errors |
//! | `http` | (feature `http`) HTTP request keys, keep a request in flight until its body ends, and request bodies whose errors are the caller's (`ClientBody`) |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `dns` | no | `discover::dns`: endpoints from DNS A/AAAA or SRV records (depends on `hickory-resolver`) |
//! | `etcd` | no | `discover::etcd`: endpoints from the keys under an etcd prefix, watched, and `Registration` for servers (depends on `etcd-client`, whose build needs `protoc`, and `serde_json`) |
//! | `orca` | no | `orca`: ORCA load reports read from responses (gRFC A51), `strategy::WeightedRoundRobin` (gRFC A58/A114), and the server layer `orca::OrcaLayer` (implies `http`; depends on `prost`, `base64` and `serde_json`) |
//! | `prequal` | no | `prequal`: Prequal (NSDI 2024): the server layer `prequal::PrequalLayer`, the strategy `strategy::Prequal` with its async probes (implies `http`; no dependency of its own) |
//! | `metrics` | no | counters, gauges and a latency histogram per balancer and per endpoint through the `metrics` facade (see `metrics`; depends on `metrics`) |
//! | `http` | yes | `http::OnBodyEnd` and `http::TrackedBody`, `http::ClientBody`, the request keys in `http::key`, and `health::HttpProbe` (depends on `http-body` and `bytes`) |
//!
//! # Logging and metrics
//!
//! The crate logs through [`tracing`](https://docs.rs/tracing) and records metrics through
//! the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, see `metrics`); both
//! cost nothing until the application installs a subscriber or a recorder. Each balancer's
//! background task runs in a span `balancer` with a field `name`
//! ([`Builder::name`], `default` without one), so every event it logs (discovery, health,
//! panic mode) says which balancer it is about. The span is at WARN, so that the name comes
//! with the warnings even when only warnings are logged. Per-request events (TRACE) happen
//! in the caller's task, inside the caller's own spans, and name the endpoint.
//!
//! | level | events | why this level |
//! |---|---|---|
//! | ERROR | a discovery source, strategy or probe panicked; the background task stopped | a bug or a lost runtime: the balancer works on with less (the last set, no probe) and someone must look |
//! | WARN | a discovery error (the first of a run; the last set is kept), discovery ended, an empty reset ignored; panic mode starts (with the endpoints healthy and the threshold) | the balancer protects the traffic, but the picture it works from is wrong or degraded: an operator should know, once |
//! | INFO | an endpoint's health changed (ejected, back, unhealthy, healthy, draining); panic mode ends | the changes an operator reads afterwards to explain what traffic did; a handful per incident, never per request |
//! | DEBUG | endpoints inserted and removed, resets, repeated discovery errors | discovery's routine churn, which a large fleet produces all day |
//! | TRACE | per request: a readiness check failed, a request refused by fail fast, a load report ignored, a Prequal probe failed (probes follow requests) | per-request events would flood any log at higher levels; a request that succeeds logs nothing at all, so the hot path pays no level check |
//!
//! [tower]: https://docs.rs/tower

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod balance;
pub mod classify;
pub mod completion;
pub mod discover;
pub mod endpoint;
pub mod error;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "orca")]
pub mod orca;
#[cfg(feature = "prequal")]
pub mod prequal;
pub mod strategy;
mod time;

pub use balance::{Balance, BalanceLayer, Builder, Monitor};

// Compiles the README's Rust snippets as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use endpoint::{Endpoint, EndpointStats, Metadata};
