//! Balancing strategies: how the balancer chooses an endpoint for each request.
//!
//! A strategy is a value behind the [`Strategy`] trait. It works in two steps:
//!
//! 1. [`Strategy::build`] runs off the hot path, in the background driver, each time the
//!    set of eligible endpoints changes. It returns a *table* (a precomputed schedule, an
//!    alias table, or nothing at all) that is published together with the new endpoint
//!    snapshot.
//! 2. [`Strategy::pick`] runs on every request. It reads the table, the endpoints' live
//!    [`Load`] counters and its own atomics; it must not block or take locks.
//!
//! | strategy | pick | honours weights | reads load | module |
//! |---|---|---|---|---|
//! | [`RoundRobin`] | O(1) | yes, nginx's smooth order | no | [`round_robin`] |
//! | [`Random`] | O(1) | yes (alias table) | no | [`random`] |
//! | [`LeastRequest`] | O(choices), or O(n) full scan | yes, `weight / (in_flight + 1)^bias` | in-flight | [`least_request`] |
//! | [`PeakEwma`] | O(choices) | no | in-flight and latency | [`peak_ewma`] |
//! | [`RingHash`] | O(1) (bucket index), by request key | yes, 160 points per unit (nginx `hash $key consistent`) | no | [`ring_hash`] |
//! | [`Maglev`] | O(1) (one slot), by request key | yes, slots in proportion | no | [`maglev`] |
//! | [`Rendezvous`] | O(n), by request key | yes, `weight / -ln(u)` | no | [`rendezvous`] |
//! | `WeightedRoundRobin` (feature `orca`) | O(max / mean) turns, one CAS | by server load reports, `qps / utilization` (gRFC A58) | load reports | `weighted_round_robin` |
//! | [`BoundedLoad`] | as the wrapped strategy, plus O(n) when the key's endpoint is busy | as the wrapped strategy | in-flight | [`bounded_load`] |
//! | [`AnyStrategy`] | as the strategy inside, plus one `match` | as the strategy inside | as the strategy inside | chosen at run time, by name |
//!
//! # Choosing a strategy at run time
//!
//! [`AnyStrategy`] holds any built-in strategy, and parses from the names configuration
//! files and flags use ([`StrategyKind`]): `round-robin`, `random`, `least-request`,
//! `peak-ewma`, `ring-hash`, `maglev`, `rendezvous`.
//!
//! ```
//! use tower_lb::strategy::AnyStrategy;
//!
//! let name = std::env::var("LB_STRATEGY").unwrap_or_else(|_| "least-request".into());
//! let strategy: AnyStrategy = name.parse().expect("a strategy name");
//! let builder = tower_lb::Balance::builder().strategy(strategy);
//! # drop(builder);
//! ```
//!
//! # Writing a strategy
//!
//! ```
//! use tower_lb::strategy::{Context, Endpoints, Strategy};
//!
//! /// Always prefers the endpoint listed first, unless it has more than 8 requests in flight.
//! struct FirstUnlessBusy;
//!
//! impl Strategy for FirstUnlessBusy {
//!     type Table = ();
//!
//!     fn build(&self, _endpoints: &Endpoints<'_>) {}
//!
//!     fn pick(&self, _table: &(), endpoints: &Endpoints<'_>, _cx: &Context) -> usize {
//!         (0..endpoints.len())
//!             .find(|&i| endpoints.load(i).in_flight() <= 8)
//!             .unwrap_or(0)
//!     }
//! }
//! ```

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::{Load, Metadata};
use crate::error::BuildError;

mod any;
pub mod bounded_load;
pub mod hashing;
pub mod least_request;
pub mod maglev;
pub mod peak_ewma;
mod penalty;
pub mod random;
pub mod rendezvous;
pub mod ring_hash;
pub(crate) mod rng;
pub mod round_robin;
#[cfg(feature = "orca")]
pub mod stride;
#[cfg(feature = "orca")]
pub mod weighted_round_robin;

pub use any::{AnyStrategy, AnyTable, StrategyKind, UnknownStrategy};
pub use bounded_load::BoundedLoad;
pub use hashing::{MissingKey, PreferenceOrder};
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use rendezvous::Rendezvous;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
#[cfg(feature = "orca")]
pub use weighted_round_robin::WeightedRoundRobin;

