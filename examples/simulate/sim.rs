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

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_lb::health::{OutlierDetection, SlowStart};
use tower_lb::key::key_fn;
use tower_lb::strategy::{
    BoundedLoad, LeastRequest, Maglev, PeakEwma, Random, Rendezvous, RingHash, RoundRobin, Strategy,
};

pub type BoxError = tower_lb::error::BoxError;

/// The scenario `prequal` and its contestants (feature `prequal`).
#[cfg(feature = "prequal")]
#[path = "prequal.rs"]
pub mod prequal;

// ----- random numbers -----

/// splitmix64: a small, fast, seedable generator; every random number of a run comes from
/// one of these, seeded from the scenario's seed and a label.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// A generator for `label`, independent of the generators of other labels.
    pub fn derived(seed: u64, label: &str) -> Self {
        SimRng(derive_seed(seed, label))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// tower's `p2c::Balance::from_rng` takes tower's own `Rng` trait.
impl tower::util::rng::Rng for SimRng {
    fn next_u64(&mut self) -> u64 {
        SimRng::next_u64(self)
    }
}

/// A seed for `label` derived from `seed` (FNV-1a of the label, then one splitmix step).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SimRng::new(h).next_u64()
}

// ----- backends -----

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Normal, clipped below at 1 ms.
    Normal { mean: f64, sd: f64 },
    /// Exponential.
    Exp { mean: f64 },
}

impl Dist {
    pub fn sample(&self, rng: &mut SimRng) -> f64 {
        match *self {
            Dist::Normal { mean, sd } => mean + sd * rng.normal(),
            Dist::Exp { mean } => rng.exp(mean),
        }
    }

    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Normal { mean, .. } | Dist::Exp { mean } => mean,
        }
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Dist::Normal { mean, sd } => write!(f, "{mean} ± {sd} ms"),
            Dist::Exp { mean } => write!(f, "exponential, mean {mean} ms"),
        }
    }
}

/// What a backend does differently during a [`Timed`] window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Service times come from this distribution instead.
    Latency(Dist),
    /// Service times are multiplied by this factor.
    Slower(f64),
    /// Every request is answered 503 at once.
    Fail,
    /// Every request fails at once with an error (connection refused: restarting).
    Refuse,
    /// An antagonist takes this share of the backend's capacity: service times are
    /// multiplied by `1 / (1 - share)`, and the reported utilization includes the share.
    Antagonist(f64),
}

/// An [`Effect`] from `from` (inclusive) to `to` (exclusive), in scenario time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub from: Duration,
    pub to: Duration,
    pub effect: Effect,
}

/// One simulated backend.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub latency: Dist,
    /// Requests served at once; the rest wait in a FIFO queue. `None`: no limit, no queue.
    pub slots: Option<usize>,
    pub effects: Vec<Timed>,
    /// Noisy neighbours: `(from, speed)` in time order; service times are divided by the
    /// speed in force when a request takes its slot. Empty: speed 1.
    pub speed: Vec<(Duration, f64)>,
}

impl BackendSpec {
    pub fn new(latency: Dist, slots: Option<usize>) -> Self {
        BackendSpec {
            latency,
            slots,
            effects: Vec::new(),
            speed: Vec::new(),
        }
    }

    pub fn with(mut self, from: Duration, to: Duration, effect: Effect) -> Self {
        self.effects.push(Timed { from, to, effect });
        self
    }

    fn active(&self, t: Duration) -> impl Iterator<Item = Effect> + '_ {
        self.effects
            .iter()
            .filter(move |e| e.from <= t && t < e.to)
            .map(|e| e.effect)
    }

    fn speed_at(&self, t: Duration) -> f64 {
        let i = self.speed.partition_point(|(from, _)| *from <= t);
        if i == 0 {
            1.0
        } else {
            self.speed[i - 1].1
        }
    }

    /// Requests per second this backend serves at speed 1 with its base latency.
    pub fn capacity(&self) -> Option<f64> {
        self.slots.map(|s| s as f64 * 1000.0 / self.latency.mean())
    }
}

/// The request every contestant carries: only a key, for the hashing strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRequest {
    pub key: Option<u64>,
}

/// The request key for `Builder::request_key`.
fn sim_key(request: &SimRequest) -> Option<Vec<u8>> {
    request.key.map(|k| k.to_be_bytes().to_vec())
}

/// The error of a backend that is restarting.
#[derive(Debug)]
pub struct Refused(pub usize);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {} refused the connection (restarting)", self.0)
    }
}

impl std::error::Error for Refused {}

pub struct BackendState {
    pub index: usize,
    spec: BackendSpec,
    epoch: Instant,
    slots: Option<Arc<Semaphore>>,
    /// Waiting plus in service: the true queue.
    queue: AtomicUsize,
    rng: Mutex<SimRng>,
    bin_ms: u64,
    /// Requests received per time bin.
    arrivals: Mutex<Vec<u32>>,
    total: AtomicU64,
    /// Requests received per key (keyed scenarios only).
    keys: Option<Mutex<HashMap<u64, u32>>>,
    /// Busy slots over time, for the utilization in load reports.
    busy: Mutex<BusyClock>,
    /// Whether answers carry load reports (scenario `reports`).
    reports: bool,
    /// Answers per second over the last second, for load reports.
    #[cfg(feature = "orca")]
    answered: tower_lb::orca::RateWindow,
}

/// The integral of busy slots over time, and samples of it to average over the last second.
#[derive(Debug)]
struct BusyClock {
    busy: usize,
    since: Instant,
    /// Slot-microseconds spent busy up to `since`.
    total_us: u64,
    /// `(time, total_us then)`, oldest first, about every 100 ms.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl BusyClock {
    fn new(now: Instant) -> Self {
        BusyClock {
            busy: 0,
            since: now,
            total_us: 0,
            samples: std::collections::VecDeque::from([(now, 0)]),
        }
    }

    fn total_at(&self, now: Instant) -> u64 {
        self.total_us
            + self.busy as u64 * now.saturating_duration_since(self.since).as_micros() as u64
    }

    fn change(&mut self, now: Instant, delta: isize) {
        self.total_us = self.total_at(now);
        self.since = now;
        self.busy = self.busy.saturating_add_signed(delta);
    }

    /// Mean busy slots over the last second (or since the start).
    fn mean_busy(&mut self, now: Instant) -> f64 {
        let total = self.total_at(now);
        let window = Duration::from_secs(1);
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= Duration::from_millis(100))
        {
            self.samples.push_back((now, total));
        }
        // Keep one sample at least a second old, drop those before it.
        while self.samples.len() > 2 && now.saturating_duration_since(self.samples[1].0) >= window {
            self.samples.pop_front();
        }
        let (then, before) = self.samples[0];
        let span = now.saturating_duration_since(then).as_micros() as u64;
        if span == 0 {
            return self.busy as f64;
        }
        (total - before) as f64 / span as f64
    }
}

