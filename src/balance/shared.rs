//! State shared by every handle of one balancer and its driver.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::events::{EventHub, HealthEvents};
use crate::discover::DiscoveryStats;
use crate::endpoint::{flags, EndpointState, EndpointStats, Load, Metadata, Penalty, Timing};
use crate::error::{BoxError, DriverStopped, NoRuntime, UnavailableReason};
use crate::health::{HealthStats, OutlierSignal};
use crate::strategy::rng::Rng;
use crate::strategy::{Entry, LatencyTracking, Strategy};

/// One endpoint as the balancer holds it.
pub(crate) struct Slot<K, S> {
    pub(crate) key: K,
    pub(crate) service: S,
    pub(crate) weight: u32,
    pub(crate) metadata: Metadata,
    pub(crate) load: Arc<Load>,
    /// The name hashing strategies place it by: `metadata.name`, or the key's `Debug` form.
    pub(crate) name: Arc<str>,
    /// Position in discovery order.
    pub(crate) order: u64,
    /// The generation of `service` ([`flags::GENERATION`] bits of `load`'s state when it
    /// was inserted).
    pub(crate) generation: u32,
}

/// What an endpoint picked from a snapshot must still be when its request is sent: free of
/// the flags that take it out of the snapshot's rotation (`skip`), not removed from the
/// set, and with the same service (the generation of the slot it was picked from).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    mask: u32,
    expect: u32,
}

impl Stamp {
    #[inline]
    pub(crate) fn new<K, S>(slot: &Slot<K, S>, skip: u32) -> Self {
        Stamp {
            mask: skip | flags::REMOVED | flags::GENERATION,
            expect: slot.generation,
        }
    }

    /// Whether the endpoint changed since it was picked: one atomic load.
    #[inline]
    pub(crate) fn is_stale(self, load: &Load) -> bool {
        (load.state() ^ self.expect) & self.mask != 0
    }
}

/// A clone of an endpoint's service, picked for a request, with its counters and the
/// stamp it must still match when the request is sent.
pub(crate) struct Picked<S> {
    pub(crate) service: S,
    pub(crate) load: Arc<Load>,
    pub(crate) stamp: Stamp,
}

impl<S> Picked<S> {
    /// A clone of `slot`'s service, picked from a snapshot whose skip flags are `skip`.
    pub(crate) fn clone_of<K>(slot: &Slot<K, S>, skip: u32) -> Self
    where
        S: Clone,
    {
        Picked {
            service: slot.service.clone(),
            load: slot.load.clone(),
            stamp: Stamp::new(slot, skip),
        }
    }
}

/// The default endpoint name: the key's `Debug` form, without the quotes of a string key.
pub(crate) fn default_name<K: std::fmt::Debug>(key: &K) -> Arc<str> {
    let debug = format!("{key:?}");
    match debug.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
        Some(inner) if debug.len() >= 2 => inner.into(),
        _ => debug.into(),
    }
}

/// An immutable snapshot of the endpoint set, with the strategy's table for it.
pub(crate) struct Set<K, S, T> {
    pub(crate) version: u64,
    /// Every endpoint, in discovery order.
    pub(crate) all: Vec<Arc<Slot<K, S>>>,
    /// The endpoints that may receive requests, in discovery order.
    pub(crate) eligible: Vec<Arc<Slot<K, S>>>,
    /// `eligible` as strategies see it.
    pub(crate) entries: Vec<Entry>,
    /// The names of `eligible`, for strategies that hash them.
    pub(crate) names: Vec<Arc<str>>,
    /// The metadata of `eligible`, for strategies that read it (zones, labels).
    pub(crate) metadata: Vec<Metadata>,
    /// `None` exactly when `entries` is empty.
    pub(crate) table: Option<T>,
    /// Health flags that make a pick pass an endpoint over (they may be set after this
    /// snapshot was published).
    pub(crate) skip: u32,
    /// The health picture when this snapshot was published.
    pub(crate) health: HealthStats,
    /// Why no endpoint is eligible, when none is.
    pub(crate) empty_reason: UnavailableReason,
}

impl<K, S, T> Set<K, S, T> {
    pub(crate) fn empty() -> Self {
        Set {
            version: 0,
            all: Vec::new(),
            eligible: Vec::new(),
            entries: Vec::new(),
            names: Vec::new(),
            metadata: Vec::new(),
            table: None,
            skip: flags::UNAVAILABLE,
            health: HealthStats::default(),
            empty_reason: UnavailableReason::NoEndpoints,
        }
    }
}

type DriverFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The driver has not been spawned yet (no runtime so far).
const DRIVER_WAITING: u8 = 0;
/// The driver is spawned on a runtime.
const DRIVER_RUNNING: u8 = 1;
/// The driver was dropped while handles live on: its runtime shut down, or it panicked.
const DRIVER_STOPPED: u8 = 2;

pub(crate) struct Shared<K, S, P: Strategy> {
    pub(crate) set: ArcSwap<Set<K, S, P::Table>>,
    pub(crate) strategy: P,
    /// Latency settings, with the epoch of the balancer's clock, when latency is tracked.
    pub(crate) timing: Option<Timing>,
    /// The failure penalty's clock and time constant, when the strategy reads it.
    pub(crate) penalty: Option<Penalty>,
    /// The epoch of the clock strategies read in a pick (`Context::now_nanos`), when the
    /// strategy reads latency or the failure penalty.
    pub(crate) pick_epoch: Option<Instant>,
    pub(crate) fail_fast: Duration,
    /// Whether endpoints keep the load reports of their responses (feature `orca`); set by
    /// the builder before the driver starts.
    pub(crate) reports: bool,
    /// The balancer's metric handles (feature `metrics`), when a recorder is installed;
    /// set by the builder before the driver starts.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<Arc<crate::metrics::BalancerMetrics>>,
    /// Handles waiting for the set to change, by handle id.
    waiters: Mutex<HashMap<u64, Waker>>,
    next_handle: AtomicU64,
    pub(crate) discovery: Mutex<DiscoveryStats>,
    /// Wakes the driver when the completion path or `set_draining` changes a flag.
    pub(crate) signal: Arc<OutlierSignal>,
    pub(crate) events: Mutex<EventHub<K>>,
    /// The driver until it is spawned.
    driver: Mutex<Option<DriverFuture>>,
    /// [`DRIVER_WAITING`], [`DRIVER_RUNNING`] or [`DRIVER_STOPPED`].
    driver_state: AtomicU8,
    /// The balancer's own random choices on the request path (where a scan for a ready
    /// endpoint starts); seeded with [`Builder::seed`](crate::Builder::seed).
    pub(crate) rng: Rng,
    /// Dropped with the last handle, which tells the driver to stop.
    _stop: oneshot::Sender<()>,
}

impl<K, S, P: Strategy> Shared<K, S, P> {
    pub(crate) fn new(
        strategy: P,
        latency: Option<LatencyTracking>,
        failure_penalty: Option<Duration>,
        fail_fast: Duration,
        signal: Arc<OutlierSignal>,
        stop: oneshot::Sender<()>,
        rng: Rng,
    ) -> Self
    where
        K: Clone,
    {
        let epoch = Instant::now();
        let timing = latency.map(|t| Timing {
            epoch,
            decay_ns: t.decay.as_nanos().max(1) as f64,
            penalty_ns: t.failure_penalty.as_nanos() as f64,
        });
        let penalty = failure_penalty.filter(|d| !d.is_zero()).map(|d| Penalty {
            epoch,
            decay_ns: d.as_nanos() as f64,
        });
        let pick_epoch = (timing.is_some() || penalty.is_some()).then_some(epoch);
        Shared {
            set: ArcSwap::from_pointee(Set::empty()),
            strategy,
            timing,
            penalty,
            pick_epoch,
            fail_fast,
            reports: false,
            #[cfg(feature = "metrics")]
            metrics: None,
            waiters: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(0),
            discovery: Mutex::new(DiscoveryStats::default()),
            signal,
            events: Mutex::new(EventHub::new()),
            driver: Mutex::new(None),
            driver_state: AtomicU8::new(DRIVER_WAITING),
            rng,
            _stop: stop,
        }
    }