/// How the balancer chooses an endpoint. See the [module docs](self).
pub trait Strategy: Send + Sync + 'static {
    /// What [`build`](Strategy::build) precomputes for a set of endpoints.
    type Table: Send + Sync + 'static;

    /// Precomputes the table for a new set of eligible endpoints.
    ///
    /// Called by the background driver whenever the set changes, never per request.
    /// `endpoints` holds at least one endpoint, and every weight in it is at least 1.
    fn build(&self, endpoints: &Endpoints<'_>) -> Self::Table;

    /// Chooses the index of an endpoint in `endpoints`.
    ///
    /// `endpoints` is the set `table` was built from and is never empty. An index out of
    /// range is reduced modulo the length rather than trusted.
    ///
    /// If the chosen endpoint's service is not ready (or was ejected or drained since the
    /// table was built), the balancer calls `pick` again, up to three times in all for one
    /// request, so that a random strategy draws new candidates and round robin moves on in
    /// its cycle; then it scans the endpoints no pick reached, in index order from a random
    /// place. A strategy that [routes by key](Strategy::uses_request_key) is called with
    /// [`Context::attempt`] 1, 2, ... instead, for the next endpoint in the key's order.
    fn pick(&self, table: &Self::Table, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize;

    /// Whether the strategy routes by a key taken from each request (consistent hashing).
    ///
    /// When this returns `true`, the balancer chooses at `call` time instead of in
    /// `poll_ready` (which only waits until some eligible endpoint's service is ready, and
    /// reserves it): it takes the request's key with the balancer's
    /// [`RequestKey`](crate::key::RequestKey) and passes it in [`Context::key`]. If the
    /// chosen endpoint cannot take the request (its service is not ready, or it was ejected
    /// since the table was built), the balancer calls `pick` again with
    /// [`Context::attempt`] 1, 2, ... for the next endpoint in the key's preference order,
    /// up to one attempt per endpoint, and then tries the endpoints no attempt reached, in
    /// index order from a place that depends on the key. The default is `false`.
    fn uses_request_key(&self) -> bool {
        false
    }

    /// Whether the strategy needs latency samples, and how to fold them in.
    ///
    /// When this returns `Some`, the balancer reads the clock when it picks an endpoint and
    /// when the response completes, and keeps each endpoint's peak-EWMA latency estimate up
    /// to date. The default is `None`: no clock reads on the hot path.
    fn latency(&self) -> Option<LatencyTracking> {
        None
    }

    /// Whether the strategy reads each endpoint's
    /// [failure penalty](crate::endpoint::Load::failure_penalty), and its time constant.
    ///
    /// When this returns `Some(τ)`, the balancer adds 1 to an endpoint's penalty at each
    /// failure (reading the clock then, on the failure path only), and the penalty fades
    /// with time constant τ; picks read it with
    /// [`Load::failure_penalty`](crate::endpoint::Load::failure_penalty). The default is
    /// `None`: no penalty is kept.
    fn failure_penalty(&self) -> Option<Duration> {
        None
    }

    /// The seed of the strategy's random choices, when it was given one (for example
    /// [`LeastRequest::with_seed`]). The default is `None`.
    ///
    /// A balancer whose strategy has a seed derives its own random choices from it (where
    /// the search for a ready endpoint starts when the strategy's choices are busy, the
    /// jitter of health probes), so that a seeded strategy makes the whole balancer
    /// reproducible; [`Builder::seed`](crate::Builder::seed) overrides it.
    fn seed(&self) -> Option<u64> {
        None
    }

    /// Whether the strategy reads the endpoints' load reports (feature `orca`, see
    /// [`Load::latest_report`](crate::endpoint::Load::latest_report)). When this returns
    /// `true`, the balancer reads the report of every response (from its headers, and for
    /// gRPC from its trailers) into its endpoint's [`Load`]. The default is `false`:
    /// responses are not searched for reports.
    fn load_reports(&self) -> bool {
        false
    }

    /// How often the balancer rebuilds the strategy's table even though the endpoint set
    /// did not change: for strategies whose table is computed from live figures (load
    /// reports, latency, counters) rather than from the set alone. The default is `None`:
    /// the table is rebuilt only when the set changes.
    ///
    /// When this returns `Some(period)`, the background driver calls
    /// [`build`](Strategy::build) every `period` (at least 1 ms) with the current eligible
    /// endpoints, and publishes the new table with a new snapshot, off the hot path: picks
    /// keep reading the previous table until the new one is swapped in. The timer runs
    /// whether or not requests arrive, and stops with the driver.
    fn rebuild_every(&self) -> Option<Duration> {
        None
    }

    /// Checks the strategy's parameters; called once when the balancer is built.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

/// How latency samples are folded into each endpoint's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyTracking {
    /// The time constant of the exponential decay: a sample's weight falls to 1/e after this
    /// long. Must be greater than zero.
    pub decay: Duration,
    /// A failed request counts as a sample of at least this latency, so that fast failures
    /// make an endpoint look slow rather than fast.
    pub failure_penalty: Duration,
}

impl Default for LatencyTracking {
    /// Decay 10 s (linkerd's default) and a failure penalty of 1 s.
    fn default() -> Self {
        LatencyTracking {
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// One eligible endpoint as strategies see it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) weight: u32,
    pub(crate) load: Arc<Load>,
}

/// The eligible endpoints, in discovery order, as a strategy sees them: each one's
/// [weight](Self::weight), live [load](Self::load), [name](Self::name) and
/// [metadata](Self::metadata) (zone, labels).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints<'a> {
    entries: &'a [Entry],
    /// The names and metadata, beside the entries rather than in them: most strategies
    /// read them only when they build, so picks touch less memory.
    names: &'a [Arc<str>],
    metadata: &'a [Metadata],
}

impl<'a> Endpoints<'a> {
    /// `names` and `metadata` have one element per entry.
    pub(crate) fn new(
        entries: &'a [Entry],
        names: &'a [Arc<str>],
        metadata: &'a [Metadata],
    ) -> Self {
        debug_assert_eq!(entries.len(), names.len());
        debug_assert_eq!(entries.len(), metadata.len());
        Endpoints {
            entries,
            names,
            metadata,
        }
    }

    /// The number of eligible endpoints.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no eligible endpoints (never the case inside `build` or `pick`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The weight of endpoint `i` (at least 1). Panics if `i` is out of range.
    #[inline]
    pub fn weight(&self, i: usize) -> u32 {
        self.entries[i].weight
    }

    /// The live counters of endpoint `i`. Panics if `i` is out of range.
    #[inline]
    pub fn load(&self, i: usize) -> &'a Load {
        &self.entries[i].load
    }

    /// The shared handle of endpoint `i`'s counters, for strategies that remember endpoints
    /// from one [`build`](Strategy::build) to the next: `Arc::as_ptr` identifies the
    /// endpoint for as long as a `Weak` of it is kept (an endpoint keeps its counters when
    /// discovery updates it). Panics if `i` is out of range.
    #[inline]
    pub fn load_handle(&self, i: usize) -> &'a Arc<Load> {
        &self.entries[i].load
    }

    /// All weights, in order.
    pub fn weights(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.entries.iter().map(|e| e.weight)
    }

    /// The name of endpoint `i`, which consistent-hashing strategies hash to place it.
    /// Panics if `i` is out of range.
    ///
    /// It is the endpoint's [`Metadata::name`](crate::Metadata::name) if set, or else the
    /// key's `Debug` form without surrounding quotes, so a `SocketAddr` key `127.0.0.1:8000` and a
    /// string key `"10.0.0.1:80"` are named `127.0.0.1:8000` and `10.0.0.1:80`.
    #[inline]
    pub fn name(&self, i: usize) -> &'a str {
        &self.names[i]
    }

    /// The metadata of endpoint `i`, as discovery described it: its
    /// [zone](Metadata::zone) and [labels](Metadata::labels), for strategies that route by
    /// them (see `examples/zone_aware.rs`). Panics if `i` is out of range.
    #[inline]
    pub fn metadata(&self, i: usize) -> &'a Metadata {
        &self.metadata[i]
    }

    /// Requests in flight over all these endpoints (the sum of their in-flight counts).
    pub fn total_in_flight(&self) -> u64 {
        self.entries.iter().map(|e| e.load.in_flight()).sum()
    }
}