/// A simulated backend; clones share it.
#[derive(Clone)]
pub struct Backend(Arc<BackendState>);

pub type BackendFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<()>, BoxError>> + Send + 'static>>;

impl Backend {
    fn new(index: usize, spec: BackendSpec, epoch: Instant, sc: &Scenario) -> Self {
        let bins = (sc.duration.as_millis() as u64).div_ceil(sc.bin_ms()) as usize + 1;
        Backend(Arc::new(BackendState {
            index,
            slots: spec.slots.map(|n| Arc::new(Semaphore::new(n))),
            spec,
            epoch,
            queue: AtomicUsize::new(0),
            rng: Mutex::new(SimRng::derived(sc.seed, &format!("backend {index}"))),
            bin_ms: sc.bin_ms(),
            arrivals: Mutex::new(vec![0; bins]),
            total: AtomicU64::new(0),
            keys: sc.keys.as_ref().map(|_| Mutex::new(HashMap::new())),
            busy: Mutex::new(BusyClock::new(epoch)),
            reports: sc.reports,
            #[cfg(feature = "orca")]
            answered: tower_lb::orca::RateWindow::new(Duration::from_secs(1)),
        }))
    }

    /// The utilization a report carries now: busy slots over slots (last second) plus the
    /// antagonist's share. 0 for a backend without slots.
    pub fn utilization(&self, now: Instant) -> f64 {
        let Some(slots) = self.0.spec.slots else {
            return 0.0;
        };
        let t = now.saturating_duration_since(self.0.epoch);
        let share: f64 = self
            .0
            .spec
            .active(t)
            .map(|e| match e {
                Effect::Antagonist(a) => a,
                _ => 0.0,
            })
            .sum::<f64>()
            .min(1.0);
        let busy = self.0.busy.lock().unwrap().mean_busy(now) / slots as f64;
        share + (1.0 - share) * busy.min(1.0)
    }

    /// A 200, with a load report when the scenario has them.
    fn answer(&self) -> http::Response<()> {
        #[allow(unused_mut)]
        let mut response = status(200);
        #[cfg(feature = "orca")]
        if self.0.reports {
            self.0.answered.record();
            let report = tower_lb::orca::LoadReport {
                cpu_utilization: self.utilization(Instant::now()),
                rps_fractional: self.0.answered.rate(),
                ..Default::default()
            };
            report.write_headers(response.headers_mut(), tower_lb::orca::HeaderForm::Text);
        }
        response
    }

    /// Requests waiting or in service now.
    pub fn queue_len(&self) -> usize {
        self.0.queue.load(Relaxed)
    }

    /// Whether the backend answers requests (neither failing nor refusing) at `now`.
    pub fn answers(&self, now: Instant) -> bool {
        let t = now.saturating_duration_since(self.0.epoch);
        !self
            .0
            .spec
            .active(t)
            .any(|e| matches!(e, Effect::Fail | Effect::Refuse))
    }

    fn count_arrival(&self, t: Duration, key: Option<u64>) {
        let st = &self.0;
        st.total.fetch_add(1, Relaxed);
        let mut bins = st.arrivals.lock().unwrap();
        let last = bins.len() - 1;
        bins[((t.as_millis() as u64 / st.bin_ms) as usize).min(last)] += 1;
        if let (Some(keys), Some(key)) = (&st.keys, key) {
            *keys.lock().unwrap().entry(key).or_insert(0) += 1;
        }
    }

    /// The service time of a request that takes its slot at scenario time `t`, in whole ms.
    fn service_time(&self, t: Duration) -> Duration {
        let spec = &self.0.spec;
        let mut dist = spec.latency;
        let mut factor = 1.0 / spec.speed_at(t);
        for effect in spec.active(t) {
            match effect {
                Effect::Latency(d) => dist = d,
                Effect::Slower(f) => factor *= f,
                Effect::Antagonist(share) => factor /= (1.0 - share).max(0.01),
                Effect::Fail | Effect::Refuse => {}
            }
        }
        let ms = dist.sample(&mut self.0.rng.lock().unwrap()) * factor;
        Duration::from_millis(ms.round().max(1.0) as u64)
    }
}

/// A request's place at a backend: in the queue, then in a slot. Dropping it early (the
/// client gave up) leaves the queue, or keeps the slot busy until the service time is over.
struct Ticket {
    backend: Arc<BackendState>,
    permit: Option<OwnedSemaphorePermit>,
    end: Option<Instant>,
}

impl BackendState {
    /// A slot's work ends: it no longer counts as busy.
    fn release(&self, busy: bool) {
        if busy {
            self.busy.lock().unwrap().change(Instant::now(), -1);
        }
        self.queue.fetch_sub(1, Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let busy = self.end.is_some();
        if let Some(end) = self.end.filter(|end| Instant::now() < *end) {
            let backend = self.backend.clone();
            let permit = self.permit.take();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    tokio::time::sleep_until(end).await;
                    backend.release(true);
                    drop(permit);
                });
                return;
            }
        }
        self.backend.release(busy);
    }
}

fn status(code: u16) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(code).expect("valid status");
    response
}

impl Service<SimRequest> for Backend {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SimRequest) -> BackendFuture {
        let now = Instant::now();
        let t = now.saturating_duration_since(self.0.epoch);
        self.count_arrival(t, request.key);
        for effect in self.0.spec.active(t) {
            match effect {
                Effect::Refuse => {
                    let index = self.0.index;
                    return Box::pin(async move { Err(Refused(index).into()) });
                }
                Effect::Fail => return Box::pin(async { Ok(status(503)) }),
                Effect::Latency(_) | Effect::Slower(_) | Effect::Antagonist(_) => {}
            }
        }
        self.0.queue.fetch_add(1, Relaxed);
        let backend = self.clone();
        Box::pin(async move {
            let mut ticket = Ticket {
                backend: backend.0.clone(),
                permit: None,
                end: None,
            };
            if let Some(slots) = &backend.0.slots {
                ticket.permit = Some(slots.clone().acquire_owned().await.expect("never closed"));
            }
            let start = Instant::now();
            let end =
                start + backend.service_time(start.saturating_duration_since(backend.0.epoch));
            backend.0.busy.lock().unwrap().change(start, 1);
            ticket.end = Some(end);
            tokio::time::sleep_until(end).await;
            drop(ticket);
            Ok(backend.answer())
        })
    }
}

// ----- scenarios -----

/// A period of constant arrival rate.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step ends here (scenario time).
    pub until: Duration,
    /// Requests per second.
    pub rate: f64,
    /// How the step is named in tables ("0.85×").
    pub label: String,
}

