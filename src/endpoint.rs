//! Endpoints: what discovery describes, what the balancer tracks, and what it reports.
//!
//! - [`Endpoint`] is the description a discovery source hands over: a key, the service
//!   that talks to it, a weight and [`Metadata`].
//! - [`Load`] holds the live counters of one endpoint. The balancer updates them with
//!   atomics on every request, and strategies read them to choose.
//! - [`EndpointStats`] is a point-in-time copy of one endpoint, as returned by
//!   [`Balance::endpoints`](crate::Balance::endpoints).
//!
//! # Weights
//!
//! A weight is a `u32`. Weight 1 is the usual value; strategies that honour weights give an
//! endpoint a share of traffic proportional to it.
//!
//! - **Weight 0** keeps the endpoint in the set (it is listed by `endpoints()` with state
//!   [`EndpointState::ZeroWeight`]) but sends it no new requests. If every endpoint has
//!   weight 0, requests fail fast with
//!   [`UnavailableReason::AllZeroWeight`](crate::error::UnavailableReason::AllZeroWeight).
//! - **Weight `u32::MAX`** is valid. All weight arithmetic is done in 64 or 128 bits, so no
//!   sum or product overflows; see each strategy for how it treats very large weights.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

mod sync_service;

pub use sync_service::{SyncEndpoint, SyncService};

/// One endpoint as described by discovery: a key, its service, a weight and metadata.
#[derive(Debug, Clone)]
pub struct Endpoint<K, S> {
    /// The key that identifies the endpoint, for example its `SocketAddr`.
    pub key: K,
    /// The service that sends requests to this endpoint.
    pub service: S,
    /// The endpoint's weight; see the [module docs](self) for 0 and very large values.
    pub weight: u32,
    /// Labels such as the endpoint's zone.
    pub metadata: Metadata,
}

impl<K, S> Endpoint<K, S> {
    /// An endpoint with weight 1 and no metadata.
    pub fn new(key: K, service: S) -> Self {
        Endpoint {
            key,
            service,
            weight: 1,
            metadata: Metadata::default(),
        }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Replaces the service, keeping key, weight and metadata.
    pub fn map_service<T>(self, f: impl FnOnce(&K, S) -> T) -> Endpoint<K, T> {
        let service = f(&self.key, self.service);
        Endpoint {
            key: self.key,
            service,
            weight: self.weight,
            metadata: self.metadata,
        }
    }
}

/// Descriptive labels of an endpoint. The balancer stores and reports them, and strategies
/// see them through [`Endpoints::metadata`](crate::strategy::Endpoints::metadata) (a
/// zone-aware strategy routes by [`zone`](Metadata::zone): `examples/zone_aware.rs`). Of
/// the strategies in this crate, only the consistent-hashing ones read one of them, the
/// [`name`](Metadata::name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// The name consistent-hashing strategies place the endpoint by (see
    /// [`Endpoints::name`](crate::strategy::Endpoints::name)). `None`: the key's `Debug`
    /// form, without surrounding quotes.
    ///
    /// To reach the same servers as nginx's `hash $key consistent`, name each endpoint as
    /// its `server` line in the nginx `upstream` block (for example `10.0.0.1:8080`).
    pub name: Option<Arc<str>>,
    /// The zone (or rack, or region) the endpoint runs in.
    pub zone: Option<Arc<str>>,
    /// Free-form `name = value` labels, in the order given.
    pub labels: Vec<(Arc<str>, Arc<str>)>,
}

impl Metadata {
    /// Metadata with only a zone.
    pub fn zone(zone: impl Into<Arc<str>>) -> Self {
        Metadata {
            zone: Some(zone.into()),
            ..Metadata::default()
        }
    }

    /// Metadata with only a [name](Metadata::name).
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        Metadata {
            name: Some(name.into()),
            ..Metadata::default()
        }
    }

    /// Adds a label.
    pub fn with_label(mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }
}

/// What the balancer currently does with an endpoint.
///
/// When several apply, the first in this order is reported: draining, ejected, unhealthy,
/// zero weight, probation, active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// The endpoint receives requests.
    Active,
    /// The endpoint has weight 0 and receives no new requests.
    ZeroWeight,
    /// Active health checks found it unhealthy (or it awaits its first successful probe);
    /// it receives no new requests, unless the balancer is in panic mode.
    Unhealthy,
    /// Outlier detection ejected it; it receives no new requests, unless the balancer is
    /// in panic mode.
    Ejected,
    /// Back from an ejection: it receives a reduced share until it proves healthy.
    Probation,
    /// It is draining: it receives no new requests and its requests in flight finish.
    Draining,
}

