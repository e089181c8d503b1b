use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::future::ResponseFuture;
use super::shared::{Set, Shared};
use crate::classify::{Classify, DefaultClassifier};
use crate::completion::{InFlight, OnResponse, TrackCompletion};
use crate::discover::DiscoveryStats;
use crate::endpoint::{EndpointStats, Load};
use crate::error::{BoxError, Unavailable, UnavailableReason};
use crate::strategy::rng::Rng;
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
/// | type parameter | meaning | default |
/// |---|---|---|
/// | `K` | endpoint key, for example `SocketAddr` | |
/// | `S` | the service that talks to one endpoint | |
/// | `P` | the [strategy](crate::strategy) | [`LeastRequest`] |
/// | `C` | the [classifier](crate::classify) | [`DefaultClassifier`] |
/// | `T` | the [completion policy](crate::completion) | [`OnResponse`] |
pub struct Balance<K, S, P = LeastRequest, C = DefaultClassifier, T = OnResponse>
where
    P: Strategy,
{
    shared: Arc<Shared<K, S, P>>,
    classify: C,
    track: T,
    /// This handle's id in the waiter list, once it has waited.
    waiter_id: Option<u64>,
    ready: Option<ReadyEndpoint<S>>,
    pending: Vec<PendingEndpoint<S>>,
    wait: Option<Wait>,
    /// The last readiness error while no endpoint was ready, for `Unavailable::source`.
    last_error: Option<Arc<BoxError>>,
    /// When every endpoint failed its readiness check, no endpoint will wake this handle:
    /// it looks again after this timer (5 ms, doubling up to 100 ms).
    recheck: Option<(Duration, Pin<Box<Sleep>>)>,
}

struct ReadyEndpoint<S> {
    service: S,
    load: Arc<Load>,
}

/// The first and the longest pause before a handle whose endpoints all failed their
/// readiness checks looks again.
const RECHECK_FIRST: Duration = Duration::from_millis(5);
const RECHECK_MAX: Duration = Duration::from_millis(100);

/// How many times the strategy chooses before the remaining endpoints are scanned.
const PICKS_BEFORE_SCAN: usize = 3;

/// The endpoint indices tried during one `poll_ready`. The first needs no allocation, so the
/// common case (the first choice is ready) costs nothing.
#[derive(Default)]
struct Tried {
    first: Option<usize>,
    rest: Vec<u64>,
    len: usize,
}

impl Tried {
    /// Adds `index` (of `n`); false if it was already there.
    fn insert(&mut self, index: usize, n: usize) -> bool {
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

    fn len(&self) -> usize {
        self.len
    }
}

/// A clone of endpoint `index`'s service that was not ready, kept so its wake-up reaches
/// the caller. Only kept while the set is still at `version`, so `index` stays valid.
struct PendingEndpoint<S> {
    index: usize,
    version: u64,
    service: S,
}

/// How late after its deadline a fail-fast timer may be polled and still count as the
/// same wait. Past that, the caller had stopped polling and a new wait begins.
const ABANDONED_SLACK: Duration = Duration::from_millis(250);

struct Wait {
    since: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Balance<(), ()> {
    /// A [`Builder`](crate::Builder) with the defaults: least request (two choices), the
    /// default classifier, in-flight until the response, fail fast after 3 s.
    pub fn builder() -> crate::Builder {
        crate::Builder::new()
    }
}

impl<K, S, P: Strategy, C, T> Balance<K, S, P, C, T> {
    pub(crate) fn from_shared(shared: Arc<Shared<K, S, P>>, classify: C, track: T) -> Self {
        Balance {
            shared,
            classify,
            track,
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
        K: Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        super::Monitor::new(Arc::downgrade(&self.shared))
    }

    /// The strategy, for example to read its configuration.
    pub fn strategy(&self) -> &P {
        &self.shared.strategy
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
            return Err(if set.all.is_empty() {
                UnavailableReason::NoEndpoints
            } else {
                UnavailableReason::AllZeroWeight
            });
        };

        // Endpoints polled during this call, so none is polled (or counted) twice.
        let mut tried = Tried::default();

        if !self.pending.is_empty() {
            self.pending.retain(|p| p.version == set.version);
            let mut i = 0;
            while i < self.pending.len() {
                tried.insert(self.pending[i].index, n);
                match self.pending[i].service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let p = self.pending.swap_remove(i);
                        self.pending.clear();
                        self.ready = Some(ReadyEndpoint {
                            service: p.service,
                            load: set.eligible[p.index].load.clone(),
                        });
                        return Ok(());
                    }
                    Poll::Pending => i += 1,
                    Poll::Ready(Err(error)) => {
                        let p = self.pending.swap_remove(i);
                        let load = &set.eligible[p.index].load;
                        self.last_error = Some(readiness_failed(load, error.into()));
                    }
                }
            }
        }