/// A discovery change: `backend` is listed (inserted) or not (removed) from `at` on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Membership {
    pub at: Duration,
    pub backend: usize,
    pub listed: bool,
}

/// Zipf-distributed keys `0..n`: key `k` has probability proportional to `1 / (k + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    pub s: f64,
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { s, cdf }
    }

    pub fn keys(&self) -> usize {
        self.cdf.len()
    }

    /// The share of requests that carry key `k`.
    pub fn share(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }

    pub fn sample(&self, rng: &mut SimRng) -> u64 {
        let u = rng.unit();
        self.cdf
            .partition_point(|c| *c <= u)
            .min(self.cdf.len() - 1) as u64
    }
}

/// How scenarios are sized: full length by default, shorter for the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub seed: u64,
    /// Multiplies the duration and every time in the scenario's timeline (not latencies,
    /// deadlines or the speed changes of noisy neighbours).
    pub time_scale: f64,
    /// Multiplies the request rate; where backends have slots, their slot counts too
    /// (rounded, at least 1), and the rates follow the resulting capacity, so the load
    /// relative to capacity stays the same.
    pub rate_scale: f64,
    /// Independent balancers (clients), each sent a random share of the requests; every
    /// client sees only its own requests, as separate processes would. 1 by default.
    pub clients: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            time_scale: 1.0,
            rate_scale: 1.0,
            clients: 1,
        }
    }
}

/// A balancing algorithm that competes in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    RoundRobin,
    Random,
    LeastRequest,
    /// `LeastRequest::full_scan()`: every endpoint scored on each pick.
    LeastRequestAll,
    PeakEwma,
    RingHash,
    Maglev,
    Rendezvous,
    BoundedRing,
    BoundedMaglev,
    /// tower 0.5 `p2c::Balance` over `load::PendingRequests`.
    TowerPending,
    /// tower 0.5 `p2c::Balance` over `load::PeakEwma` (RTT 30 ms, decay 10 s).
    TowerPeakEwma,
    /// The simulator's oracle: the shortest true queue among the backends that answer.
    Oracle,
    /// `WeightedRoundRobin` (feature `orca`) with gRPC's defaults, fed by the backends'
    /// load reports.
    WeightedRoundRobin,
    /// `Prequal` (feature `prequal`), hot–cold selection, probing the backends' true state.
    Prequal,
    /// `Prequal` (feature `prequal`) selecting by RIF alone.
    PrequalRifOnly,
}

/// A contestant: an algorithm, and for this crate's strategies the health features on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contestant {
    pub algo: Algo,
    /// Outlier detection with the crate's defaults (`OutlierDetection::new()`: Envoy's
    /// thresholds, at most half the backends ejected for failed requests); without it,
    /// `Builder::outlier_detection(None)`, the strategy alone.
    pub outlier: bool,
    /// `Builder::slow_start(SlowStart::new(10 s))`.
    pub slow_start: bool,
    /// Each endpoint service wrapped in `tower::timeout::Timeout` with the scenario's
    /// deadline, so a request that runs out of time is an error the balancer sees (a
    /// failure for outlier detection, a penalised sample for peak-EWMA) instead of a
    /// cancellation.
    pub endpoint_timeout: bool,
}

impl Contestant {
    pub const fn new(algo: Algo) -> Self {
        Contestant {
            algo,
            outlier: false,
            slow_start: false,
            endpoint_timeout: false,
        }
    }

    pub const fn outlier(mut self) -> Self {
        self.outlier = true;
        self
    }

    pub const fn slow_start(mut self) -> Self {
        self.slow_start = true;
        self
    }

    pub const fn endpoint_timeout(mut self) -> Self {
        self.endpoint_timeout = true;
        self
    }

    pub fn is_ours(&self) -> bool {
        !matches!(
            self.algo,
            Algo::TowerPending | Algo::TowerPeakEwma | Algo::Oracle
        )
    }

    pub fn name(&self) -> String {
        let mut name = match self.algo {
            Algo::RoundRobin => "round-robin",
            Algo::Random => "random",
            Algo::LeastRequest => "least-request",
            Algo::LeastRequestAll => "least-request (scan all)",
            Algo::PeakEwma => "peak-ewma",
            Algo::RingHash => "ring-hash",
            Algo::Maglev => "maglev",
            Algo::Rendezvous => "rendezvous",
            Algo::BoundedRing => "bounded-load ring-hash",
            Algo::BoundedMaglev => "bounded-load maglev",
            Algo::TowerPending => "tower p2c PendingRequests",
            Algo::TowerPeakEwma => "tower p2c PeakEwma",
            Algo::Oracle => "oracle (shortest true queue)",
            Algo::WeightedRoundRobin => "weighted-round-robin (ORCA reports)",
            Algo::Prequal => "prequal (hot-cold)",
            Algo::PrequalRifOnly => "prequal (RIF only)",
        }
        .to_owned();
        if self.outlier {
            name.push_str(" + outlier");
        }
        if self.slow_start {
            name.push_str(" + slow start");
        }
        if self.endpoint_timeout {
            name.push_str(" + endpoint timeout");
        }
        name
    }
}

/// The contestants of the scenarios without keys.
pub fn standard_contestants() -> Vec<Contestant> {
    use Algo::*;
    vec![
        Contestant::new(RoundRobin),
        Contestant::new(Random),
        Contestant::new(LeastRequest),
        Contestant::new(LeastRequestAll),
        Contestant::new(PeakEwma),
        Contestant::new(RoundRobin).outlier(),
        Contestant::new(LeastRequest).outlier(),
        Contestant::new(PeakEwma).outlier(),
        Contestant::new(LeastRequest).outlier().endpoint_timeout(),
        Contestant::new(PeakEwma).outlier().endpoint_timeout(),
        Contestant::new(TowerPending),
        Contestant::new(TowerPeakEwma),
        Contestant::new(Oracle),
    ]
}

/// The contestants of the scenarios with load reports: the standard ones, and weighted
/// round robin by the reports when the `orca` feature is on.
pub fn orca_contestants() -> Vec<Contestant> {
    let mut contestants = standard_contestants();
    if cfg!(feature = "orca") {
        contestants.insert(5, Contestant::new(Algo::WeightedRoundRobin));
    }
    contestants
}

/// The contestants of the hot-keys scenario.
pub fn hashing_contestants() -> Vec<Contestant> {
    use Algo::*;
    vec![
        Contestant::new(RingHash),
        Contestant::new(Maglev),
        Contestant::new(Rendezvous),
        Contestant::new(BoundedRing),
        Contestant::new(BoundedMaglev),
        Contestant::new(RoundRobin),
        Contestant::new(LeastRequest),
        Contestant::new(PeakEwma),
        Contestant::new(Oracle),
    ]
}