impl EndpointState {
    pub(crate) fn of(weight: u32, health: u32) -> Self {
        if health & flags::DRAINING != 0 {
            EndpointState::Draining
        } else if health & flags::EJECTED != 0 {
            EndpointState::Ejected
        } else if health & flags::UNHEALTHY != 0 {
            EndpointState::Unhealthy
        } else if weight == 0 {
            EndpointState::ZeroWeight
        } else if health & flags::PROBATION != 0 {
            EndpointState::Probation
        } else {
            EndpointState::Active
        }
    }
}

/// Live counters of one endpoint, updated with atomics on every request.
///
/// A `Load` survives updates of its endpoint (an insert with an existing key keeps it),
/// and response futures hold it until they finish, so counts of requests that were in flight
/// when the endpoint was removed still return to zero.
///
/// Layout: the counters every request writes (`started`, `finished`) come first, right after
/// the `Arc`'s reference count, with the health flags and the failure penalty every pick
/// reads, so that one cache line holds them all and a request moves one line between cores
/// instead of two (measured: +14 % requests/s with 64 tasks on two threads,
/// `cargo bench --bench balance -- shared` before and after). The struct is padded to 128
/// bytes with the `Arc` header, so the hot counters of two endpoints allocated one after the
/// other never share a line.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Load {
    /// Requests sent. In flight = `started - finished`, so a request costs two locked
    /// operations on these counters instead of three (+1, -1, completed +1).
    started: AtomicU64,
    /// Requests that finished: completed, cancelled or ignored.
    finished: AtomicU64,
    /// Peak-EWMA latency estimate in nanoseconds, as `f64` bits; 0 means no sample yet.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated, in nanoseconds since the balancer's epoch.
    rtt_at: AtomicU64,
    /// Health flags ([`flags`]): set by the driver (probes, draining) and by the completion
    /// path (an ejection after consecutive failures); read by every pick and every call, so
    /// it shares the first cache line with the counters every request writes. Its high bits
    /// are the service's generation ([`flags::GENERATION`]).
    health: AtomicU32,
    /// Failures in a row (reset by a success), counted only with outlier detection.
    consecutive_failures: AtomicU32,
    /// The failure penalty as last updated, as `f64` bits (0: none); see
    /// [`Load::failure_penalty`]. Read by least-request picks, so it is on the first line.
    penalty: AtomicU64,
    /// When `penalty` was last updated, in nanoseconds since the balancer's epoch.
    penalty_at: AtomicU64,
    /// What every endpoint of the balancer shares: its clock, latency and penalty settings,
    /// and outlier detection's hook; read at every completion. `None`: nothing is tracked
    /// (a `Load` made outside a balancer).
    settings: Option<Arc<LoadSettings>>,
    /// The endpoint's metric handles (feature `metrics`): `None` without a recorder, so a
    /// request pays one branch. On the second line, next to `settings`, which every
    /// completion reads too.
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<crate::metrics::EndpointMetrics>>,
    failures: AtomicU64,
    readiness_failures: AtomicU64,
    cancelled: AtomicU64,
    /// Requests whose outcome said nothing about the endpoint ([`Outcome::Ignored`]).
    ///
    /// [`Outcome::Ignored`]: crate::classify::Outcome::Ignored
    ignored: AtomicU64,
    /// Server load reports (feature `orca`), behind a pointer on the cold line: `None`
    /// unless the balancer reads reports. Takes 8 of the padding's bytes.
    #[cfg(feature = "orca")]
    reports: Option<Box<Reports>>,
    /// Successes since the endpoint entered probation.
    probation_successes: AtomicU32,
    /// Cold padding up to 128 bytes with the `Arc` header (192 with both `orca` and
    /// `metrics`, whose pointers do not both fit), so that the next allocation's hot
    /// counters do not share a line with these.
    #[cfg(not(any(feature = "orca", feature = "metrics")))]
    _pad: [u32; 3],
    #[cfg(all(feature = "orca", not(feature = "metrics")))]
    _pad: [u32; 1],
    #[cfg(all(feature = "metrics", not(feature = "orca")))]
    _pad: [u32; 1],
    #[cfg(all(feature = "orca", feature = "metrics"))]
    _pad: [u32; 15],
}

/// An endpoint's load reports (feature `orca`): the latest one and the counts.
#[cfg(feature = "orca")]
#[derive(Debug, Default)]
struct Reports {
    latest: arc_swap::ArcSwapOption<crate::orca::ReceivedReport>,
    received: AtomicU64,
    errors: AtomicU64,
}

