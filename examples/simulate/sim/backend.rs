//! The simulated backends: what a scenario says of each ([`BackendSpec`]: a latency
//! [`Dist`], slots, a timeline of [`Effect`]s) and the `tower::Service` that plays it
//! ([`Backend`]: slots with a FIFO queue, service times drawn when a request takes a slot,
//! utilization and ORCA load reports, the true queue that only the oracle reads).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::Service;

use super::model::Scenario;
use super::rng::SimRng;
use super::BoxError;

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
pub(super) fn sim_key(request: &SimRequest) -> Option<Vec<u8>> {
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
    pub(super) arrivals: Mutex<Vec<u32>>,
    pub(super) total: AtomicU64,
    /// Requests received per key (keyed scenarios only).
    pub(super) keys: Option<Mutex<HashMap<u64, u32>>>,
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
pub struct Backend(pub(super) Arc<BackendState>);

pub type BackendFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<()>, BoxError>> + Send + 'static>>;

impl Backend {
    pub(super) fn new(index: usize, spec: BackendSpec, epoch: Instant, sc: &Scenario) -> Self {
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
