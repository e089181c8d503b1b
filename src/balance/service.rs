use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::future::ResponseFuture;
use super::shared::{Picked, Set, Shared, Stamp};
use crate::classify::{Classify, DefaultClassifier};
use crate::completion::{InFlight, OnResponse, TrackCompletion};
use crate::discover::DiscoveryStats;
use crate::endpoint::{EndpointStats, Load};
use crate::error::{BoxError, Unavailable, UnavailableReason};
use crate::health::{HealthEvent, HealthStats};
use crate::key::{NoKey, RequestKey};
use crate::strategy::{self, Endpoints, LeastRequest, Strategy};

/// A load balancer over a changing set of endpoint services.
///
/// `Balance` is a handle: clones are cheap and share one endpoint set, one strategy state and
/// one background driver, so a single balancer serves every task and thread without
/// `tower::buffer::Buffer`. It is `Clone + Send + Sync` when the endpoint service `S` is.
/// Each clone keeps its own readiness: `poll_ready` on one clone reserves an endpoint for
/// that clone's next `call`.
///
/// Build one with [`Balance::builder`]; see the [crate docs](crate) for an example.
///
/// A balancer belongs to one tokio runtime: the one its background driver runs on (see
/// [`Builder::build`](crate::Builder::build)). Its handles may be used from any thread,
/// but once that runtime shuts down, `poll_ready` fails with
/// [`DriverStopped`](crate::error::DriverStopped).
///
/// | type parameter | meaning | default |
/// |---|---|---|
/// | `K` | endpoint key, for example `SocketAddr` | |
/// | `S` | the service that talks to one endpoint | |
/// | `P` | the [strategy](crate::strategy) | [`LeastRequest`] |
/// | `C` | the [classifier](crate::classify) | [`DefaultClassifier`] |
/// | `T` | the [completion policy](crate::completion) | [`OnResponse`] |
/// | `H` | the [request key](crate::key), for hashing strategies | [`NoKey`] |
pub struct Balance<K, S, P = LeastRequest, C = DefaultClassifier, T = OnResponse, H = NoKey>
where
    P: Strategy,
{
    pub(super) shared: Arc<Shared<K, S, P>>,
    pub(super) classify: C,
    pub(super) track: T,
    pub(super) key: H,
    /// This handle's id in the waiter list, once it has waited.
    waiter_id: Option<u64>,
    /// The endpoint `poll_ready` reserved for the next `call`. A strategy that routes by
    /// key chooses in `call`, and uses it if the key's walk reaches it.
    ready: Option<Picked<S>>,
    pending: Vec<PendingEndpoint<S>>,
    wait: Option<Wait>,
    /// The last readiness error while no endpoint was ready, for `Unavailable::source`.
    last_error: Option<Arc<BoxError>>,
    /// When every endpoint failed its readiness check, no endpoint will wake this handle:
    /// it looks again after this timer (5 ms, doubling up to 100 ms).
    recheck: Option<(Duration, Pin<Box<Sleep>>)>,
}

/// The first and the longest pause before a handle whose endpoints all failed their
/// readiness checks looks again.
const RECHECK_FIRST: Duration = Duration::from_millis(5);
const RECHECK_MAX: Duration = Duration::from_millis(100);

/// How many times the strategy chooses before the remaining endpoints are scanned.
pub(super) const PICKS_BEFORE_SCAN: usize = 3;

/// The endpoint indices tried during one `poll_ready`. The first needs no allocation, so the
/// common case (the first choice is ready) costs nothing.
#[derive(Default)]
pub(super) struct Tried {
    first: Option<usize>,
    rest: Vec<u64>,
    len: usize,
}