/// What the endpoints of one balancer share, behind one pointer in each [`Load`].
#[derive(Debug)]
pub(crate) struct LoadSettings {
    /// How latency samples are taken and folded in; `None` when latency is not tracked.
    pub(crate) timing: Option<Timing>,
    /// The failure penalty's clock and time constant, when the strategy reads it.
    pub(crate) penalty: Option<Penalty>,
    /// Outlier detection's thresholds and the driver's wake-up, when it is on.
    pub(crate) outlier: Option<Arc<dyn OutcomePolicy>>,
    /// Whether each endpoint keeps the load reports of its responses (feature `orca`).
    #[cfg_attr(not(feature = "orca"), allow(dead_code))]
    pub(crate) reports: bool,
}

/// What one request's outcome does to its endpoint's health beyond the counters: outlier
/// detection's per-request rules (failures in a row eject, successes end probation),
/// implemented by the health module. [`Load::record`] calls it only for a failure, or for a
/// success after a failure, on probation, or of an endpoint marked unreachable.
pub(crate) trait OutcomePolicy: Send + Sync + std::fmt::Debug {
    /// Applies the outcome `observed` of one request (or readiness check) of `load`'s
    /// endpoint.
    fn observe(&self, load: &Load, observed: Observed);
}

/// The clock and time constant of the [failure penalty](Load::failure_penalty).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Penalty {
    pub(crate) epoch: Instant,
    /// The time constant, in nanoseconds (at least 1).
    pub(crate) decay_ns: f64,
}

/// The bits of [`Load`]'s health flags.
pub(crate) mod flags {
    /// Active probes found the endpoint unhealthy (or it awaits its first success).
    pub(crate) const UNHEALTHY: u32 = 1;
    /// Outlier detection ejected the endpoint.
    pub(crate) const EJECTED: u32 = 2;
    /// The endpoint is draining: no new requests.
    pub(crate) const DRAINING: u32 = 4;
    /// Back from an ejection, on limited traffic until it proves healthy.
    pub(crate) const PROBATION: u32 = 8;
    /// The endpoint left the set: requests still in flight may finish on it, but they must
    /// not eject it (nothing would end that ejection or give back its slot).
    pub(crate) const REMOVED: u32 = 16;
    /// The endpoint refused a connection (or could not be reached) the last time a request
    /// or probe tried: its failures are proof that a request sent there fails, so panic
    /// mode does not bring it back while any other endpoint can take requests. Cleared by
    /// the next success (of a request or a probe).
    pub(crate) const UNREACHABLE: u32 = 32;
    /// Flags that keep an endpoint from new requests (outside panic mode).
    pub(crate) const UNAVAILABLE: u32 = UNHEALTHY | EJECTED | DRAINING;
    /// The bits above the flags count how many times discovery replaced the endpoint's
    /// service (wrapping): a service clone picked before a replacement is stale, and one
    /// atomic load of the flags word tells.
    pub(crate) const GENERATION: u32 = !0xff;
    /// One replacement, in the [`GENERATION`] bits.
    pub(crate) const NEXT_GENERATION: u32 = 0x100;
}

/// What one finished request (or failed readiness check) says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The classifier judged it a success.
    Success,
    /// The classifier judged it a failure.
    Failure,
    /// A failure whose error shows that the endpoint could not be reached (see
    /// [`health::unreachable`](crate::health::unreachable)).
    Unreachable,
    /// Neither: the result says nothing about the endpoint (the caller's request body
    /// failed, or the classifier said so).
    Ignored,
}

/// A penalty below this counts as none (and is cleared).
const PENALTY_FLOOR: f64 = 0.01;
/// The penalty's time constant for a `Load` made outside a balancer.
const DEFAULT_PENALTY_DECAY_NS: f64 = 1e9;

/// The balancer's latency settings, copied into each of its endpoints' [`Load`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) epoch: Instant,
    pub(crate) decay_ns: f64,
    pub(crate) penalty_ns: f64,
}

/// `exp(-elapsed / decay)`: how much of an estimate is left after `elapsed_ns`.
#[inline]
pub(crate) fn decay_weight(elapsed_ns: u64, decay_ns: f64) -> f64 {
    let x = -(elapsed_ns as f64) / decay_ns;
    // e^x to within 5e-7 for the tiny exponents of steady traffic, without `exp`.
    if x > -1e-3 {
        1.0 + x
    } else {
        x.exp()
    }
}

/// Nanoseconds from `epoch` to now, in integer arithmetic (no u128).
#[inline]
pub(crate) fn nanos_since(epoch: Instant) -> u64 {
    let d = Instant::now().saturating_duration_since(epoch);
    d.as_secs()
        .wrapping_mul(1_000_000_000)
        .wrapping_add(u64::from(d.subsec_nanos()))
}

impl Timing {
    /// Now, in nanoseconds since the balancer's epoch: the clock every latency sample uses.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        nanos_since(self.epoch)
    }
}

