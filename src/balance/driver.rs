//! The background task: applies discovery changes and publishes snapshots.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::shared::{lock, Set, Shared, Slot};
use crate::discover::snapshots::dedup_last_wins;
use crate::discover::{Change, Discover, DiscoveryStats};
use crate::endpoint::{Endpoint, Load, Metadata};
use crate::error::{BoxError, UnavailableReason};
use crate::health::runner::{Candidate, Runner};
use crate::health::HealthSettings;
use crate::strategy::rng::Rng;
use crate::strategy::{Endpoints, Entry, Strategy};

/// How many changes the driver applies before it yields to the runtime, so a source that
/// is always ready (or always failing) cannot starve other tasks.
const BUDGET: usize = 256;

/// The driver publishes a new snapshot when the source has no change ready (it returned
/// `Pending`, an error or its end), so that a burst of changes, such as a new list sent as
/// removes and inserts, is never seen half applied, however many batches it takes. A source
/// that is never pending is published after this many changes all the same.
const MAX_UNPUBLISHED: usize = 64 * BUDGET;

/// After a discovery error the source is polled again after this long, doubling with each
/// further error up to [`MAX_BACKOFF`], so a source that fails at once cannot spin the driver.
/// A publish that failed (the strategy panicked building its table) is retried on the same
/// schedule.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The pause after `in_a_row` failures in a row (0 for the first).
fn backoff(in_a_row: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << in_a_row.min(16))
        .min(MAX_BACKOFF)
}

/// A sleep of `pause` whose wake-up is registered with `cx`.
fn armed_sleep(pause: Duration, cx: &mut Context<'_>) -> Pin<Box<Sleep>> {
    let mut sleep = Box::pin(tokio::time::sleep(pause));
    // Registers the wake-up; a zero pause is not possible here.
    let _ = sleep.as_mut().poll(cx);
    sleep
}

pub(crate) type BoxDiscover<K, S> =
    Pin<Box<dyn Stream<Item = Result<Change<K, S>, BoxError>> + Send>>;

/// Boxes any [`Discover`] into one stream type with boxed errors.
pub(crate) fn boxed<K, S, D>(discovery: D) -> BoxDiscover<K, S>
where
    D: Discover<K, S> + Send + 'static,
    K: 'static,
    S: 'static,
{
    struct ErrInto<D, K, S>(Pin<Box<D>>, std::marker::PhantomData<fn() -> (K, S)>);
    impl<K, S, D: Discover<K, S>> Stream for ErrInto<D, K, S> {
        type Item = Result<Change<K, S>, BoxError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0
                .as_mut()
                .poll_change(cx)
                .map(|c| c.map(|r| r.map_err(Into::into)))
        }
    }
    Box::pin(ErrInto(Box::pin(discovery), std::marker::PhantomData))
}

pub(crate) struct Driver<K, S, P: Strategy> {
    shared: Weak<Shared<K, S, P>>,
    discovery: BoxDiscover<K, S>,
    stop: oneshot::Receiver<()>,
    endpoints: HashMap<K, Arc<Slot<K, S>>>,
    next_order: u64,
    version: u64,
    ended: bool,
    allow_empty_reset: bool,
    /// Errors in a row, and the pause before the source is polled again.
    errors_in_a_row: u32,
    backoff: Option<Pin<Box<Sleep>>>,
    health: Runner<K>,
    /// Whether the endpoints or their health changed since the last published snapshot.
    dirty: bool,
    /// Changes applied since the last published snapshot.
    unpublished: usize,
    /// After a failed publish: the failures in a row, and when to try again.
    retry: Option<(u32, Pin<Box<Sleep>>)>,
    /// How often the strategy's table is rebuilt with the set unchanged
    /// ([`Strategy::rebuild_every`]), and the timer of the next rebuild (made at the first
    /// poll, inside the runtime).
    rebuild_period: Option<Duration>,
    rebuild_timer: Option<Pin<Box<Sleep>>>,
    /// The balancer's metrics (feature `metrics`) and what they last published.
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::DriverMetrics>,
}