impl Tried {
    /// Adds `index` (of `n`); false if it was already there.
    pub(super) fn insert(&mut self, index: usize, n: usize) -> bool {
        if self.first == Some(index) {
            return false;
        }
        if self.first.is_none() {
            self.first = Some(index);
            self.len = 1;
            return true;
        }
        if self.rest.is_empty() {
            self.rest = vec![0; n.div_ceil(64)];
        }
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if self.rest[word] & bit != 0 {
            return false;
        }
        self.rest[word] |= bit;
        self.len += 1;
        true
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// What a search for a ready endpoint passed over, besides busy endpoints.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassedOver {
    /// An endpoint with a health flag set since the snapshot (ejected or drained meanwhile).
    pub(crate) flagged: bool,
    /// An endpoint whose service failed its readiness check.
    pub(crate) broken: bool,
}

impl PassedOver {
    /// Why no endpoint took a request: `AllUnhealthy` when the endpoints were passed over
    /// only for their flags (as the next snapshot, on its way, will say too), `NoneReady`
    /// when one was `busy` or broken.
    pub(crate) fn reason(self, busy: bool) -> UnavailableReason {
        if self.flagged && !self.broken && !busy {
            UnavailableReason::AllUnhealthy
        } else {
            UnavailableReason::NoneReady
        }
    }
}

/// A clone of endpoint `index`'s service that was not ready, kept so its wake-up reaches
/// the caller. Only kept while the set is still at `version`, so `index` stays valid.
struct PendingEndpoint<S> {
    index: usize,
    version: u64,
    service: S,
}

struct Wait {
    since: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Balance<(), ()> {
    /// A [`Builder`](crate::Builder) with the defaults: least request (two choices), the
    /// default classifier, outlier detection on, in-flight until the response, fail fast
    /// after 3 s.
    pub fn builder() -> crate::Builder {
        crate::Builder::new()
    }
}

impl<K, S, P: Strategy, C, T, H> Balance<K, S, P, C, T, H> {
    pub(crate) fn from_shared(shared: Arc<Shared<K, S, P>>, classify: C, track: T, key: H) -> Self {
        Balance {
            shared,
            classify,
            track,
            key,
            waiter_id: None,
            ready: None,
            pending: Vec::new(),
            wait: None,
            last_error: None,
            recheck: None,
        }
    }

    /// A snapshot of every endpoint: key, weight, metadata, state and live counters, in
    /// discovery order.
    pub fn endpoints(&self) -> Vec<EndpointStats<K>>
    where
        K: Clone,
    {
        self.shared.endpoint_stats()
    }

    /// Statistics of the discovery source: changes applied, errors, whether it ended.
    pub fn discovery_stats(&self) -> DiscoveryStats {
        super::shared::lock(&self.shared.discovery).clone()
    }

    /// A cloneable handle on this balancer's statistics that does not name its type and
    /// does not keep it alive; see [`Monitor`](super::Monitor).
    pub fn monitor(&self) -> super::Monitor<K>
    where
        K: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        super::Monitor::new(Arc::downgrade(&self.shared))
    }

    /// The strategy, for example to read its configuration.
    pub fn strategy(&self) -> &P {
        &self.shared.strategy
    }

    /// The balancer-wide health picture: how many endpoints are healthy, how many are
    /// ejected, and whether [panic mode](crate::health#panic-mode) is on. As of the last
    /// published snapshot.
    pub fn health_stats(&self) -> HealthStats {
        self.shared.set.load().health
    }

    /// A stream of every change of an endpoint's health: probe results (including each
    /// endpoint's first, success or failure), ejections, probation, draining.
    ///
    /// Each call returns a new subscriber that sees the events from then on; the first
    /// call also gets the events that happened before it (up to 1024), so subscribing right
    /// after building misses nothing. Events queue until read: drop a stream you no longer
    /// read.
    pub fn health_events(&self) -> HealthEvents<K>
    where
        K: Clone,
    {
        self.shared.health_events()
    }

    /// Starts (`true`) or stops (`false`) draining the endpoint `key`: while draining it
    /// gets no new requests, and requests in flight finish normally (watch its `in_flight`
    /// in [`endpoints`](Self::endpoints) fall to zero before removing it). Draining
    /// outlasts updates of the endpoint by discovery; a removed and re-added endpoint
    /// starts afresh. Takes effect at once for new picks.
    ///
    /// Fails with [`UnknownEndpoint`](crate::error::UnknownEndpoint) when the balancer has
    /// no endpoint `key`.
    pub fn set_draining(&self, key: &K, draining: bool) -> Result<(), crate::error::UnknownEndpoint>
    where
        K: PartialEq + fmt::Debug,
    {
        self.shared.set_draining(key, draining)
    }

    /// Tries the endpoints kept from an earlier poll, then picks new ones.
    fn find_ready<Req>(
        &mut self,
        set: &Set<K, S, P::Table>,
        cx: &mut Context<'_>,
    ) -> Result<(), UnavailableReason>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let n = set.entries.len();
        let Some(table) = set.table.as_ref() else {
            self.pending.clear();
            return Err(set.empty_reason);
        };

        // Endpoints polled during this call, so none is polled (or counted) twice.
        let mut tried = Tried::default();
        let mut passed = PassedOver::default();