/// A scenario: backends, load, timeline, contestants.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// One line on what it models.
    pub title: String,
    /// Details: backends, load, timeline, what to look for.
    pub notes: Vec<String>,
    pub duration: Duration,
    pub deadline: Duration,
    pub backends: Vec<BackendSpec>,
    pub steps: Vec<Step>,
    pub keys: Option<Zipf>,
    pub membership: Vec<Membership>,
    pub contestants: Vec<Contestant>,
    pub seed: u64,
    /// The width of the time bins of the load-over-time plot.
    pub bin: Duration,
    /// Requests per second all backends serve at speed 1, where they have slots.
    pub capacity: Option<f64>,
    /// Independent balancers per contestant (see [`Options::clients`]).
    pub clients: usize,
    /// Whether backends attach load reports to their answers (feature `orca`).
    pub reports: bool,
}

impl Scenario {
    fn bin_ms(&self) -> u64 {
        (self.bin.as_millis() as u64).max(1)
    }

    /// Keeps only the contestants `keep` accepts.
    pub fn only(mut self, keep: impl Fn(&Contestant) -> bool) -> Self {
        self.contestants.retain(|c| keep(c));
        self
    }
}

pub const SCENARIOS: [&str; 9] = [
    "buoyant",
    "mixed-speed",
    "overload-ramp",
    "fast-fail",
    "churn",
    "hot-keys",
    "antagonist",
    "heterogeneous",
    "prequal",
];

/// The scenario `name`, sized by `options`.
pub fn scenario(name: &str, options: &Options) -> Option<Scenario> {
    Some(match name {
        "buoyant" => buoyant(options),
        "mixed-speed" => mixed_speed(options),
        "overload-ramp" => overload_ramp(options),
        "fast-fail" => fast_fail(options),
        "churn" => churn(options),
        "hot-keys" => hot_keys(options),
        "antagonist" => antagonist(options),
        "heterogeneous" => heterogeneous(options),
        #[cfg(feature = "prequal")]
        "prequal" => prequal::scenario(options),
        _ => return None,
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Slots scaled by `rate_scale`.
fn slots(n: usize, o: &Options) -> usize {
    ((n as f64 * o.rate_scale).round() as usize).max(1)
}

fn capacity(backends: &[BackendSpec]) -> Option<f64> {
    backends.iter().map(BackendSpec::capacity).sum()
}

/// Equal steps over `duration`, at `levels` × `capacity`.
fn ramp(duration: Duration, capacity: f64, levels: &[f64]) -> Vec<Step> {
    let each = duration.as_secs_f64() / levels.len() as f64;
    levels
        .iter()
        .enumerate()
        .map(|(i, level)| Step {
            until: secs(each * (i + 1) as f64),
            rate: capacity * level,
            label: format!("{level:.2}×"),
        })
        .collect()
}

/// The parts the scenarios share: no keys, no membership changes, the standard
/// contestants, the seed derived from `name`, 1 s bins (scaled), no steps or capacity yet.
fn base(
    name: &'static str,
    o: &Options,
    duration: Duration,
    deadline: Duration,
    backends: Vec<BackendSpec>,
) -> Scenario {
    Scenario {
        name,
        title: String::new(),
        notes: Vec::new(),
        duration,
        deadline,
        backends,
        steps: Vec::new(),
        keys: None,
        membership: Vec::new(),
        contestants: standard_contestants(),
        seed: derive_seed(o.seed, name),
        bin: secs(o.time_scale),
        capacity: None,
        clients: o.clients.max(1),
        reports: false,
    }
}

/// [`base`] with the load in steps at `levels` × `capacity`.
fn ramped(
    name: &'static str,
    o: &Options,
    duration: Duration,
    deadline: Duration,
    backends: Vec<BackendSpec>,
    capacity: f64,
    levels: &[f64],
) -> Scenario {
    Scenario {
        steps: ramp(duration, capacity, levels),
        capacity: Some(capacity),
        ..base(name, o, duration, deadline, backends)
    }
}

/// `count` backends with `n` slots each, service times `base`.
fn slots_note(count: usize, n: usize, base: Dist) -> String {
    format!("{count} backends with {n} slots and a FIFO queue each; service times {base}")
}

/// The note on a constant load: `level` of `capacity` for `duration`, and the timeout.
fn load_note(level: f64, capacity: f64, duration: Duration, deadline: Duration) -> String {
    format!(
        "Load {level} of capacity ({:.0} req/s, Poisson) for {:.0} s; {} s timeout.",
        capacity * level,
        duration.as_secs_f64(),
        deadline.as_secs()
    )
}

/// Buoyant (2016): 11 backends at 167 ± 5 ms, 1000 req/s, one backend at 2 s for 30 s of 60.
fn buoyant(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let normal = Dist::Normal {
        mean: 167.0,
        sd: 5.0,
    };
    let slow = 5;
    let backends = (0..11)
        .map(|i| {
            let b = BackendSpec::new(normal, None);
            if i == slow {
                b.with(
                    t(15.0),
                    t(45.0),
                    Effect::Latency(Dist::Normal {
                        mean: 2000.0,
                        sd: 5.0,
                    }),
                )
            } else {
                b
            }
        })
        .collect();
    let rate = 1000.0 * o.rate_scale;
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "transient slow backend (Buoyant, 2016)".into(),
        notes: vec![
            format!(
                "11 backends at {normal}, no concurrency limit; backend {slow} answers in 2000 ± 5 ms from {:.0} s to {:.0} s.",
                t(15.0).as_secs_f64(),
                t(45.0).as_secs_f64()
            ),
            format!("{rate:.0} req/s (Poisson) for {:.0} s; 1 s timeout.", duration.as_secs_f64()),
            "Published (Buoyant): round robin ~95 % success, least loaded ~99 %, peak-EWMA ~99.9 %.".into(),
            "The oracle knows every queue but not the backends' speeds: it sends the slow backend a request whenever its queue is the shortest.".into(),
        ],
        steps: vec![Step {
            until: duration,
            rate,
            label: format!("{rate:.0} req/s"),
        }],
        ..base("buoyant", o, duration, deadline, backends)
    }
}

/// 10 backends with 4 slots, two of them 1.5× slower; load 0.5 → 0.85 of capacity.
fn mixed_speed(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 50.0 };
    let slower = Dist::Exp { mean: 75.0 };
    let n = slots(4, o);
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| BackendSpec::new(if i >= 8 { slower } else { base }, Some(n)))
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let levels = [0.5, 0.6, 0.7, 0.8, 0.85];
    Scenario {
        title: "mixed speeds: two of ten backends 1.5× slower".into(),
        notes: vec![
            slots_note(10, n, base) + &format!(", backends 8 and 9 {slower}."),
            format!(
                "Capacity {capacity:.0} req/s; load in steps of {:.0} s at 0.5, 0.6, 0.7, 0.8, 0.85 of it (Poisson); 5 s timeout.",
                duration.as_secs_f64() / levels.len() as f64
            ),
        ],
        ..ramped("mixed-speed", o, duration, Duration::from_secs(5), backends, capacity, &levels)
    }
}