impl<K, S, P> Driver<K, S, P>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    S: Send + Sync + 'static,
    P: Strategy,
{
    pub(crate) fn new(
        shared: &Arc<Shared<K, S, P>>,
        discovery: BoxDiscover<K, S>,
        stop: oneshot::Receiver<()>,
        allow_empty_reset: bool,
        health: HealthSettings,
        rng: Rng,
    ) -> Self {
        Driver {
            health: Runner::new(
                health,
                shared.signal.clone(),
                shared.timing,
                shared.penalty,
                rng,
                shared.reports,
            ),
            shared: Arc::downgrade(shared),
            discovery,
            stop,
            endpoints: HashMap::new(),
            next_order: 0,
            version: 0,
            ended: false,
            allow_empty_reset,
            errors_in_a_row: 0,
            backoff: None,
            dirty: false,
            unpublished: 0,
            retry: None,
            rebuild_period: shared
                .strategy
                .rebuild_every()
                .map(|p| p.max(Duration::from_millis(1))),
            rebuild_timer: None,
            #[cfg(feature = "metrics")]
            metrics: shared
                .metrics
                .clone()
                .map(crate::metrics::DriverMetrics::new),
        }
    }

    /// Whether the strategy's timed rebuild is due (and arms the next one).
    fn rebuild_due(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(period) = self.rebuild_period else {
            return false;
        };
        let Some(timer) = &mut self.rebuild_timer else {
            self.rebuild_timer = Some(armed_sleep(period, cx));
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        // The next rebuild a period from now: a driver polled late does not catch up.
        timer.as_mut().reset(tokio::time::Instant::now() + period);
        let _ = timer.as_mut().poll(cx);
        !self.endpoints.is_empty()
    }

    /// Applies every change the source has ready (up to the budget). Returns whether
    /// anything changed and whether the budget ran out.
    fn drain(&mut self, shared: &Shared<K, S, P>, cx: &mut Context<'_>) -> (bool, bool) {
        let mut changed = false;
        let mut exhausted = true;
        if let Some(backoff) = &mut self.backoff {
            if backoff.as_mut().poll(cx).is_pending() {
                return (false, false);
            }
            self.backoff = None;
        }
        for _ in 0..BUDGET {
            if self.ended {
                exhausted = false;
                break;
            }
            // A discovery source is user code too: a panic ends it, like the end of the stream.
            let polled =
                panic::catch_unwind(AssertUnwindSafe(|| self.discovery.as_mut().poll_next(cx)));
            let polled = polled.unwrap_or_else(|_| {
                tracing::error!("the discovery source panicked; keeping the last endpoint set");
                lock(&shared.discovery).record_error("the discovery source panicked".into());
                Poll::Ready(None)
            });
            match polled {
                Poll::Ready(Some(Ok(change))) => {
                    self.errors_in_a_row = 0;
                    self.unpublished += 1;
                    let mut stats = lock(&shared.discovery);
                    stats.changes += 1;
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &self.metrics {
                        metrics.balancer.discovery_update();
                    }
                    changed |= self.apply(change, &mut stats);
                }
                Poll::Ready(Some(Err(error))) => {
                    if self.errors_in_a_row == 0 {
                        tracing::warn!(%error, "discovery error; keeping the last endpoint set");
                    } else {
                        tracing::debug!(%error, "discovery error again");
                    }
                    lock(&shared.discovery).record_error(error.to_string());
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &self.metrics {
                        metrics.balancer.discovery_error();
                    }
                    self.backoff = Some(armed_sleep(backoff(self.errors_in_a_row), cx));
                    self.errors_in_a_row = self.errors_in_a_row.saturating_add(1);
                    exhausted = false;
                    break;
                }
                Poll::Ready(None) => {
                    tracing::warn!("discovery ended; keeping the last endpoint set");
                    self.ended = true;
                    lock(&shared.discovery).ended = true;
                }
                Poll::Pending => {
                    exhausted = false;
                    break;
                }
            }
        }
        (changed, exhausted)
    }

    fn apply(&mut self, change: Change<K, S>, stats: &mut DiscoveryStats) -> bool {
        match change {
            Change::Insert(endpoint) => {
                self.insert(endpoint, None);
                true
            }
            Change::Remove(key) => {
                self.health.remove(&key);
                if let Some(_slot) = self.endpoints.remove(&key) {
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &mut self.metrics {
                        metrics.removed(&_slot.load);
                    }
                    tracing::debug!(?key, "endpoint removed");
                    true
                } else {
                    tracing::debug!(?key, "remove of an unknown endpoint ignored");
                    false
                }
            }
            Change::Reset(list) if list.is_empty() && !self.allow_empty_reset => {
                tracing::warn!("empty discovery reset ignored; keeping the last endpoint set");
                stats.empty_resets_ignored += 1;
                false
            }
            Change::Reset(list) => {
                let mut old = std::mem::take(&mut self.endpoints);
                for endpoint in dedup_last_wins(list) {
                    let load = old.remove(&endpoint.key).map(|s| s.load.clone());
                    let order = self.next_order;
                    self.next_order += 1;
                    self.insert(endpoint, Some((order, load)));
                }
                for (key, _slot) in old.iter() {
                    self.health.remove(key);
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &mut self.metrics {
                        metrics.removed(&_slot.load);
                    }
                }
                tracing::debug!(endpoints = self.endpoints.len(), "endpoint set reset");
                true
            }
        }
    }

    /// Inserts or updates one endpoint. `place` forces its order and load (for resets).
    #[allow(clippy::type_complexity)]
    fn insert(&mut self, endpoint: Endpoint<K, S>, place: Option<(u64, Option<Arc<Load>>)>) {
        let existing = self.endpoints.get(&endpoint.key);
        let (order, kept) = match (place, existing) {
            (Some((order, load)), _) => (order, load),
            (None, Some(slot)) => (slot.order, Some(slot.load.clone())),
            (None, None) => {
                self.next_order += 1;
                (self.next_order - 1, None)
            }
        };
        // A known endpoint keeps its counters; its service is new (a handle holding a
        // clone of the old one sees the generation move on).
        let (load, generation) = match kept {
            Some(load) => {
                let generation = load.replace_service();
                (Some(load), generation)
            }
            None => (None, 0),
        };
        tracing::debug!(key = ?endpoint.key, weight = endpoint.weight, "endpoint inserted");
        let name = endpoint
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| super::shared::default_name(&endpoint.key));
        // A new endpoint: new counters, and its metric handles registered once.
        let load = load.unwrap_or_else(|| {
            let load = self.health.new_load();
            #[cfg(feature = "metrics")]
            let load = load.with_metrics(self.metrics.as_ref().map(|m| m.endpoint(&name)));
            Arc::new(load)
        });
        self.health.insert(
            &endpoint.key,
            &load,
            name.clone(),
            endpoint.metadata.clone(),
        );
        let slot = Slot {
            name,
            key: endpoint.key.clone(),
            service: endpoint.service,
            weight: endpoint.weight,
            metadata: endpoint.metadata,
            load,
            order,
            generation,
        };
        self.endpoints.insert(endpoint.key, Arc::new(slot));
    }

    /// Publishes the endpoints as they are now, if they changed since the last snapshot and
    /// the time is right: not in the middle of a burst (`batch_done`), and not before the
    /// retry time of a failed publish unless something `changed` since.
    fn publish_if_due(
        &mut self,
        shared: &Shared<K, S, P>,
        cx: &mut Context<'_>,
        batch_done: bool,
        changed: bool,
    ) {
        let batch_done = batch_done || self.unpublished >= MAX_UNPUBLISHED;
        if !self.dirty || !batch_done {
            return;
        }
        if let Some((_, retry)) = &mut self.retry {
            if !changed && retry.as_mut().poll(cx).is_pending() {
                return;
            }
        }
        if self.publish(shared) {
            self.dirty = false;
            self.unpublished = 0;
            self.retry = None;
        } else {
            let failures = self.retry.as_ref().map_or(0, |(n, _)| *n);
            self.retry = Some((failures + 1, armed_sleep(backoff(failures), cx)));
        }
    }

    /// Builds the strategy's table and publishes a snapshot; false when the strategy
    /// panicked (the last snapshot stays).
    fn publish(&mut self, shared: &Shared<K, S, P>) -> bool {
        let mut all: Vec<Arc<Slot<K, S>>> = self.endpoints.values().cloned().collect();
        all.sort_unstable_by_key(|s| s.order);
        let candidates: Vec<Candidate<'_, K>> = all
            .iter()
            .map(|s| Candidate {
                key: &s.key,
                weight: s.weight,
                load: &s.load,
            })
            .collect();
        let decided = self.health.eligible(&candidates);
        drop(candidates);
        let mut eligible: Vec<Arc<Slot<K, S>>> = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut metadata: Vec<Metadata> = Vec::new();
        for (slot, weight) in all.iter().zip(&decided.weights) {
            if let Some(weight) = *weight {
                eligible.push(slot.clone());
                entries.push(Entry {
                    weight,
                    load: slot.load.clone(),
                });
                names.push(slot.name.clone());
                metadata.push(slot.metadata.clone());
            }
        }
        let empty_reason = if all.is_empty() {
            UnavailableReason::NoEndpoints
        } else if all.iter().all(|s| s.weight == 0) {
            UnavailableReason::AllZeroWeight
        } else {
            UnavailableReason::AllUnhealthy
        };
        let table = if entries.is_empty() {
            None
        } else {
            // A strategy is user code: if its `build` panics, keep serving the last snapshot
            // rather than let the driver die and discovery stop.
            let built = panic::catch_unwind(AssertUnwindSafe(|| {
                shared
                    .strategy
                    .build(&Endpoints::new(&entries, &names, &metadata))
            }));
            match built {
                Ok(table) => Some(table),
                Err(_) => {
                    tracing::error!(
                        "the strategy panicked building its table; keeping the last endpoint set and trying again later"
                    );
                    lock(&shared.discovery)
                        .record_error("the strategy panicked building its table".into());
                    return false;
                }
            }
        };
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &mut self.metrics {
            // In discovery's units: a ramping endpoint shows its fraction of its weight.
            let scale = decided.scale;
            let weights = decided
                .weights
                .iter()
                .map(|w| w.map(|w| f64::from(w) / scale));
            let loads = all.iter().map(|s| &s.load);
            metrics.publish(loads.zip(weights), &decided.stats, table.is_some());
        }
        self.version += 1;
        shared.publish(Set {
            version: self.version,
            all,
            eligible,
            entries,
            names,
            metadata,
            table,
            skip: decided.skip,
            health: decided.stats,
            empty_reason,
        });
        true
    }
}

