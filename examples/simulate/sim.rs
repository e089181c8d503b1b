//! The engine of the scenario simulator: simulated backends, the open-loop load generator,
//! the contestants (this crate's strategies, tower's `p2c::Balance`, an oracle), the
//! scenarios and their statistics.
//!
//! `examples/simulate/main.rs` (the command line, output files) and `tests/simulate.rs` (short
//! runs that check the published orderings) both include this file, so it depends on nothing
//! but the crate and its dev-dependencies.
//!
//! # The model
//!
//! - **Time** is tokio's paused clock: every contestant runs on its own current-thread runtime
//!   started with `start_paused(true)`, which jumps from one timer to the next whenever every
//!   task is idle. A 60-second scenario takes a fraction of a second of real time per
//!   contestant and gives the same result on every run. tokio's timers have a resolution of
//!   one millisecond, so arrival times and service times are whole milliseconds (service
//!   times are rounded, at least 1 ms), which keeps every backend's capacity exact.
//! - **A backend** is a `tower::Service<SimRequest>` answering `http::Response<()>`: a number
//!   of concurrency slots (a `tokio::sync::Semaphore`, or unlimited) with an unbounded FIFO
//!   queue in front. A request's service time is drawn from the backend's latency
//!   distribution when it takes a slot, multiplied by its slow-down factor at that moment and
//!   divided by its speed (noisy neighbours). A timeline changes it: slow from t1 to t2, a
//!   different latency, answering 503 at once (failing), refusing connections (restarting,
//!   an `Err`). A request whose client gives up while it waits in the queue leaves the queue
//!   (the server sees the closed connection before it starts the work); one already in
//!   service holds its slot until its service time is over (the work is not interrupted).
//!   The backend counts the requests it receives, per time bin, and knows its true queue
//!   (waiting plus in service), which only the oracle reads.
//! - **Utilization and load reports** (feature `orca`, scenarios `antagonist` and
//!   `heterogeneous`): a backend's utilization is its busy slots over its slots, averaged
//!   over the last second (integrated exactly over time), plus an antagonist's share: an
//!   antagonist that takes a share `a` of a backend's capacity (another process on the same
//!   machine) multiplies its service times by `1 / (1 - a)` and shows as utilization
//!   `a + (1 - a) × busy / slots`, but never in any client's in-flight count. Every answer
//!   of such a backend carries an ORCA report (`endpoint-load-metrics: TEXT ...`) with that
//!   utilization as `cpu_utilization` and its answers per second over the last second
//!   (`tower_lb::orca::RateWindow`) as `rps_fractional`.
//! - **Load** is open-loop: one dispatcher issues the scenario's Poisson arrivals at their
//!   times, whatever the answers. For each request it awaits `ready()` on the contestant's
//!   service (bounded by the request's deadline), calls it, and spawns the response future
//!   under `tokio::time::timeout_at(arrival + deadline)`. Every contestant gets the same
//!   dispatcher, the same arrivals, the same request keys and the same backend timelines
//!   (common random numbers); tower's `!Clone` balancer needs no `Buffer` this way.
//! - **A request succeeds** when a 200 arrives before its deadline; a 503, an error
//!   (refused, our balancer's `Unavailable`, an endpoint timeout) or the deadline is a
//!   failure. Latency is measured from the arrival. In the latency percentiles a failed
//!   request counts as the full deadline: the client had no answer by then.
//! - **Our balancers** use the `DefaultClassifier` (an `Err`, a 5xx or a 429 is a failure) and
//!   get every endpoint through `discover::channel()`; tower's get theirs through an
//!   unbounded channel turned into a `Discover` stream, so both see the same membership
//!   changes at the same times. Every random choice is seeded: ours with `with_seed`,
//!   tower's with `Balance::from_rng`.

//!
//! # The files
//!
//! `sim/rng.rs` (random numbers), `sim/backend.rs` (the simulated backends),
//! `sim/model.rs` (what a scenario is made of), `sim/contestants.rs` (the algorithms that
//! compete), `sim/scenarios/` (one file per scenario, and their registry), `sim/drive.rs`
//! (the arrivals, the dispatcher, running each contestant), `sim/contest.rs` (each
//! contestant's balancer over the backends), `sim/report.rs` (statistics and tables).

#![allow(dead_code)]

#[path = "sim/backend.rs"]
mod backend;
#[path = "sim/contest.rs"]
mod contest;
#[path = "sim/contestants.rs"]
mod contestants;
#[path = "sim/drive.rs"]
mod drive;
#[path = "sim/model.rs"]
mod model;
#[path = "sim/report.rs"]
mod report;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/scenarios/mod.rs"]
mod scenarios;

pub type BoxError = tower_lb::error::BoxError;

// The engine's public items, at the paths they had when it was one file. Each includer
// (`main.rs`, `tests/simulate.rs`) uses a part of them.
#[allow(unused_imports)]
pub use self::{
    backend::{
        Backend, BackendFuture, BackendSpec, BackendState, Dist, Effect, Refused, SimRequest, Timed,
    },
    contestants::{hashing_contestants, orca_contestants, standard_contestants, Algo, Contestant},
    drive::{arrivals, run, run_contestant, run_with, Arrival},
    model::{Membership, Options, Scenario, Step, Zipf},
    report::{markdown, ms, pct, Report, Run, Summary},
    rng::{derive_seed, SimRng},
    scenarios::{scenario, SCENARIOS},
};