/// Prequal (NSDI 2024): load 0.75× → 1.75× of the guaranteed capacity, with noisy
/// neighbours that change each backend's speed.
fn overload_ramp(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 50.0 };
    let n = slots(4, o);
    let mut rng = SimRng::derived(derive_seed(o.seed, "overload-ramp"), "neighbours");
    let backends: Vec<BackendSpec> = (0..20)
        .map(|_| {
            let mut b = BackendSpec::new(base, Some(n));
            let mut at = 0.0;
            while at < duration.as_secs_f64() {
                // Busy neighbours hold a backend at its allocation; idle ones leave it spare
                // CPU. Never below the allocation, so "capacity" is what is guaranteed.
                let speed = if rng.unit() < 0.3 {
                    rng.uniform(1.0, 1.2)
                } else {
                    rng.uniform(1.5, 3.0)
                };
                b.speed.push((secs(at), speed));
                at += rng.exp(4.0);
            }
            b
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let levels = [0.75, 1.0, 1.25, 1.5, 1.75];
    Scenario {
        title: "overload ramp with noisy neighbours (Prequal, NSDI 2024)".into(),
        notes: vec![
            slots_note(20, n, base) + " at speed 1.",
            "Noisy neighbours: each backend's speed changes after exponential times (mean 4 s); 30 % of the time 1.0 to 1.2 (neighbours busy: the allocation), otherwise 1.5 to 3.0 (spare CPU). Mean speed about 1.9.".into(),
            format!(
                "Capacity (guaranteed, speed 1) {capacity:.0} req/s; load in steps of {:.0} s at 0.75, 1.0, 1.25, 1.5, 1.75 of it (Poisson); 5 s deadline.",
                duration.as_secs_f64() / levels.len() as f64
            ),
            "Published (Prequal): weighted round robin's p99.9 reaches the deadline at about 1.03×. Our round robin is smooth weighted round robin; the backends' weights are equal, as their allocations are.".into(),
        ],
        ..ramped("overload-ramp", o, duration, Duration::from_secs(5), backends, capacity, &levels)
    }
}

/// One of ten backends answers 503 at once.
fn fast_fail(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Normal {
        mean: 50.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let failing = 3;
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| {
            let b = BackendSpec::new(base, Some(n));
            if i == failing {
                b.with(t(10.0), duration, Effect::Fail)
            } else {
                b
            }
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "fast-failing backend: one of ten answers 503 at once".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "Backend {failing} answers 503 at once from {:.0} s to the end.",
                t(10.0).as_secs_f64()
            ),
            load_note(level, capacity, duration, deadline),
        ],
        ..ramped(
            "fast-fail",
            o,
            duration,
            deadline,
            backends,
            capacity,
            &[level],
        )
    }
}

/// A rolling restart of 10 % of the backends per minute.
fn churn(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(120.0);
    let base = Dist::Normal {
        mean: 50.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let count = 20;
    let lag = 1.0;
    let restart = 5.0;
    let cold = 10.0;
    let mut backends: Vec<BackendSpec> = (0..count)
        .map(|_| BackendSpec::new(base, Some(n)))
        .collect();
    let mut membership = Vec::new();
    // Two restarts per minute (10 % of 20), one every 30 s.
    let restarts: Vec<(f64, usize)> = (0..4)
        .map(|k| (15.0 + 30.0 * k as f64, 2 + 5 * k))
        .collect();
    for &(at, b) in &restarts {
        backends[b] = backends[b]
            .clone()
            .with(t(at), t(at + restart), Effect::Refuse)
            .with(t(at + restart), t(at + restart + cold), Effect::Slower(2.0));
        membership.push(Membership {
            at: t(at + lag),
            backend: b,
            listed: false,
        });
        membership.push(Membership {
            at: t(at + restart),
            backend: b,
            listed: true,
        });
    }
    membership.sort_by_key(|m| m.at);
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let mut contestants = standard_contestants();
    contestants.insert(
        9,
        Contestant::new(Algo::LeastRequest).outlier().slow_start(),
    );
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "rolling restart: 10 % of the backends per minute".into(),
        notes: vec![
            slots_note(count, n, base) + ".",
            format!(
                "Backends {} restart at {} s: each refuses connections for {restart:.0} s (requests in service finish), is removed from discovery {lag:.0} s after it went down, inserted again when it is back, and runs 2× slower for its first {cold:.0} s (cold caches).",
                restarts.iter().map(|r| r.1.to_string()).collect::<Vec<_>>().join(", "),
                restarts.iter().map(|r| format!("{:.0}", t(r.0).as_secs_f64())).collect::<Vec<_>>().join(", "),
            ),
            load_note(level, capacity, duration, deadline)
                + " Every contestant gets the changes through its discovery (ours: `discover::channel()`; tower: a `Discover` stream).",
        ],
        membership,
        contestants,
        ..ramped("churn", o, duration, deadline, backends, capacity, &[level])
    }
}

/// Zipf(1.1) keys over the hashing strategies.
fn hot_keys(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Normal {
        mean: 40.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let backends: Vec<BackendSpec> = (0..10).map(|_| BackendSpec::new(base, Some(n))).collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let zipf = Zipf::new(10_000, 1.1);
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "hot keys: Zipf(1.1) request keys over consistent hashing".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "Every request carries a key from Zipf(1.1) over 10 000 keys (the hottest is {:.1} % of requests, the top 10 {:.1} %); `Builder::request_key(key_fn(..))`.",
                zipf.share(0) * 100.0,
                (0..10).map(|k| zipf.share(k)).sum::<f64>() * 100.0
            ),
            load_note(level, capacity, duration, deadline),
            "Key affinity: the share of requests served by the backend that served most of their key's requests (a cache-hit proxy).".into(),
        ],
        keys: Some(zipf),
        contestants: hashing_contestants(),
        ..ramped("hot-keys", o, duration, deadline, backends, capacity, &[level])
    }
}