impl<K, S, P> Future for Driver<K, S, P>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    S: Send + Sync + 'static,
    P: Strategy,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Pin::new(&mut this.stop).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(shared) = this.shared.upgrade() else {
            return Poll::Ready(());
        };
        let (mut changed, exhausted) = this.drain(&shared, cx);
        #[cfg(feature = "metrics")]
        let endpoints = &this.endpoints;
        #[cfg(feature = "metrics")]
        let metrics = &this.metrics;
        changed |= this.health.poll(cx, &mut |event| {
            tracing::info!(%event, "endpoint health changed");
            #[cfg(feature = "metrics")]
            if metrics.is_some() {
                crate::metrics::DriverMetrics::health_event(
                    &event,
                    endpoints.get(&event.key).map(|s| &*s.load),
                );
            }
            lock(&shared.events).emit(event);
        });
        // A strategy fed by live figures rebuilds its table on its timer, set unchanged.
        changed |= this.rebuild_due(cx);
        this.dirty |= changed;
        // While the source has more changes ready, the set may be half applied: publish
        // once it has none (after yielding to the runtime between batches).
        this.publish_if_due(&shared, cx, !exhausted, changed);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &mut this.metrics {
            metrics.sync_if_due(cx);
        }
        this.health.arm_timer(cx);
        if exhausted {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<K, S, P: Strategy> Drop for Driver<K, S, P> {
    /// A driver dropped while handles live on was not stopped by them: its runtime shut
    /// down (or it panicked). The handles must know, or they would wait for changes and
    /// ends of ejections that never come.
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.driver_stopped();
        }
    }
}

impl<K, S, P: Strategy> Unpin for Driver<K, S, P> {}