impl Load {
    pub(crate) fn new(settings: Arc<LoadSettings>, initial_flags: u32) -> Self {
        let load = Load {
            health: AtomicU32::new(initial_flags),
            ..Load::default()
        };
        #[cfg(feature = "orca")]
        let load = if settings.reports {
            load.with_load_reports()
        } else {
            load
        };
        Load {
            settings: Some(settings),
            ..load
        }
    }

    #[inline]
    fn timing(&self) -> Option<&Timing> {
        self.settings.as_deref()?.timing.as_ref()
    }

    #[inline]
    fn outlier(&self) -> Option<&dyn OutcomePolicy> {
        self.settings.as_deref()?.outlier.as_deref()
    }

    /// The health flags (see [`flags`]).
    #[inline]
    pub(crate) fn health_flags(&self) -> u32 {
        self.state() & !flags::GENERATION
    }

    /// The health flags and the service's generation, in one load.
    #[inline]
    pub(crate) fn state(&self) -> u32 {
        self.health.load(Ordering::Acquire)
    }

    /// Counts a replacement of the endpoint's service; returns the new generation (the
    /// [`flags::GENERATION`] bits).
    pub(crate) fn replace_service(&self) -> u32 {
        let before = self
            .health
            .fetch_add(flags::NEXT_GENERATION, Ordering::AcqRel);
        before.wrapping_add(flags::NEXT_GENERATION) & flags::GENERATION
    }

    /// Sets (`on`) or clears the flags in `mask`; returns the flags before.
    pub(crate) fn set_flags(&self, mask: u32, on: bool) -> u32 {
        if on {
            self.health.fetch_or(mask, Ordering::AcqRel)
        } else {
            self.health.fetch_and(!mask, Ordering::AcqRel)
        }
    }

    /// Starts probation: counts successes from zero. Probation starts before the ejection
    /// ends, so that the first failure after the ejection finds the endpoint on probation.
    ///
    /// Like [`end_ejection`](Self::end_ejection), it forgets the failures that ejected the
    /// endpoint.
    pub(crate) fn begin_probation(&self) {
        self.forgive();
        self.probation_successes.store(0, Ordering::Relaxed);
        self.set_flags(flags::PROBATION, true);
        self.set_flags(flags::EJECTED, false);
    }

    /// Ends an ejection without probation: back at full weight, counting failures in a row
    /// from zero.
    pub(crate) fn end_ejection(&self) {
        self.forgive();
        self.set_flags(flags::EJECTED, false);
    }

    /// The failures that ejected the endpoint must not count again once the ejection is
    /// over: neither in the count of failures in a row, nor in the failure penalty (an
    /// endpoint back from an ejection would otherwise draw no requests under least request
    /// until its penalty faded, seconds after it came back).
    fn forgive(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.penalty.store(0, Ordering::Relaxed);
    }

