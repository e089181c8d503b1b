//! The client side: the [`Prequal`] strategy.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::pool::{reuse_budget, Pool, Selection};
use super::transport::ProbeTransport;
use super::wire::ProbeAnswer;
use crate::endpoint::Load;
use crate::error::BuildError;
use crate::health::ProbeTarget;
use crate::strategy::rng::Rng;
use crate::strategy::{Context, Endpoints, Strategy};

/// Balancing by probed load: Prequal (Wydrowski, Kleinberg, Rumble, Archer, "Load is not
/// what you should balance: Introducing Prequal", NSDI 2024, arXiv 2312.10172).
///
/// A client does not balance on the load it can see. It asks the servers, with probes sent
/// asynchronously, for their requests in flight (RIF) and their latency estimate, keeps
/// the answers in a small pool, and picks from the pool by the hot–cold rule:
///
/// 1. **Probing.** Each pick asks for [`probes_per_query`](Self::probes_per_query) probes
///    (3) to endpoints sampled uniformly without replacement. A probe task, spawned on the
///    runtime the first time the balancer builds the strategy's table, sends them through
///    the [`ProbeTransport`], off the request path, at most
///    [`max_probe_rate`](Self::max_probe_rate) a second and
///    [`max_concurrent_probes`](Self::max_concurrent_probes) at a time (probes beyond the
///    bounds are skipped, not queued). A balancer at rest sends none.
/// 2. **Pool** (see [`pool`](super::pool)). At most [`pool_size`](Self::pool_size) (16)
///    probes, the newest per endpoint; older than [`max_age`](Self::max_age) (1 s) they are
///    dropped; each pick removes one more, alternately the oldest and the worst; each probe
///    serves at most [`reuse_budget`](super::reuse_budget) picks.
/// 3. **Hot–cold selection.** A probe is hot if its RIF exceeds the [`q_rif`](Self::q_rif)
///    quantile (2^-0.25) of recent RIFs; the cold probe with the lowest latency wins, or the
///    lowest RIF when all are hot. The chosen probe's RIF goes up by one in the pool, so
///    that the next picks spread. [`selection`](Self::selection) can ignore latency
///    ([`Selection::RifOnly`]).
/// 4. **Fallback.** With no usable probe (at start, after a pause longer than the maximum
///    age, or when every probe failed), the pick is the power of two choices on the
///    balancer's own in-flight counts, and is counted in
///    [`PrequalStats::fallbacks`].
///
/// A probe that fails or times out drops that endpoint's probes from the pool and counts
/// as a failure for outlier detection (an unreachable endpoint as unreachable); an answer
/// that cannot be read (see [`AnswerError`](super::AnswerError)) drops them too, without
/// counting against the endpoint.
///
/// **Hot path.** A pick takes the pool's mutex (uncontended unless picks run at the same
/// instant on several threads, or the probe task files an answer), scans at most 16
/// probes, and adds to an atomic counter; it reads the clock once. `cargo bench --bench
/// pick --features prequal -- prequal` measures it beside round robin.
///
/// Servers answer probes with [`PrequalLayer`](super::PrequalLayer), or with any
/// implementation that speaks the [wire format](super::wire) (envoy-prequal,
/// `prequal-server`).
///
/// The endpoints' weights are not used.
pub struct Prequal<T> {
    transport: Arc<T>,
    state: Arc<State>,
}

/// The settings, fixed once the balancer is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) probes_per_query: f64,
    pub(crate) pool_size: usize,
    pub(crate) max_age: Duration,
    pub(crate) q_rif: f64,
    pub(crate) rif_history: usize,
    pub(crate) reuse_delta: f64,
    pub(crate) max_reuse: u32,
    pub(crate) probe_timeout: Duration,
    pub(crate) max_concurrent_probes: usize,
    pub(crate) max_probe_rate: f64,
    pub(crate) selection: Selection,
    pub(crate) seed: Option<u64>,
}

impl Settings {
    /// Probes sent to distinct endpoints for one query: `ceil(probes_per_query)`.
    pub(crate) fn group_size(&self) -> usize {
        (self.probes_per_query.ceil() as usize).max(1)
    }

    /// Probe credits a pick adds, in thousandths of a probe.
    fn milli_per_pick(&self) -> u64 {
        (self.probes_per_query * 1000.0).round() as u64
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            probes_per_query: 3.0,
            pool_size: 16,
            max_age: Duration::from_secs(1),
            q_rif: 2f64.powf(-0.25),
            rif_history: 64,
            reuse_delta: 0.1,
            max_reuse: 16,
            probe_timeout: Duration::from_secs(1),
            max_concurrent_probes: 64,
            max_probe_rate: 5000.0,
            selection: Selection::HotCold,
            seed: None,
        }
    }
}