/// An owned list of endpoints, for driving a [`Strategy`] outside a balancer: in unit tests
/// of a custom strategy, or in benchmarks of the pick alone.
///
/// ```
/// use tower_lb::strategy::{Context, EndpointList, RoundRobin, Strategy};
///
/// let list = EndpointList::from_weights([5, 1, 1]);
/// let rr = RoundRobin::new();
/// let table = rr.build(&list.endpoints());
/// let picks: Vec<usize> = (0..7)
///     .map(|_| rr.pick(&table, &list.endpoints(), &Context::default()))
///     .collect();
/// assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct EndpointList {
    entries: Vec<Entry>,
    names: Vec<Arc<str>>,
    metadata: Vec<Metadata>,
}

impl EndpointList {
    /// Endpoints with these weights and fresh counters. A weight of 0 is stored as given;
    /// the balancer itself never passes weight-0 endpoints to a strategy.
    /// Endpoints named `"0"`, `"1"`, ... are given these weights and fresh counters.
    pub fn from_weights(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut list = EndpointList::default();
        for weight in weights {
            list.push(weight, Arc::default());
        }
        list
    }

    /// Endpoints with these names and weights and fresh counters, for strategies that hash
    /// names (see [`Endpoints::name`]).
    pub fn from_named<N: Into<Arc<str>>>(named: impl IntoIterator<Item = (N, u32)>) -> Self {
        let mut list = EndpointList::default();
        for (name, weight) in named {
            list.push_named(name, weight, Arc::default());
        }
        list
    }