    /// A request refused because no endpoint was eligible within the fail-fast timeout.
    #[cold]
    pub(crate) fn refused(&self, reason: UnavailableReason) {
        tracing::trace!(%reason, "request refused: no endpoint eligible");
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.fail_fast(reason);
        }
    }

    pub(crate) fn new_handle_id(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(&self, id: u64, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        match waiters.get_mut(&id) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                waiters.insert(id, waker.clone());
            }
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        lock(&self.waiters).remove(&id);
    }

    /// Publishes a new snapshot and wakes every handle waiting for one.
    pub(crate) fn publish(&self, set: Set<K, S, P::Table>) {
        self.set.store(Arc::new(set));
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        let waiters: Vec<Waker> = lock(&self.waiters).drain().map(|(_, w)| w).collect();
        waiters.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn set_driver(&self, driver: DriverFuture) {
        *lock(&self.driver) = Some(driver);
    }

    /// Spawns the driver if it has not been spawned yet; fails if it cannot run (no
    /// runtime) or has stopped. One atomic load when it runs.
    #[inline]
    pub(crate) fn ensure_driver(&self) -> Result<(), BoxError> {
        if self.driver_state.load(Ordering::Acquire) == DRIVER_RUNNING {
            return Ok(());
        }
        self.driver_not_running()
    }

    #[cold]
    fn driver_not_running(&self) -> Result<(), BoxError> {
        let mut slot = lock(&self.driver);
        if self.driver_state.load(Ordering::Acquire) == DRIVER_STOPPED {
            return Err(DriverStopped.into());
        }
        if let Some(mut driver) = slot.take() {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                *slot = Some(driver);
                return Err(NoRuntime.into());
            };
            // Running from here on, unless the driver is dropped (which marks it stopped).
            self.driver_state.store(DRIVER_RUNNING, Ordering::Release);
            // Apply what the source has ready now, inside the runtime, so the request that
            // started the driver already sees the endpoints.
            let mut cx = std::task::Context::from_waker(Waker::noop());
            if driver.as_mut().poll(&mut cx).is_pending() {
                handle.spawn(driver);
            }
        }
        Ok(())
    }

    /// Called when the driver is dropped while handles live on: every `poll_ready` fails
    /// from now on with [`DriverStopped`], and the handles waiting for a change learn it now.
    pub(crate) fn driver_stopped(&self) {
        self.driver_state.store(DRIVER_STOPPED, Ordering::Release);
        tracing::error!("{}", DriverStopped);
        self.wake_waiters();
    }

    /// See [`Balance::set_draining`](crate::Balance::set_draining).
    pub(crate) fn set_draining(
        &self,
        key: &K,
        draining: bool,
    ) -> Result<(), crate::error::UnknownEndpoint>
    where
        K: PartialEq + std::fmt::Debug,
    {
        let set = self.set.load();
        let Some(slot) = set.all.iter().find(|s| s.key == *key) else {
            return Err(crate::error::UnknownEndpoint::new(key));
        };
        slot.load.set_flags(flags::DRAINING, draining);
        self.signal.wake_driver();
        Ok(())
    }

    /// See [`Balance::health_events`](crate::Balance::health_events).
    pub(crate) fn health_events(&self) -> HealthEvents<K>
    where
        K: Clone,
    {
        lock(&self.events).subscribe()
    }

    /// See [`Balance::discovery_stats`](crate::Balance::discovery_stats).
    pub(crate) fn discovery_stats(&self) -> DiscoveryStats {
        lock(&self.discovery).clone()
    }

    /// See [`Balance::health_stats`](crate::Balance::health_stats).
    pub(crate) fn health_stats(&self) -> HealthStats {
        self.set.load().health
    }

    /// See [`Balance::endpoints`](crate::Balance::endpoints).
    pub(crate) fn endpoint_stats(&self) -> Vec<EndpointStats<K>>
    where
        K: Clone,
    {
        self.set
            .load()
            .all
            .iter()
            .map(|slot| EndpointStats {
                key: slot.key.clone(),
                weight: slot.weight,
                metadata: slot.metadata.clone(),
                state: EndpointState::of(slot.weight, slot.load.health_flags()),
                in_flight: slot.load.in_flight(),
                completed: slot.load.completed(),
                failures: slot.load.failures(),
                readiness_failures: slot.load.readiness_failures(),
                cancelled: slot.load.cancelled(),
                ignored: slot.load.ignored(),
                latency: slot.load.latency(),
                #[cfg(feature = "orca")]
                load_report: slot.load.latest_report().map(|r| r.report.clone()),
                #[cfg(feature = "orca")]
                load_report_age: slot.load.latest_report().map(|r| r.age()),
                #[cfg(feature = "orca")]
                load_reports: slot.load.load_reports_received(),
                #[cfg(feature = "orca")]
                load_report_errors: slot.load.load_report_errors(),
            })
            .collect()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