    /// Failures in a row, as outlier detection counts them.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Counts one more failure in a row; returns the count.
    pub(crate) fn count_failure_in_row(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A success: failures in a row start again from zero.
    pub(crate) fn clear_failures_in_row(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one more success on probation; returns the count.
    pub(crate) fn count_probation_success(&self) -> u32 {
        self.probation_successes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A failure on probation: its successes in a row start again from zero.
    pub(crate) fn clear_probation_successes(&self) {
        self.probation_successes.store(0, Ordering::Relaxed);
    }

    /// The failure penalty as last stored, as `f64` bits (0: none); see
    /// [`Load::failure_penalty`]. One atomic load.
    #[inline]
    pub(crate) fn penalty_bits(&self) -> u64 {
        self.penalty.load(Ordering::Relaxed)
    }

    /// Whether the endpoint has a failure penalty at all (one atomic load, no clock).
    #[inline]
    pub(crate) fn has_failure_penalty(&self) -> bool {
        self.penalty.load(Ordering::Relaxed) != 0
    }

    /// The penalty stored as `bits` (not 0), decayed to `now_ns`.
    #[cold]
    pub(crate) fn decayed_penalty(&self, bits: u64, now_ns: u64) -> f64 {
        let at = self.penalty_at.load(Ordering::Relaxed);
        let value =
            f64::from_bits(bits) * decay_weight(now_ns.saturating_sub(at), self.penalty_decay_ns());
        if value < PENALTY_FLOOR {
            // Faded: later picks need no clock read. Only if no failure added to it since.
            let _ = self
                .penalty
                .compare_exchange(bits, 0, Ordering::Relaxed, Ordering::Relaxed);
            return 0.0;
        }
        value
    }

    fn penalty_decay_ns(&self) -> f64 {
        self.settings
            .as_deref()
            .and_then(|s| s.penalty)
            .map_or(DEFAULT_PENALTY_DECAY_NS, |p| p.decay_ns)
    }

    /// Adds one failure to the penalty, if the strategy reads it.
    #[cold]
    fn add_penalty(&self) {
        let Some(penalty) = self.settings.as_deref().and_then(|s| s.penalty) else {
            return;
        };
        let now_ns = nanos_since(penalty.epoch);
        let bits = self.penalty.load(Ordering::Relaxed);
        let before = if bits == 0 {
            0.0
        } else {
            let at = self.penalty_at.load(Ordering::Relaxed);
            f64::from_bits(bits) * decay_weight(now_ns.saturating_sub(at), penalty.decay_ns)
        };
        // Concurrent failures may overwrite each other's addition; the penalty is an
        // estimate, and the next failure adds again.
        self.penalty_at.store(now_ns, Ordering::Relaxed);
        self.penalty
            .store((before + 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Takes a latency sample for a request that started at `start_ns`, if latency is
    /// tracked, and returns the time it was taken. A failure counts as at least the failure
    /// penalty.
    #[inline]
    pub(crate) fn sample_latency(&self, start_ns: u64, failure: bool) -> Option<u64> {
        let (t, now_ns, elapsed) = self.elapsed_since(start_ns)?;
        let rtt = if failure {
            elapsed.max(t.penalty_ns)
        } else {
            elapsed
        };
        self.observe_rtt(rtt, now_ns, t.decay_ns);
        Some(now_ns)
    }

    /// Takes the elapsed time of a cancelled request as a lower bound: it can raise the
    /// estimate (a hung endpoint looks slow) but never lower it.
    #[cold]
    pub(crate) fn sample_cancelled(&self, start_ns: u64) {
        if let Some((t, now_ns, waited)) = self.elapsed_since(start_ns) {
            let (est, at) = self.rtt_raw();
            // Against the estimate as picks see it now (decayed), not as last stored: a
            // request cancelled after 1 s must refresh a 1 s estimate that has since decayed.
            if waited > est * decay_weight(now_ns.saturating_sub(at), t.decay_ns) {
                self.observe_rtt(waited, now_ns, t.decay_ns);
            }
        }
    }

    /// When latency is tracked: the settings, now, and the nanoseconds since `start_ns`.
    #[inline]
    fn elapsed_since(&self, start_ns: u64) -> Option<(&Timing, u64, f64)> {
        let t = self.timing()?;
        let now_ns = t.now_ns();
        Some((t, now_ns, now_ns.saturating_sub(start_ns) as f64))
    }

    /// Counters for driving a strategy outside a balancer (unit tests of a custom strategy,
    /// benchmarks): `in_flight` requests in flight and, if given, a latency estimate
    /// recorded at time 0 of the strategy's [`Context`](crate::strategy::Context) clock.
    pub fn with_state(in_flight: u64, latency: Option<Duration>) -> Self {
        let load = Load::default();
        load.started.store(in_flight, Ordering::Relaxed);
        if let Some(latency) = latency {
            let ns = (latency.as_nanos() as f64).max(1.0);
            load.rtt_ns.store(ns.to_bits(), Ordering::Relaxed);
        }
        load
    }

    /// The same counters with a [failure penalty](Load::failure_penalty) of `penalty`,
    /// recorded at time 0 of the strategy's [`Context`](crate::strategy::Context) clock and
    /// fading with a time constant of 1 s (for driving a strategy outside a balancer).
    /// Values that are not finite and positive mean no penalty.
    pub fn with_failure_penalty(self, penalty: f64) -> Self {
        let bits = if penalty.is_finite() && penalty >= PENALTY_FLOOR {
            penalty.to_bits()
        } else {
            0
        };
        self.penalty.store(bits, Ordering::Relaxed);
        self.penalty_at.store(0, Ordering::Relaxed);
        self
    }

    /// The same counters, keeping load reports (feature `orca`): what a balancer that reads
    /// reports gives each endpoint, for driving a report-fed strategy outside a balancer.
    #[cfg(feature = "orca")]
    pub fn with_load_reports(mut self) -> Self {
        self.reports = Some(Box::default());
        self
    }

    /// Whether this endpoint keeps load reports (feature `orca`).
    #[cfg(feature = "orca")]
    #[inline]
    pub fn keeps_load_reports(&self) -> bool {
        self.reports.is_some()
    }

    /// Records a load report, or a report that could not be read (feature `orca`). A report
    /// becomes the endpoint's [latest](Self::latest_report), stamped with the time now; an
    /// error is only counted. Does nothing unless the endpoint
    /// [keeps reports](Self::keeps_load_reports).
    ///
    /// The balancer calls this for every response that carries a report; call it yourself
    /// to feed reports from another source (an out-of-band stream).
    #[cfg(feature = "orca")]
    pub fn record_load_report(
        &self,
        report: Result<crate::orca::LoadReport, crate::orca::OrcaError>,
    ) {
        let Some(reports) = self.reports.as_deref() else {
            return;
        };
        match report {
            Ok(report) => {
                reports.received.fetch_add(1, Ordering::Relaxed);
                reports
                    .latest
                    .store(Some(crate::orca::ReceivedReport::now(report)));
            }
            Err(error) => {
                reports.errors.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%error, "load report ignored");
            }
        }
    }

    /// The latest load report and when it arrived (feature `orca`); `None` before the first,
    /// or when the endpoint does not keep reports.
    #[cfg(feature = "orca")]
    pub fn latest_report(&self) -> Option<Arc<crate::orca::ReceivedReport>> {
        self.reports.as_deref()?.latest.load_full()
    }

    /// Load reports received (feature `orca`).
    #[cfg(feature = "orca")]
    pub fn load_reports_received(&self) -> u64 {
        self.reports
            .as_deref()
            .map_or(0, |r| r.received.load(Ordering::Relaxed))
    }

    /// Load reports that could not be read and were ignored (feature `orca`).
    #[cfg(feature = "orca")]
    pub fn load_report_errors(&self) -> u64 {
        self.reports
            .as_deref()
            .map_or(0, |r| r.errors.load(Ordering::Relaxed))
    }

    /// Requests sent to the endpoint that have not finished yet.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        // Read `finished` first: `started` can only have grown since, so no underflow.
        let finished = self.finished.load(Ordering::Acquire);
        self.started
            .load(Ordering::Relaxed)
            .saturating_sub(finished)
    }

    /// Requests that finished with a response or an error, not counting cancelled and
    /// [ignored](Load::ignored) ones.
    ///
    /// A request finishes when its [`InFlight`](crate::completion::InFlight) guard is
    /// released: at the response with [`OnResponse`](crate::completion::OnResponse), at the
    /// end of the body with `OnBodyEnd`. Requests sent =
    /// `in_flight + completed + cancelled + ignored` whenever no request is finishing; a snapshot taken while requests finish reads the
    /// counters one after another and may be off by those. The outcome (success or failure)
    /// is recorded earlier, when the response head arrives.
    pub fn completed(&self) -> u64 {
        // A cancellation counts `cancelled` (and an ignored outcome `ignored`) before
        // `finished` (Release), so reading `finished` first (Acquire) sees those of every
        // request it counts.
        let finished = self.finished.load(Ordering::Acquire);
        finished
            .saturating_sub(self.cancelled.load(Ordering::Relaxed))
            .saturating_sub(self.ignored.load(Ordering::Relaxed))
    }

    /// Completed requests that the classifier judged to be failures, plus readiness checks
    /// (`poll_ready`) of the endpoint's service that returned an error.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Readiness checks (`poll_ready`) of the endpoint's service that returned an error; a
    /// part of [`failures`](Load::failures). The balancer skips the endpoint for that request.
    pub fn readiness_failures(&self) -> u64 {
        self.readiness_failures.load(Ordering::Relaxed)
    }

    /// Requests whose response future was dropped before it finished.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Requests whose outcome said nothing about the endpoint, counted neither as
    /// completed nor as failures: [`Outcome::Ignored`], which the balancer records when the
    /// caller's own request body failed the request (see
    /// [`classify`](crate::classify#errors-of-the-callers-request-body)).
    ///
    /// [`Outcome::Ignored`]: crate::classify::Outcome::Ignored
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// The latency estimate as last updated (peak-EWMA, not decayed to now), or `None`
    /// when latency is not tracked or no request has finished yet.
    pub fn latency(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    #[inline]
    pub(crate) fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn finish(&self) {
        self.finished.fetch_add(1, Ordering::Release);
    }

    /// Requests sent to the endpoint (in flight, completed or cancelled).
    #[cfg(feature = "metrics")]
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Gives the endpoint its metric handles (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub(crate) fn with_metrics(
        mut self,
        metrics: Option<Arc<crate::metrics::EndpointMetrics>>,
    ) -> Self {
        self.metrics = metrics;
        self
    }

    /// The endpoint's metric handles, when a recorder is installed.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn metrics(&self) -> Option<&crate::metrics::EndpointMetrics> {
        self.metrics.as_deref()
    }

    /// When a request starts, on the clock its latency is measured by: `start_ns` (the
    /// balancer's latency clock, 0 when it tracks none), or the metrics' clock when only
    /// the latency histogram needs one.
    #[inline]
    pub(crate) fn request_start_ns(&self, start_ns: u64) -> u64 {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            if self.timing().is_none() {
                return nanos_since(metrics.epoch);
            }
        }
        start_ns
    }

    /// Records one request's outcome in the metrics (feature `metrics`): its latency since
    /// `start_ns` (see [`request_start_ns`](Self::request_start_ns)) up to `now_ns` (the
    /// latency sample's time, or else now) unless `latency` is false, and its failure, if
    /// it is one.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn record_metrics(
        &self,
        start_ns: u64,
        now_ns: Option<u64>,
        observed: Observed,
        latency: bool,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        if latency && observed != Observed::Ignored {
            let now_ns = now_ns.unwrap_or_else(|| match self.timing() {
                Some(timing) => timing.now_ns(),
                None => nanos_since(metrics.epoch),
            });
            metrics.latency(now_ns.saturating_sub(start_ns));
        }
        match observed {
            Observed::Success | Observed::Ignored => {}
            Observed::Failure => metrics.failure(crate::metrics::Failure::Classified),
            Observed::Unreachable => metrics.failure(crate::metrics::Failure::Unreachable),
        }
    }

    /// Records what one completed request says about the endpoint.
    #[inline]
    pub(crate) fn record(&self, observed: Observed) {
        if observed != Observed::Success {
            return self.record_failure(observed);
        }
        // A success matters to outlier detection only after a failure, on probation, or
        // for an endpoint marked unreachable: two loads from the first cache line decide.
        if self.consecutive_failures.load(Ordering::Relaxed) == 0
            && self.health.load(Ordering::Relaxed) & (flags::PROBATION | flags::UNREACHABLE) == 0
        {
            return;
        }
        if let Some(outlier) = self.outlier() {
            outlier.observe(self, observed);
        }
    }

    /// Records a failure, or an outcome that is neither success nor failure (off the
    /// success path's way).
    #[cold]
    fn record_failure(&self, observed: Observed) {
        if observed == Observed::Ignored {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.add_penalty();
        if let Some(outlier) = self.outlier() {
            outlier.observe(self, observed);
        }
    }

    /// A strategy's own probe of the endpoint failed (Prequal): a failure for outlier
    /// detection and the failure penalty, but not a request.
    #[cfg(feature = "prequal")]
    pub(crate) fn record_probe_failure(&self, unreachable: bool) {
        self.add_penalty();
        if let Some(outlier) = self.outlier() {
            let observed = if unreachable {
                Observed::Unreachable
            } else {
                Observed::Failure
            };
            outlier.observe(self, observed);
        }
    }

    /// An endpoint's service failed `poll_ready`: a failure, but not a completed request.
    pub(crate) fn record_readiness_failure(&self, observed: Observed) {
        self.readiness_failures.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.failure(crate::metrics::Failure::Readiness);
        }
        self.record(match observed {
            Observed::Success | Observed::Ignored => Observed::Failure,
            other => other,
        });
    }

    pub(crate) fn record_cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The raw estimate in nanoseconds (0 = none) and when it was set.
    #[inline]
    pub(crate) fn rtt_raw(&self) -> (f64, u64) {
        (
            f64::from_bits(self.rtt_ns.load(Ordering::Relaxed)),
            self.rtt_at.load(Ordering::Relaxed),
        )
    }

    /// Folds one latency sample into the peak-EWMA estimate.
    ///
    /// The estimate as picks see it now is the stored one decayed by
    /// `w = exp(-elapsed / decay)`, where `elapsed` is the time since the last update. A
    /// sample above that replaces it at once (the "peak"); a lower one is blended in:
    /// `estimate × w + sample × (1 - w)` (Finagle's and linkerd's peak-EWMA). Comparing with
    /// the decayed estimate matters for an endpoint that stays slow: its samples keep the
    /// estimate up instead of letting it decay between them. Concurrent updates may
    /// overwrite each other; the estimate stays within the range of the samples either way.
    #[inline]
    pub(crate) fn observe_rtt(&self, sample_ns: f64, now_ns: u64, decay_ns: f64) {
        let (est, at) = self.rtt_raw();
        let w = decay_weight(now_ns.saturating_sub(at), decay_ns);
        let next = if est == 0.0 || sample_ns > est * w {
            sample_ns
        } else {
            est * w + sample_ns * (1.0 - w)
        };
        // A sample of 0 ns (paused clock, instant reply) must not read back as "no sample".
        let next = next.max(1.0);
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_at.store(now_ns, Ordering::Relaxed);
    }
}

/// A point-in-time copy of one endpoint's description and counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointStats<K> {
    /// The endpoint's key.
    pub key: K,
    /// The endpoint's weight.
    pub weight: u32,
    /// The endpoint's metadata.
    pub metadata: Metadata,
    /// What the balancer does with the endpoint.
    pub state: EndpointState,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests that finished with a response or an error (see [`Load::completed`]).
    pub completed: u64,
    /// Completed requests classified as failures, plus failed readiness checks.
    pub failures: u64,
    /// Failed readiness checks (`poll_ready` errors of the endpoint's service), a part of
    /// `failures`.
    pub readiness_failures: u64,
    /// Requests whose response future was dropped before completion.
    pub cancelled: u64,
    /// Requests whose outcome said nothing about the endpoint (see [`Load::ignored`]):
    /// neither completed nor failed.
    pub ignored: u64,
    /// The peak-EWMA latency estimate, when latency is tracked and sampled.
    pub latency: Option<Duration>,
    /// The latest load report the endpoint sent (feature `orca`), when the balancer reads
    /// reports and one arrived.
    #[cfg(feature = "orca")]
    pub load_report: Option<crate::orca::LoadReport>,
    /// How long ago `load_report` arrived (feature `orca`).
    #[cfg(feature = "orca")]
    pub load_report_age: Option<Duration>,
    /// Load reports received (feature `orca`).
    #[cfg(feature = "orca")]
    pub load_reports: u64,
    /// Load reports that could not be read and were ignored (feature `orca`): see
    /// [`OrcaError`](crate::orca::OrcaError).
    #[cfg(feature = "orca")]
    pub load_report_errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed() -> Load {
        Load::new(
            Arc::new(LoadSettings {
                timing: Some(Timing {
                    epoch: Instant::now(),
                    decay_ns: 10e9,
                    penalty_ns: 1e9,
                }),
                penalty: None,
                outlier: None,
                reports: false,
            }),
            0,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancellation_can_raise_the_estimate_but_never_lower_it() {
        let load = timed();
        // A completed request of 100 ms sets the estimate.
        tokio::time::advance(Duration::from_millis(100)).await;
        load.sample_latency(0, false);
        assert_eq!(load.latency(), Some(Duration::from_millis(100)));

        // A request cancelled after 1 ms says only "at least 1 ms": no change.
        let start = load.timing().unwrap().now_ns();
        tokio::time::advance(Duration::from_millis(1)).await;
        load.sample_cancelled(start);
        assert_eq!(load.latency(), Some(Duration::from_millis(100)));

        // One cancelled after 500 ms raises it (the peak).
        let start = load.timing().unwrap().now_ns();
        tokio::time::advance(Duration::from_millis(500)).await;
        load.sample_cancelled(start);
        assert_eq!(load.latency(), Some(Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancellation_refreshes_an_estimate_that_has_decayed_below_it() {
        let load = timed();
        let timing = *load.timing().unwrap();
        // A 1 s sample, then 20 s without one: picks see 1 s × e^-2 = 135 ms.
        tokio::time::advance(Duration::from_secs(1)).await;
        load.sample_latency(0, false);
        tokio::time::advance(Duration::from_secs(20)).await;
        // A request to the endpoint is cancelled after 1 s (the caller's timeout): the
        // endpoint is still that slow, so the estimate is refreshed to 1 s as of now.
        let start = timing.now_ns();
        tokio::time::advance(Duration::from_secs(1)).await;
        load.sample_cancelled(start);
        let (estimate, at) = load.rtt_raw();
        assert_eq!(estimate, 1e9);
        assert_eq!(at, timing.now_ns());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_counts_as_at_least_the_penalty() {
        let load = timed();
        tokio::time::advance(Duration::from_millis(2)).await;
        load.sample_latency(0, true);
        assert_eq!(load.latency(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_load_with_its_arc_header_fills_two_cache_lines() {
        // Two reference counts (16 bytes) precede the `Load` in an `Arc`'s allocation.
        let lines = if cfg!(all(feature = "orca", feature = "metrics")) {
            3
        } else {
            2
        };
        assert_eq!(std::mem::size_of::<Load>() + 16, 64 * lines);
        // What every request writes and every pick reads shares the first line.
        for end in [
            std::mem::offset_of!(Load, finished) + 8,
            std::mem::offset_of!(Load, health) + 4,
            std::mem::offset_of!(Load, penalty) + 8,
        ] {
            assert!(16 + end <= 64, "{end}");
        }
        // Load reports sit behind a pointer on the cold line.
        #[cfg(feature = "orca")]
        assert!(16 + std::mem::offset_of!(Load, reports) >= 64);
    }

    #[test]
    fn counters_add_up_at_every_step() {
        let load = Load::default();
        load.start();
        load.start();
        load.start();
        assert_eq!(
            (load.in_flight(), load.completed(), load.cancelled()),
            (3, 0, 0)
        );
        load.record(Observed::Failure);
        load.finish();
        load.record_cancel();
        load.finish();
        assert_eq!(
            (load.in_flight(), load.completed(), load.cancelled()),
            (1, 1, 1)
        );
        assert_eq!(load.failures(), 1);
        load.record_readiness_failure(Observed::Failure);
        assert_eq!((load.failures(), load.readiness_failures()), (2, 1));
    }
}