        let pick_cx = strategy::Context::new(self.shared.timing.map(|t| t.epoch));
        let endpoints = Endpoints::new(&set.entries);
        // The strategy's choice first; if it is not ready, the strategy chooses again (a
        // random strategy draws new candidates, round robin moves on in its cycle), and
        // only then are the remaining endpoints scanned from a random place, so a busy
        // endpoint's share spreads over the others instead of landing on its neighbour.
        for _ in 0..PICKS_BEFORE_SCAN {
            let index = self.shared.strategy.pick(table, &endpoints, &pick_cx);
            let index = if index < n { index } else { index % n };
            if tried.insert(index, n) && self.try_endpoint(set, index, cx) {
                return Ok(());
            }
        }
        if tried.len() < n {
            let start = Rng::default().below(n);
            for index in (start..n).chain(0..start) {
                if tried.insert(index, n) && self.try_endpoint(set, index, cx) {
                    return Ok(());
                }
            }
        }
        Err(UnavailableReason::NoneReady)
    }

    /// Clones endpoint `index`'s service and polls it: keeps it as this handle's ready
    /// endpoint, or among the pending ones, or records its readiness failure.
    fn try_endpoint<Req>(
        &mut self,
        set: &Set<K, S, P::Table>,
        index: usize,
        cx: &mut Context<'_>,
    ) -> bool
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let slot = &set.eligible[index];
        let mut service = slot.service.clone();
        match service.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.pending.clear();
                self.ready = Some(ReadyEndpoint {
                    service,
                    load: slot.load.clone(),
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
        // A caller that stopped polling (its own timeout dropped the `ready()` future) and
        // comes back later starts a new wait. A caller still waiting is woken by the timer
        // itself, at its deadline; a timer that expired well before this poll (by more than
        // ABANDONED_SLACK) belongs to an abandoned attempt.
        let slack = ABANDONED_SLACK.min(fail_fast);
        if self
            .wait
            .as_ref()
            .is_some_and(|w| w.sleep.deadline() + slack < Instant::now())
        {
            self.wait = None;
        }
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
fn readiness_failed(load: &Load, error: BoxError) -> Arc<BoxError> {
    tracing::debug!(%error, "endpoint service failed its readiness check; skipping it");
    load.record_readiness_failure();
    Arc::new(error)
}

impl<K, S, P, C, T, Req> Service<Req> for Balance<K, S, P, C, T>
where
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: Strategy,
    C: Classify<S::Response, S::Error>,
    T: TrackCompletion<S::Response>,
{
    type Response = T::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, T>;

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

    fn call(&mut self, request: Req) -> Self::Future {
        let Some(ready) = self.ready.take() else {
            return ResponseFuture::not_ready(self.classify.clone(), self.track.clone());
        };
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

impl<K, S, P: Strategy, C: Clone, T: Clone> Clone for Balance<K, S, P, C, T> {
    fn clone(&self) -> Self {
        Balance::from_shared(
            self.shared.clone(),
            self.classify.clone(),
            self.track.clone(),
        )
    }
}

impl<K, S, P: Strategy, C, T> Drop for Balance<K, S, P, C, T> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id {
            self.shared.unregister(id);
        }
    }
}

impl<K, S, P: Strategy, C, T> fmt::Debug for Balance<K, S, P, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.shared.set.load();
        f.debug_struct("Balance")
            .field("endpoints", &set.all.len())
            .field("eligible", &set.eligible.len())
            .field("ready", &self.ready.is_some())
            .finish()
    }
}