        if !self.pending.is_empty() {
            self.pending.retain(|p| p.version == set.version);
            let mut i = 0;
            while i < self.pending.len() {
                tried.insert(self.pending[i].index, n);
                match self.pending[i].service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let p = self.pending.swap_remove(i);
                        let slot = &set.eligible[p.index];
                        let stamp = Stamp::new(slot, set.skip);
                        if stamp.is_stale(&slot.load) {
                            // Ejected or drained while it was busy.
                            passed.flagged = true;
                            continue;
                        }
                        self.pending.clear();
                        self.ready = Some(Picked {
                            service: p.service,
                            load: slot.load.clone(),
                            stamp,
                        });
                        return Ok(());
                    }
                    Poll::Pending => i += 1,
                    Poll::Ready(Err(error)) => {
                        let p = self.pending.swap_remove(i);
                        let load = &set.eligible[p.index].load;
                        self.last_error = Some(readiness_failed(load, error.into()));
                        passed.broken = true;
                    }
                }
            }
        }

        let pick_cx = strategy::Context::new(self.shared.pick_epoch);
        let endpoints = Endpoints::new(&set.entries, &set.names);
        // The strategy's choice first; if it is not ready, the strategy chooses again (a
        // random strategy draws new candidates, round robin moves on in its cycle), and
        // only then are the remaining endpoints scanned from a random place, so a busy
        // endpoint's share spreads over the others instead of landing on its neighbour.
        // A strategy that routes by key chooses in `call`, with the key: here any ready
        // endpoint will do (backpressure when none is), so it only scans.
        let picks = if self.shared.strategy.uses_request_key() {
            0
        } else {
            PICKS_BEFORE_SCAN
        };
        for _ in 0..picks {
            let index = self.shared.strategy.pick(table, &endpoints, &pick_cx);
            let index = if index < n { index } else { index % n };
            if tried.insert(index, n) && self.try_endpoint(set, index, cx, &mut passed) {
                return Ok(());
            }
        }
        if tried.len() < n {
            let start = self.shared.rng.below(n);
            for index in (start..n).chain(0..start) {
                if tried.insert(index, n) && self.try_endpoint(set, index, cx, &mut passed) {
                    return Ok(());
                }
            }
        }
        Err(passed.reason(!self.pending.is_empty()))
    }

    /// Clones endpoint `index`'s service and polls it: keeps it as this handle's ready
    /// endpoint, or among the pending ones, or records its readiness failure.
    fn try_endpoint<Req>(
        &mut self,
        set: &Set<K, S, P::Table>,
        index: usize,
        cx: &mut Context<'_>,
        passed: &mut PassedOver,
    ) -> bool
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let slot = &set.eligible[index];
        let stamp = Stamp::new(slot, set.skip);
        if stamp.is_stale(&slot.load) {
            // Ejected, drained, removed or replaced since the snapshot was published.
            passed.flagged = true;
            return false;
        }
        let mut service = slot.service.clone();
        match service.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.pending.clear();
                self.ready = Some(Picked {
                    service,
                    load: slot.load.clone(),
                    stamp,
                });
                true
            }
            Poll::Pending => {
                self.pending.push(PendingEndpoint {
                    index,
                    version: set.version,
                    service,
                });
                false
            }
            Poll::Ready(Err(error)) => {
                self.last_error = Some(readiness_failed(&slot.load, error.into()));
                passed.broken = true;
                false
            }
        }
    }

    /// Arms the recheck timer, whose expiry wakes the task to look again. When it has
    /// expired (this poll is that look), it is re-armed with twice the delay.
    fn schedule_recheck(&mut self, cx: &mut Context<'_>) {
        let (delay, sleep) = self
            .recheck
            .get_or_insert_with(|| (RECHECK_FIRST, Box::pin(tokio::time::sleep(RECHECK_FIRST))));
        if sleep.as_mut().poll(cx).is_ready() {
            *delay = (*delay * 2).min(RECHECK_MAX);
            sleep.as_mut().reset(Instant::now() + *delay);
            let _ = sleep.as_mut().poll(cx);
        }
    }

    /// Waits for the set to change, up to the fail-fast timeout.
    fn wait_or_fail(
        &mut self,
        cx: &mut Context<'_>,
        reason: UnavailableReason,
        known: usize,
    ) -> Poll<Result<(), BoxError>> {
        let fail_fast = self.shared.fail_fast;
        if fail_fast.is_zero() {
            return self.give_up(reason, Duration::ZERO, known);
        }
        // The wait ends at its deadline, however late this poll comes: a handle cannot tell
        // a caller that polls late from one that gave up on a `ready()` and came back, and
        // starting afresh would let a late poller wait without bound. (A caller that wants
        // a fresh wait after giving up uses a fresh clone; see `Builder::fail_fast`.)
        if self.wait.is_none() && tokio::runtime::Handle::try_current().is_err() {
            // A timer needs a tokio runtime; outside one, fail instead of panicking.
            return Poll::Ready(Err(crate::error::BuildError::NoRuntime.into()));
        }
        let wait = self.wait.get_or_insert_with(|| Wait {
            since: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(fail_fast)),
        });
        if wait.sleep.as_mut().poll(cx).is_pending() {
            if reason == UnavailableReason::NoneReady && self.pending.is_empty() {
                self.schedule_recheck(cx);
            }
            return Poll::Pending;
        }
        let waited = wait.since.elapsed();
        self.give_up(reason, waited, known)
    }

    /// Ends a wait with [`Unavailable`], dropping what the wait held.
    fn give_up(
        &mut self,
        reason: UnavailableReason,
        waited: Duration,
        known: usize,
    ) -> Poll<Result<(), BoxError>> {
        self.wait = None;
        self.recheck = None;
        self.pending.clear();
        self.shared.refused(reason);
        Poll::Ready(Err(Unavailable {
            reason,
            waited,
            endpoints: known,
            source: self.last_error.take(),
        }
        .into()))
    }
}