    /// Adds an endpoint named by its position, with the given weight and counters.
    pub fn push(&mut self, weight: u32, load: Arc<Load>) {
        let name = self.entries.len().to_string();
        self.push_named(name, weight, load);
    }

    /// Adds an endpoint with the given name, weight and counters.
    pub fn push_named(&mut self, name: impl Into<Arc<str>>, weight: u32, load: Arc<Load>) {
        self.push_with_metadata(name, weight, load, Metadata::default());
    }

    /// Adds an endpoint with the given name, weight, counters and metadata (a zone, say).
    pub fn push_with_metadata(
        &mut self,
        name: impl Into<Arc<str>>,
        weight: u32,
        load: Arc<Load>,
        metadata: Metadata,
    ) {
        self.entries.push(Entry { weight, load });
        self.names.push(name.into());
        self.metadata.push(metadata);
    }

    /// The view strategies take.
    pub fn endpoints(&self) -> Endpoints<'_> {
        Endpoints::new(&self.entries, &self.names, &self.metadata)
    }
}

/// Per-pick information the balancer passes to [`Strategy::pick`].
///
/// The clock is read only if the strategy asks for it, and at most once per pick: a clock
/// read costs tens of nanoseconds, as much as a whole pick.
///
/// For strategies that [use a request key](Strategy::uses_request_key), it also carries the
/// request's key, which attempt this is (0 for the first choice, then 1, 2, ... while the
/// balancer falls back along the key's preference order), and a cursor the strategy may use
/// to carry its place from one attempt to the next.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    epoch: Option<Instant>,
    now_ns: Cell<Option<u64>>,
    key: Option<&'a [u8]>,
    attempt: u32,
    cursor: Cell<u64>,
}

impl<'a> Context<'a> {
    /// A context whose clock reads from the balancer's epoch, when latency is tracked.
    pub(crate) fn new(epoch: Option<Instant>) -> Self {
        Context {
            epoch,
            ..Context::default()
        }
    }

    /// A context whose clock reading is `now_ns` nanoseconds (for driving strategies outside
    /// a balancer, with [`EndpointList`]).
    pub fn at_nanos(now_ns: u64) -> Self {
        Context {
            now_ns: Cell::new(Some(now_ns)),
            ..Context::default()
        }
    }

    /// A context carrying a request key (for driving hashing strategies outside a balancer).
    /// `None` stands for a request that has no key.
    pub fn with_key(key: Option<&'a [u8]>) -> Self {
        Context {
            key,
            ..Context::default()
        }
    }

    /// Sets the request key (the balancer's keyed routing).
    pub(crate) fn set_key(&mut self, key: Option<&'a [u8]>) {
        self.key = key;
    }

    /// The same context for the next attempt: `attempt` is one higher, and the key, the
    /// clock reading and the cursor carry over.
    pub fn next_attempt(&self) -> Self {
        Context {
            epoch: self.epoch,
            now_ns: self.now_ns.clone(),
            key: self.key,
            attempt: self.attempt.saturating_add(1),
            cursor: self.cursor.clone(),
        }
    }

    /// Nanoseconds since the balancer was built, on the clock latency samples use. The
    /// first call reads the clock; later calls in the same pick return the same value. 0
    /// when the balancer does not track latency.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        if let Some(now) = self.now_ns.get() {
            return now;
        }
        let now = self.epoch.map_or(0, crate::endpoint::nanos_since);
        self.now_ns.set(Some(now));
        now
    }

    /// The request's key, for strategies that [use one](Strategy::uses_request_key). `None`
    /// when the request has no key (or an empty one), or the strategy picks in `poll_ready`.
    #[inline]
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// 0 for the first choice of a request; 1, 2, ... for the fallbacks after it.
    #[inline]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A value the strategy keeps between the attempts of one request (0 at attempt 0), for
    /// example its position on a ring.
    #[inline]
    pub fn cursor(&self) -> u64 {
        self.cursor.get()
    }

    /// Sets the value [`cursor`](Self::cursor) returns in later attempts of this request.
    #[inline]
    pub fn set_cursor(&self, cursor: u64) {
        self.cursor.set(cursor);
    }
}