/// An endpoint the probe task may probe.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) key: usize,
    pub(crate) name: Arc<str>,
    pub(crate) load: Arc<Load>,
    /// What the transport is given: the name and the endpoint's metadata.
    pub(crate) probe: ProbeTarget,
}

/// The counters behind [`PrequalStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) picks: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

/// What the strategy, its probe task and its monitors share.
pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) pool: Mutex<Pool>,
    pub(crate) targets: ArcSwap<Vec<Target>>,
    /// Probes asked for and not sent yet, in thousandths.
    credits: AtomicU64,
    wake: Arc<Notify>,
    pub(crate) stats: Counters,
    pub(crate) rng: Rng,
    started: AtomicBool,
}

impl State {
    fn new(settings: Settings) -> Self {
        let rng = settings.seed.map_or_else(Rng::default, Rng::seeded);
        State {
            pool: Mutex::new(Pool::new(
                settings.pool_size,
                settings.max_age,
                settings.q_rif,
                settings.rif_history,
                settings.selection,
            )),
            targets: ArcSwap::from_pointee(Vec::new()),
            credits: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            stats: Counters::default(),
            rng,
            started: AtomicBool::new(false),
            settings,
        }
    }

    /// One pick's probes: adds them to the credits, and wakes the probe task when a whole
    /// probe is due.
    #[inline]
    fn ask_for_probes(&self) {
        let add = self.settings.milli_per_pick();
        let before = self.credits.fetch_add(add, Ordering::Relaxed);
        if before / 1000 != (before + add) / 1000 {
            self.wake.notify_one();
        }
    }

    /// Files an answer from endpoint `key`, with the reuse budget for `endpoints` endpoints.
    pub(crate) fn file_answer(
        &self,
        key: usize,
        name: Arc<str>,
        answer: ProbeAnswer,
        endpoints: usize,
    ) {
        let s = &self.settings;
        let budget = reuse_budget(
            s.pool_size,
            endpoints,
            s.probes_per_query,
            1.0,
            s.reuse_delta,
            s.max_reuse,
        );
        // Random rounding keeps the mean budget exact.
        let whole = budget.floor();
        let uses = whole as u32 + u32::from(self.rng.unit() < budget - whole);
        super::lock(&self.pool).insert(key, name, answer, Instant::now(), uses);
    }

    /// Takes the whole probes asked for; the fraction stays.
    pub(crate) fn take_credits(&self) -> u64 {
        let credits = self.credits.load(Ordering::Relaxed);
        let whole = credits / 1000;
        self.credits.fetch_sub(whole * 1000, Ordering::Relaxed);
        whole
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The probe task holds only a weak reference: wake it so it sees the end.
        self.wake.notify_one();
    }
}

impl<T> Clone for Prequal<T> {
    /// A strategy with the same settings and transport and a state of its own (an empty
    /// pool, counters at zero, no probe task yet).
    fn clone(&self) -> Self {
        Prequal {
            transport: self.transport.clone(),
            state: Arc::new(State::new(self.state.settings.clone())),
        }
    }
}

impl<T> fmt::Debug for Prequal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prequal")
            .field("settings", &self.state.settings)
            .field("stats", &self.monitor().stats())
            .finish()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(self, value: $ty) -> Self {
            self.with(|s| s.$name = value)
        }
    };
}

impl<T: ProbeTransport> Prequal<T> {
    /// Prequal with the paper's settings, probing through `transport`.
    pub fn new(transport: T) -> Self {
        Prequal {
            transport: Arc::new(transport),
            state: Arc::new(State::new(Settings::default())),
        }
    }
}

impl<T> Prequal<T> {
    fn with(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.state.settings.clone();
        f(&mut settings);
        Prequal {
            transport: self.transport,
            state: Arc::new(State::new(settings)),
        }
    }

    setter!(
        /// Probes asked for by each pick, `r_probe` (default 3; the paper's deployment at
        /// YouTube uses 5). May be fractional: 0.5 is one probe every other pick. Between
        /// 0 (exclusive) and 16.
        probes_per_query: f64
    );
    setter!(
        /// The most probes the pool holds (default 16), at least 1.
        pool_size: usize
    );
    setter!(
        /// The age past which a probe is dropped (default 1 s).
        max_age: Duration
    );
    setter!(
        /// `Q_RIF`: probes whose RIF is above this quantile of recent RIFs are hot (default
        /// 2^-0.25 ≈ 0.84). In `(0, 1]`.
        q_rif: f64
    );
    setter!(
        /// How many recent answers' RIFs the quantile is taken over (default 64).
        rif_history: usize
    );
    setter!(
        /// δ of the reuse budget equation (default 0.1); finite and at least 0.
        reuse_delta: f64
    );
    setter!(
        /// The most picks one probe serves, whatever the equation says (default 16).
        max_reuse: u32
    );
    setter!(
        /// How long a probe may take before it counts as failed (default 1 s).
        probe_timeout: Duration
    );
    setter!(
        /// The most probes in flight at once (default 64).
        max_concurrent_probes: usize
    );
    setter!(
        /// The most probes sent a second (default 5000; bursts of a tenth of that).
        max_probe_rate: f64
    );
    setter!(
        /// How picks choose among probes (default [`Selection::HotCold`]).
        selection: Selection
    );