/// Ten equal backends; from 20 s to 40 s antagonists take half the capacity of three.
fn antagonist(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 20.0 };
    let n = slots(4, o);
    let hit = [2, 5, 8];
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| {
            let b = BackendSpec::new(base, Some(n));
            if hit.contains(&i) {
                b.with(t(20.0), t(40.0), Effect::Antagonist(0.5))
            } else {
                b
            }
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.8;
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "antagonists: three of ten backends lose half their capacity for 20 s".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "From {:.0} s to {:.0} s an antagonist (another process on the machine) takes 50 % of the capacity of backends 2, 5 and 8: their service times double, and their reported utilization includes it; clients see only their own requests in flight. Capacity then {:.0} req/s, so the load is {:.2} of what is left.",
                t(20.0).as_secs_f64(),
                t(40.0).as_secs_f64(),
                capacity * 0.85,
                level / 0.85
            ),
            load_note(level, capacity, duration, deadline),
            "Every answer carries an ORCA load report (cpu_utilization, rps_fractional); weighted round robin (gRPC's defaults: blackout 10 s, weights updated every second) weights by it; the other contestants ignore it.".into(),
        ],
        contestants: orca_contestants(),
        reports: true,
        ..ramped("antagonist", o, duration, deadline, backends, capacity, &[level])
    }
}

/// Backends of 1×, 2× and 4× capacity: do the shares follow capacity?
fn heterogeneous(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(40.0);
    let base = Dist::Exp { mean: 20.0 };
    let backends: Vec<BackendSpec> = [4, 8, 16]
        .iter()
        .map(|&k| BackendSpec::new(base, Some(slots(k, o))))
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "heterogeneous capacity: backends of 1×, 2× and 4×".into(),
        notes: vec![
            format!(
                "3 backends with {}, {} and {} slots and a FIFO queue each; service times {base}.",
                slots(4, o),
                slots(8, o),
                slots(16, o)
            ),
            load_note(level, capacity, duration, deadline),
            "Capacity shares 1/7, 2/7, 4/7. Every answer carries an ORCA load report; after weighted round robin's 10 s blackout its shares should follow capacity.".into(),
        ],
        contestants: orca_contestants(),
        reports: true,
        ..ramped("heterogeneous", o, duration, deadline, backends, capacity, &[level])
    }
}

// ----- the load -----

/// One request of the open-loop load.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at_ms: u64,
    pub step: u16,
    /// Which client (balancer) sends it.
    pub client: u16,
    pub key: Option<u64>,
}

/// The arrivals of `sc`: Poisson at each step's rate, in whole milliseconds.
pub fn arrivals(sc: &Scenario) -> Vec<Arrival> {
    let mut rng = SimRng::derived(sc.seed, "arrivals");
    let mut keys = SimRng::derived(sc.seed, "keys");
    let mut clients = SimRng::derived(sc.seed, "clients");
    let end = sc.duration.as_secs_f64();
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut step = 0;
    loop {
        while step + 1 < sc.steps.len() && t >= sc.steps[step].until.as_secs_f64() {
            step += 1;
        }
        t += rng.exp(1.0 / sc.steps[step].rate);
        if t >= end {
            break;
        }
        while step + 1 < sc.steps.len() && t >= sc.steps[step].until.as_secs_f64() {
            step += 1;
        }
        out.push(Arrival {
            at_ms: (t * 1000.0) as u64,
            step: step as u16,
            client: ((u128::from(clients.next_u64()) * sc.clients as u128) >> 64) as u16,
            key: sc.keys.as_ref().map(|z| z.sample(&mut keys)),
        });
    }
    out
}

/// Each request's outcome: latency in µs << 1 | ok; `u64::MAX` until set.
struct Outcomes(Vec<AtomicU64>);

impl Outcomes {
    fn new(n: usize) -> Self {
        Outcomes((0..n).map(|_| AtomicU64::new(u64::MAX)).collect())
    }

    fn set(&self, i: usize, latency: Duration, ok: bool) {
        self.0[i].store(((latency.as_micros() as u64) << 1) | u64::from(ok), Relaxed);
    }
}

/// What the dispatcher needs.
struct Env<'a> {
    sc: &'a Scenario,
    plan: &'a [Arrival],
    epoch: Instant,
    backends: &'a [Backend],
    outcomes: Arc<Outcomes>,
    seed: u64,
}

/// The open-loop dispatcher, the same for every contestant.
///
/// `clients` holds one service per client; each request goes to its arrival's client.
async fn drive<S>(env: &Env<'_>, mut clients: Vec<S>, mut change: impl FnMut(usize, bool))
where
    S: Service<SimRequest, Response = http::Response<()>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let deadline = env.sc.deadline;
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut next_change = 0;
    for (i, arrival) in env.plan.iter().enumerate() {
        let offset = Duration::from_millis(arrival.at_ms);
        let at = env.epoch + offset;
        if Instant::now() < at {
            tokio::time::sleep_until(at).await;
        }
        while let Some(m) = env.sc.membership.get(next_change) {
            if m.at > offset {
                break;
            }
            change(m.backend, m.listed);
            next_change += 1;
        }
        let due = at + deadline;
        let request = SimRequest { key: arrival.key };
        let n = clients.len();
        let svc = &mut clients[usize::from(arrival.client) % n];
        match tokio::time::timeout_at(due, svc.ready()).await {
            Ok(Ok(ready)) => {
                let future = ready.call(request);
                let outcomes = env.outcomes.clone();
                let outstanding = outstanding.clone();
                outstanding.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout_at(due, future).await,
                        Ok(Ok(response)) if response.status() == http::StatusCode::OK
                    );
                    outcomes.set(i, Instant::now().saturating_duration_since(at), ok);
                    outstanding.fetch_sub(1, Relaxed);
                });
            }
            Ok(Err(_)) | Err(_) => {
                env.outcomes
                    .set(i, Instant::now().saturating_duration_since(at), false);
            }
        }
    }
    while outstanding.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One of our balancers, with the contestant's health features.
async fn ours<P: Strategy + Clone>(env: &Env<'_>, c: Contestant, strategy: P) {
    if c.endpoint_timeout {
        let deadline = env.sc.deadline;
        ours_with(env, c, strategy, move |b: &Backend| {
            tower::timeout::Timeout::new(b.clone(), deadline)
        })
        .await
    } else {
        ours_with(env, c, strategy, |b: &Backend| b.clone()).await
    }
}

