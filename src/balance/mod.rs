//! The balancer: a cloneable [`Balance`] service, its [`Builder`] and its [`BalanceLayer`].
//!
//! # How a request flows
//!
//! ```text
//! discovery ──> background driver ──> endpoint snapshot + strategy table (swapped atomically)
//!                                                │
//! poll_ready ── load snapshot (no lock) ── strategy.pick ── clone endpoint service ── poll_ready
//! call       ── still as picked? (one flags load) ── InFlight guard (in_flight += 1) ── endpoint call
//! future     ── classify result ── record outcome and latency ── in_flight -= 1 (exactly once)
//! ```
//!
//! - All clones of a `Balance` share one snapshot and one strategy state. There is no
//!   `Buffer` and no worker task between the caller and the endpoint.
//! - `poll_ready` chooses an endpoint and polls a clone of its service. If that clone is not
//!   ready, the strategy chooses again (up to three choices in all), then the remaining
//!   endpoints are scanned from a random place; the unready clones are kept, so their
//!   wake-ups still reach the caller. One slow endpoint never blocks the others.
//! - `call` checks (one atomic load) that the endpoint is still what it was: if it was
//!   ejected, drained, removed or replaced since `poll_ready`, the request is routed again.
//!   A strategy that routes by key chooses in `call`, with the request's key.
//! - When no endpoint is eligible, `poll_ready` waits for the set to change, up to the
//!   [fail-fast timeout](Builder::fail_fast), then fails with
//!   [`Unavailable`](crate::error::Unavailable), which says why.
//! - A background task applies discovery changes as they come, with or without traffic, and
//!   stops when the last handle is dropped. It is spawned on the tokio runtime that is
//!   current when the balancer is built (or, failing that, at the first `poll_ready`), and
//!   the balancer belongs to that runtime: when it shuts down, `poll_ready` fails with
//!   [`DriverStopped`](crate::error::DriverStopped).
//!
//! # Where things are
//!
//! | file | what it holds |
//! |---|---|
//! | `service.rs` | [`Balance`] and its `Service` implementation: the hot path, top to bottom |
//! | `ready.rs` | the ready search of `poll_ready` |
//! | `wait.rs` | the fail-fast wait of `poll_ready` |
//! | `route.rs` | routing at `call`: by request key, or again after a change |
//! | `future.rs` | [`ResponseFuture`]: outcome, latency, in-flight release |
//! | `handle.rs` | statistics, draining and health events on a handle |
//! | `boxed.rs` | [`BoxBalance`]: a balancer with its types erased |
//! | `monitor.rs` | [`Monitor`] |
//! | `events.rs` | [`HealthEvents`] and the hub that feeds every subscriber |
//! | `builder.rs`, `make.rs`, `layer.rs` | [`Builder`], [`MakeEndpoint`], [`BalanceLayer`] |
//! | `shared.rs` | the state every handle and the driver share: the snapshot, waiters |
//! | `driver.rs` | the background task: discovery, health, snapshots |

mod boxed;
mod builder;
mod driver;
mod events;
mod future;
mod handle;
mod layer;
mod make;
mod monitor;
mod ready;
mod route;
mod service;
mod shared;
mod wait;

pub use boxed::BoxBalance;
pub use builder::Builder;
pub use events::HealthEvents;
pub use future::ResponseFuture;
pub use layer::{BalanceLayer, LayerDiscover};
pub use make::MakeEndpoint;
pub use monitor::Monitor;
pub use service::Balance;