    /// Seeds the strategy's random choices (probe targets, reuse rounding, fallback picks),
    /// so that a run can be reproduced.
    pub fn with_seed(self, seed: u64) -> Self {
        self.with(|s| s.seed = Some(seed))
    }

    /// Files an answer of endpoint `i` of `endpoints` in the pool, as if a probe had
    /// brought it: for answers that arrive another way (the headers of an ordinary
    /// response, see [`PrequalLayer::report_on_responses`](super::PrequalLayer::report_on_responses)),
    /// and for driving the strategy outside a balancer, in tests and benchmarks. Panics if
    /// `i` is out of range.
    pub fn offer(&self, endpoints: &Endpoints<'_>, i: usize, answer: ProbeAnswer) {
        let load = endpoints.load_handle(i);
        self.state.file_answer(
            key_of(load),
            endpoints.name(i).into(),
            answer,
            endpoints.len(),
        );
    }

    /// A handle on the strategy's counters and pool, valid after the strategy has moved
    /// into a balancer.
    pub fn monitor(&self) -> PrequalMonitor {
        PrequalMonitor {
            state: self.state.clone(),
        }
    }
}

/// Reads a [`Prequal`] strategy's counters and pool while it runs in a balancer.
#[derive(Clone)]
pub struct PrequalMonitor {
    state: Arc<State>,
}

impl fmt::Debug for PrequalMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrequalMonitor")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A [`Prequal`] strategy's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PrequalStats {
    /// Picks made from the pool.
    pub picks: u64,
    /// Picks made by the fallback (power of two choices on in-flight counts) because no
    /// probe was usable.
    pub fallbacks: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes answered with a readable answer.
    pub probes_answered: u64,
    /// Probes that failed or timed out.
    pub probes_failed: u64,
    /// Probes answered with an answer that could not be read.
    pub probes_invalid: u64,
    /// Probes asked for but not sent, over the rate or the concurrency bound.
    pub probes_skipped: u64,
    /// Probes in flight now.
    pub probes_in_flight: u64,
    /// Probes in the pool now.
    pub pool_size: usize,
}

/// One probe in the pool, as [`PrequalMonitor::pool`] shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PooledProbe {
    /// The endpoint's name.
    pub endpoint: Arc<str>,
    /// The answer's RIF, plus the picks that used the probe since.
    pub rif: u64,
    /// The answer's latency estimate.
    pub latency: Duration,
    /// How long ago the answer arrived.
    pub age: Duration,
    /// Picks the probe may still serve.
    pub uses_left: u32,
    /// Whether the probe is hot (its RIF above the `Q_RIF` quantile of recent RIFs).
    pub hot: bool,
}

impl PrequalMonitor {
    /// The counters now.
    pub fn stats(&self) -> PrequalStats {
        let c = &self.state.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PrequalStats {
            picks: get(&c.picks),
            fallbacks: get(&c.fallbacks),
            probes_sent: get(&c.sent),
            probes_answered: get(&c.answered),
            probes_failed: get(&c.failed),
            probes_invalid: get(&c.invalid),
            probes_skipped: get(&c.skipped),
            probes_in_flight: get(&c.in_flight),
            pool_size: super::lock(&self.state.pool).len(),
        }
    }

    /// The probes in the pool now, best first by the selection rule's order.
    pub fn pool(&self) -> Vec<PooledProbe> {
        let now = Instant::now();
        let pool = super::lock(&self.state.pool);
        let threshold = pool.threshold();
        let mut probes: Vec<PooledProbe> = pool
            .entries()
            .iter()
            .map(|e| PooledProbe {
                endpoint: e.name.clone(),
                rif: e.rif,
                latency: Duration::from_micros(e.latency_us),
                age: now.saturating_duration_since(e.received),
                uses_left: e.uses_left,
                hot: threshold.is_some_and(|t| e.rif > t),
            })
            .collect();
        probes.sort_by_key(|p| (p.hot, p.latency, p.rif));
        probes
    }
}

/// A hasher for endpoint keys (addresses): one multiplication.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The table of one build: where each endpoint is in the set.
pub struct PrequalTable {
    index: HashMap<usize, usize, BuildHasherDefault<KeyHasher>>,
}