async fn ours_with<P, S, W>(env: &Env<'_>, c: Contestant, strategy: P, wrap: W)
where
    P: Strategy + Clone,
    W: Fn(&Backend) -> S,
    S: Service<SimRequest, Response = http::Response<()>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let mut senders = Vec::new();
    let mut balancers = Vec::new();
    for _ in 0..env.sc.clients {
        let (tx, rx) = tower_lb::discover::channel::<usize, S>();
        for (i, b) in env.backends.iter().enumerate() {
            tx.insert(i, wrap(b)).expect("balancer alive");
        }
        let mut builder = tower_lb::Builder::new()
            .strategy(strategy.clone())
            .request_key(key_fn(sim_key as fn(&SimRequest) -> Option<Vec<u8>>));
        // Outlier detection is on by default; the plain contestants show a strategy alone.
        builder = builder.outlier_detection(c.outlier.then(OutlierDetection::new));
        if c.slow_start {
            builder = builder.slow_start(SlowStart::new(Duration::from_secs(10)));
        }
        balancers.push(builder.build(rx).expect("valid configuration"));
        senders.push(tx);
    }
    drive(env, balancers, |i, listed| {
        for tx in &senders {
            let _ = if listed {
                tx.insert(i, wrap(&env.backends[i]))
            } else {
                tx.remove(i)
            };
        }
    })
    .await;
}

/// tower's `p2c::Balance` over endpoints made by `wrap`, fed by a channel.
async fn tower_p2c<S, W>(env: &Env<'_>, wrap: W)
where
    W: Fn(&Backend) -> S,
    S: Service<SimRequest, Response = http::Response<()>, Error = BoxError>
        + tower::load::Load
        + Send
        + 'static,
    <S as tower::load::Load>::Metric: fmt::Debug,
    S::Future: Send + 'static,
{
    let mut senders = Vec::new();
    let mut balancers = Vec::new();
    for client in 0..env.sc.clients {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<tower::discover::Change<usize, S>>();
        for (i, b) in env.backends.iter().enumerate() {
            tx.send(tower::discover::Change::Insert(i, wrap(b)))
                .expect("balancer alive");
        }
        let discover = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
        });
        let rng = SimRng::new(env.seed.wrapping_add(client as u64));
        balancers.push(tower::balance::p2c::Balance::from_rng(discover, rng));
        senders.push(tx);
    }
    drive(env, balancers, |i, listed| {
        for tx in &senders {
            let _ = if listed {
                tx.send(tower::discover::Change::Insert(i, wrap(&env.backends[i])))
            } else {
                tx.send(tower::discover::Change::Remove(i))
            };
        }
    })
    .await;
}

/// The oracle: the backend with the shortest true queue (waiting plus in service) among the
/// listed backends that answer (not failing, not refusing), ties by index.
#[derive(Clone)]
struct Oracle {
    backends: Arc<Vec<Backend>>,
    listed: Arc<Vec<AtomicBool>>,
}

impl Service<SimRequest> for Oracle {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SimRequest) -> BackendFuture {
        let now = Instant::now();
        let listed = |i: &usize| self.listed[*i].load(Relaxed);
        let best = (0..self.backends.len())
            .filter(listed)
            .filter(|&i| self.backends[i].answers(now))
            .min_by_key(|&i| (self.backends[i].queue_len(), i))
            .or_else(|| (0..self.backends.len()).find(listed))
            .unwrap_or(0);
        self.backends[best].clone().call(request)
    }
}

async fn oracle(env: &Env<'_>) {
    let oracle = Oracle {
        backends: Arc::new(env.backends.to_vec()),
        listed: Arc::new(env.backends.iter().map(|_| AtomicBool::new(true)).collect()),
    };
    let listed = oracle.listed.clone();
    // One oracle, whatever the number of clients: it sees everything anyway.
    drive(env, vec![oracle], |i, l| listed[i].store(l, Relaxed)).await;
}