#[cold]
pub(crate) fn readiness_failed(load: &Load, error: BoxError) -> Arc<BoxError> {
    // Per request: trace (see the crate docs on logging).
    tracing::trace!(%error, "endpoint service failed its readiness check; skipping it");
    load.record_readiness_failure(if crate::health::unreachable::is_unreachable(&*error) {
        crate::endpoint::Observed::Unreachable
    } else {
        crate::endpoint::Observed::Failure
    });
    Arc::new(error)
}

impl<K, S, P, C, T, H, Req> Service<Req> for Balance<K, S, P, C, T, H>
where
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: Strategy,
    C: Classify<S::Response, S::Error>,
    T: TrackCompletion<S::Response>,
    H: RequestKey<Req>,
{
    type Response = T::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.shared.ensure_driver()?;
        loop {
            let set = self.shared.set.load();
            let reason = match self.find_ready(&set, cx) {
                Ok(()) => {
                    self.wait = None;
                    self.last_error = None;
                    self.recheck = None;
                    return Poll::Ready(Ok(()));
                }
                Err(reason) => reason,
            };
            // Register before re-checking, so a snapshot published in between is not missed.
            let id = *self
                .waiter_id
                .get_or_insert_with(|| self.shared.new_handle_id());
            self.shared.register(id, cx.waker());
            if self.shared.set.load().version != set.version {
                continue;
            }
            return self.wait_or_fail(cx, reason, set.all.len());
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let Some(ready) = self.ready.take() else {
            return ResponseFuture::not_ready(self.classify.clone(), self.track.clone());
        };
        if self.shared.strategy.uses_request_key() || ready.stamp.is_stale(&ready.load) {
            // Chosen by the request's key, or chosen again: the endpoint reserved in
            // `poll_ready` was ejected, drained, removed or replaced since.
            return self.route(request, ready);
        }
        // The request starts now, not when its endpoint became ready.
        let start_ns = self.shared.timing.map_or(0, |t| t.now_ns());
        let guard = InFlight::new(ready.load, start_ns);
        let mut service = ready.service;
        ResponseFuture::called(
            service.call(request),
            guard,
            self.classify.clone(),
            self.track.clone(),
        )
    }
}

impl<K, S, P: Strategy, C: Clone, T: Clone, H: Clone> Clone for Balance<K, S, P, C, T, H> {
    fn clone(&self) -> Self {
        Balance::from_shared(
            self.shared.clone(),
            self.classify.clone(),
            self.track.clone(),
            self.key.clone(),
        )
    }
}

impl<K, S, P: Strategy, C, T, H> Drop for Balance<K, S, P, C, T, H> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id {
            self.shared.unregister(id);
        }
    }
}

impl<K, S, P: Strategy, C, T, H> fmt::Debug for Balance<K, S, P, C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.shared.set.load();
        f.debug_struct("Balance")
            .field("endpoints", &set.all.len())
            .field("eligible", &set.eligible.len())
            .field("ready", &self.ready.is_some())
            .finish()
    }
}

/// A stream of [`HealthEvent`]s; see [`Balance::health_events`].
pub struct HealthEvents<K> {
    pub(crate) inner: tokio::sync::mpsc::UnboundedReceiver<HealthEvent<K>>,
}

impl<K> futures_core::Stream for HealthEvents<K> {
    type Item = HealthEvent<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_recv(cx)
    }
}

impl<K> fmt::Debug for HealthEvents<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthEvents").finish_non_exhaustive()
    }
}