impl fmt::Debug for PrequalTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrequalTable")
            .field("endpoints", &self.index.len())
            .finish()
    }
}

fn key_of(load: &Arc<Load>) -> usize {
    Arc::as_ptr(load) as usize
}

impl<T: ProbeTransport> Strategy for Prequal<T> {
    type Table = PrequalTable;

    fn build(&self, endpoints: &Endpoints<'_>) -> PrequalTable {
        let targets: Vec<Target> = (0..endpoints.len())
            .map(|i| {
                let name: Arc<str> = endpoints.name(i).into();
                Target {
                    key: key_of(endpoints.load_handle(i)),
                    probe: ProbeTarget {
                        name: name.clone(),
                        metadata: endpoints.metadata(i).clone(),
                    },
                    name,
                    load: endpoints.load_handle(i).clone(),
                }
            })
            .collect();
        let index: HashMap<usize, usize, BuildHasherDefault<KeyHasher>> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.key, i))
            .collect();
        super::lock(&self.state.pool).retain_endpoints(|key| index.contains_key(&key));
        self.state.targets.store(Arc::new(targets));
        self.spawn_prober();
        PrequalTable { index }
    }

    fn pick(&self, table: &PrequalTable, endpoints: &Endpoints<'_>, _cx: &Context<'_>) -> usize {
        let state = &*self.state;
        state.ask_for_probes();
        let now = Instant::now();
        let mut pool = super::lock(&state.pool);
        pool.expire(now);
        while let Some(position) = pool.select() {
            let key = pool.entries()[position].key;
            match table.index.get(&key) {
                Some(&i) if i < endpoints.len() => {
                    pool.consume(position);
                    pool.remove_one();
                    drop(pool);
                    state.stats.picks.fetch_add(1, Ordering::Relaxed);
                    return i;
                }
                // Probed before the set changed: no longer eligible here.
                _ => pool.remove_endpoint(key),
            }
        }
        drop(pool);
        state.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        let picked = self.fallback(endpoints);
        #[cfg(feature = "metrics")]
        if picked < endpoints.len() {
            if let Some(metrics) = endpoints.load_handle(picked).metrics() {
                metrics.prequal_fallback();
            }
        }
        picked
    }

    fn seed(&self) -> Option<u64> {
        self.state.settings.seed
    }

    fn validate(&self) -> Result<(), BuildError> {
        let s = &self.state.settings;
        let r = s.probes_per_query;
        BuildError::reject_if(
            !(r > 0.0 && r <= 16.0),
            "Prequal::probes_per_query",
            r,
            "above 0 and at most 16",
        )?;
        BuildError::reject_if(
            s.pool_size == 0,
            "Prequal::pool_size",
            s.pool_size,
            "at least 1",
        )?;
        BuildError::reject_if(
            s.max_age.is_zero(),
            "Prequal::max_age",
            s.max_age,
            "above zero",
        )?;
        let q = s.q_rif;
        BuildError::reject_if(!(q > 0.0 && q <= 1.0), "Prequal::q_rif", q, "in (0, 1]")?;
        let h = s.rif_history;
        BuildError::reject_if(h == 0, "Prequal::rif_history", h, "at least 1")?;
        let d = s.reuse_delta;
        BuildError::reject_if(
            !(d.is_finite() && d >= 0.0),
            "Prequal::reuse_delta",
            d,
            "a finite number at least 0",
        )?;
        BuildError::reject_if(
            s.max_reuse == 0,
            "Prequal::max_reuse",
            s.max_reuse,
            "at least 1",
        )?;
        let t = s.probe_timeout;
        BuildError::reject_if(t.is_zero(), "Prequal::probe_timeout", t, "above zero")?;
        let c = s.max_concurrent_probes;
        BuildError::reject_if(c == 0, "Prequal::max_concurrent_probes", c, "at least 1")?;
        let rate = s.max_probe_rate;
        BuildError::reject_if(
            !(rate.is_finite() && rate > 0.0),
            "Prequal::max_probe_rate",
            rate,
            "a finite number above 0",
        )
    }
}

impl<T: ProbeTransport> Prequal<T> {
    /// Starts the probe task once, on the runtime the balancer builds in (none outside a
    /// runtime: picks then always fall back).
    fn spawn_prober(&self) {
        if self.state.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.state.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(super::prober::run(
            Arc::downgrade(&self.state),
            self.transport.clone(),
            self.state.wake.clone(),
        ));
    }

    /// The power of two choices on in-flight counts.
    fn fallback(&self, endpoints: &Endpoints<'_>) -> usize {
        let n = endpoints.len();
        if n < 2 {
            return 0;
        }
        let (a, b) = self.state.rng.two_distinct(n);
        if endpoints.load(b).in_flight() < endpoints.load(a).in_flight() {
            b
        } else {
            a
        }
    }
}