async fn contest(env: &Env<'_>, c: Contestant) {
    let seed = env.seed;
    match c.algo {
        Algo::RoundRobin => ours(env, c, RoundRobin::new()).await,
        Algo::Random => ours(env, c, Random::with_seed(seed)).await,
        Algo::LeastRequest => ours(env, c, LeastRequest::new().with_seed(seed)).await,
        Algo::LeastRequestAll => {
            ours(env, c, LeastRequest::new().full_scan().with_seed(seed)).await
        }
        Algo::PeakEwma => ours(env, c, PeakEwma::new().with_seed(seed)).await,
        Algo::RingHash => ours(env, c, RingHash::new().seed(seed)).await,
        Algo::Maglev => ours(env, c, Maglev::new().seed(seed)).await,
        Algo::Rendezvous => ours(env, c, Rendezvous::new().seed(seed)).await,
        Algo::BoundedRing => ours(env, c, BoundedLoad::new(RingHash::new().seed(seed))).await,
        Algo::BoundedMaglev => ours(env, c, BoundedLoad::new(Maglev::new().seed(seed))).await,
        Algo::TowerPending => {
            tower_p2c(env, |b: &Backend| {
                tower::load::PendingRequests::new(
                    b.clone(),
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .await
        }
        Algo::TowerPeakEwma => {
            tower_p2c(env, |b: &Backend| {
                tower::load::PeakEwma::new(
                    b.clone(),
                    Duration::from_millis(30),
                    10e9,
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .await
        }
        Algo::Oracle => oracle(env).await,
        #[cfg(feature = "orca")]
        Algo::WeightedRoundRobin => {
            ours(env, c, tower_lb::strategy::WeightedRoundRobin::new()).await
        }
        #[cfg(not(feature = "orca"))]
        Algo::WeightedRoundRobin => panic!("weighted round robin needs the orca feature"),
        #[cfg(feature = "prequal")]
        Algo::Prequal | Algo::PrequalRifOnly => prequal::contest(env, c).await,
        #[cfg(not(feature = "prequal"))]
        Algo::Prequal | Algo::PrequalRifOnly => panic!("Prequal needs the prequal feature"),
    }
}

// ----- results -----

/// Latency percentiles and success of a set of requests. Latencies in milliseconds; a
/// failed request counts as the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub requests: usize,
    pub success: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// From effective latencies in µs (sorted here) and the number of successes.
    fn of(mut latencies_us: Vec<u32>, ok: usize) -> Self {
        latencies_us.sort_unstable();
        let n = latencies_us.len();
        if n == 0 {
            return Summary::default();
        }
        let q = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(latencies_us[rank - 1]) / 1000.0
        };
        Summary {
            requests: n,
            success: ok as f64 * 100.0 / n as f64,
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: f64::from(latencies_us[n - 1]) / 1000.0,
        }
    }
}

/// One contestant's run.
#[derive(Debug, Clone)]
pub struct Run {
    pub contestant: Contestant,
    pub name: String,
    pub summary: Summary,
    /// Per load step.
    pub steps: Vec<Summary>,
    /// Every request's latency in µs, a failure counted as the deadline, sorted.
    pub sorted_us: Vec<u32>,
    /// Requests each backend received.
    pub per_backend: Vec<u64>,
    /// Requests each backend received per time bin.
    pub series: Vec<Vec<u32>>,
    /// Keyed scenarios: the share of requests served by their key's most used backend.
    pub affinity: Option<f64>,
    /// Real time the run took.
    pub wall: Duration,
}

impl Run {
    pub fn backend_min_max(&self) -> (u64, u64) {
        (
            self.per_backend.iter().copied().min().unwrap_or(0),
            self.per_backend.iter().copied().max().unwrap_or(0),
        )
    }
}

/// Every contestant's run of one scenario.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub runs: Vec<Run>,
    pub requests: usize,
    pub wall: Duration,
}

impl Report {
    /// The run of the contestant named `name`.
    pub fn run(&self, name: &str) -> &Run {
        self.runs
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no contestant {name:?} in {}", self.scenario.name))
    }

    /// The index of the step labelled `label`.
    pub fn step(&self, label: &str) -> usize {
        self.scenario
            .steps
            .iter()
            .position(|s| s.label == label)
            .unwrap_or_else(|| panic!("no step {label:?} in {}", self.scenario.name))
    }
}

/// Runs one contestant on `plan` (the scenario's arrivals) on its own paused runtime.
pub fn run_contestant(sc: &Scenario, plan: &[Arrival], c: Contestant) -> Run {
    let wall = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let outcomes = Arc::new(Outcomes::new(plan.len()));
    let backends = rt.block_on(async {
        let epoch = Instant::now();
        let backends: Vec<Backend> = sc
            .backends
            .iter()
            .enumerate()
            .map(|(i, spec)| Backend::new(i, spec.clone(), epoch, sc))
            .collect();
        let env = Env {
            sc,
            plan,
            epoch,
            backends: &backends,
            outcomes: outcomes.clone(),
            seed: derive_seed(sc.seed, &c.name()),
        };
        contest(&env, c).await;
        backends
    });
    drop(rt);

    let deadline_us = sc.deadline.as_micros() as u32;
    let mut all = Vec::with_capacity(plan.len());
    let mut by_step: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); sc.steps.len()];
    let mut ok_total = 0;
    for (arrival, outcome) in plan.iter().zip(&outcomes.0) {
        let v = outcome.load(Relaxed);
        let ok = v != u64::MAX && v & 1 == 1;
        let latency = if ok {
            ((v >> 1) as u32).min(deadline_us)
        } else {
            deadline_us
        };
        all.push(latency);
        let step = &mut by_step[arrival.step as usize];
        step.0.push(latency);
        if ok {
            ok_total += 1;
            step.1 += 1;
        }
    }
    let steps = by_step
        .into_iter()
        .map(|(l, ok)| Summary::of(l, ok))
        .collect();
    let summary = Summary::of(all.clone(), ok_total);
    all.sort_unstable();

    let per_backend = backends.iter().map(|b| b.0.total.load(Relaxed)).collect();
    let series = backends
        .iter()
        .map(|b| b.0.arrivals.lock().unwrap().clone())
        .collect();
    let affinity = sc.keys.as_ref().map(|_| {
        let mut by_key: HashMap<u64, (u64, u32)> = HashMap::new();
        for b in &backends {
            for (&k, &n) in b.0.keys.as_ref().expect("keyed").lock().unwrap().iter() {
                let e = by_key.entry(k).or_insert((0, 0));
                e.0 += u64::from(n);
                e.1 = e.1.max(n);
            }
        }
        let total: u64 = by_key.values().map(|e| e.0).sum();
        let top: u64 = by_key.values().map(|e| u64::from(e.1)).sum();
        top as f64 / total.max(1) as f64
    });
    Run {
        contestant: c,
        name: c.name(),
        summary,
        steps,
        sorted_us: all,
        per_backend,
        series,
        affinity,
        wall: wall.elapsed(),
    }
}

/// Runs every contestant of `sc`, one after another.
pub fn run(sc: &Scenario) -> Report {
    run_with(sc, |_| {})
}

/// Runs every contestant of `sc`, calling `done` after each.
pub fn run_with(sc: &Scenario, mut done: impl FnMut(&Run)) -> Report {
    let wall = std::time::Instant::now();
    let plan = arrivals(sc);
    let runs = sc
        .contestants
        .iter()
        .map(|&c| {
            let run = run_contestant(sc, &plan, c);
            done(&run);
            run
        })
        .collect();
    Report {
        scenario: sc.clone(),
        runs,
        requests: plan.len(),
        wall: wall.elapsed(),
    }
}

// ----- tables -----

/// A latency in ms for a table: whole ms from 10 ms up.
pub fn ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A success percentage for a table: three decimals, since 99.95 % is a goal.
pub fn pct(v: f64) -> String {
    format!("{v:.3}")
}

/// The Markdown report of one scenario: what it is, the table, per-step tails.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write;
    let sc = &report.scenario;
    let mut s = String::new();
    let _ = writeln!(s, "## {}: {}\n", sc.name, sc.title);
    for note in &sc.notes {
        let _ = writeln!(s, "- {note}");
    }
    if sc.clients > 1 {
        let _ = writeln!(
            s,
            "- {} clients: each contestant runs {} independent balancers, each sent a random share of the requests (the oracle stays global).",
            sc.clients, sc.clients
        );
    }
    let _ = writeln!(
        s,
        "- {} requests per contestant; latencies in ms, a failed request counted as the deadline ({} ms); simulated in {:.1} s.\n",
        report.requests,
        sc.deadline.as_millis(),
        report.wall.as_secs_f64()
    );
    let keyed = sc.keys.is_some();
    let _ = write!(
        s,
        "| strategy | success % | p50 | p99 | p99.9 | max | requests per backend (min / max) |"
    );
    if keyed {
        let _ = write!(s, " key affinity % |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---:|---:|---:|---:|---:|---:|");
    if keyed {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for run in &report.runs {
        let m = &run.summary;
        let (lo, hi) = run.backend_min_max();
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {lo} / {hi} |",
            run.name,
            pct(m.success),
            ms(m.p50),
            ms(m.p99),
            ms(m.p999),
            ms(m.max)
        );
        if let Some(a) = run.affinity {
            let _ = write!(s, " {:.1} |", a * 100.0);
        }
        let _ = writeln!(s);
    }
    if sc.steps.len() > 1 {
        let _ = writeln!(
            s,
            "\nBy load step (requests that arrived in the step): p99 / p99.9 in ms, success %.\n"
        );
        let _ = write!(s, "| strategy |");
        for step in &sc.steps {
            let _ = write!(s, " {} |", step.label);
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|");
        for _ in &sc.steps {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for run in &report.runs {
            let _ = write!(s, "| {} |", run.name);
            for m in &run.steps {
                let _ = write!(s, " {} / {}, {} |", ms(m.p99), ms(m.p999), pct(m.success));
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "\nRun time per contestant (s): {}.",
        report
            .runs
            .iter()
            .map(|r| format!("{} {:.2}", r.name, r.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}
