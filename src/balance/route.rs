//! Routing at `call` time: a request routed by its key (consistent hashing), or routed
//! again because the endpoint `poll_ready` reserved for it changed before the call.
//!
//! The request walks its key's preference order (for a strategy without keys: the
//! strategy's choices, then every endpoint) on the newest snapshot, and the first endpoint
//! whose service is ready takes it. The endpoint the handle reserved in `poll_ready` is
//! used as it is when the walk reaches it, so a handle that was ready can send. When every
//! endpoint passed is busy, the request waits in its response future ([`Routing`]) for the
//! first of them, in order, to become ready; it walks again whenever a newer snapshot is
//! published (an endpoint added, one back from an ejection), up to the fail-fast timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::ready::{readiness_failed, PassedOver, Tried, PICKS_BEFORE_SCAN};
use super::shared::{Picked, Set, Shared, Slot, Stamp};
use crate::completion::InFlight;
use crate::endpoint::{Load, Timing};
use crate::error::{BoxError, Unavailable, UnavailableReason};
use crate::key::RequestKey;
use crate::strategy::{self, Endpoints, Strategy};

/// What one walk of the preference order found.
pub(crate) struct Walk<S> {
    /// The version of the snapshot walked.
    version: u64,
    /// How many endpoints that snapshot had, eligible or not.
    endpoints: usize,
    /// The endpoint that takes the request, if one was ready.
    ready: Option<(S, Arc<Load>)>,
    /// Endpoints whose services were not ready, in preference order.
    busy: Vec<Picked<S>>,
    /// The last readiness error.
    last_error: Option<Arc<BoxError>>,
    passed: PassedOver,
    /// Why no endpoint may take a request, when the snapshot has none eligible.
    empty: Option<UnavailableReason>,
}

impl<S> Walk<S> {
    fn new<K, T>(set: &Set<K, S, T>) -> Self {
        Walk {
            version: set.version,
            endpoints: set.all.len(),
            ready: None,
            busy: Vec::new(),
            last_error: None,
            passed: PassedOver::default(),
            empty: None,
        }
    }

    /// Takes the endpoint that takes the request, if one was ready.
    pub(crate) fn take_ready(&mut self) -> Option<(S, Arc<Load>)> {
        self.ready.take()
    }

    /// Whether an endpoint the walk passed was busy: worth waiting for.
    pub(crate) fn found_busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// Why nothing took the request.
    pub(crate) fn reason(&self) -> UnavailableReason {
        self.empty
            .unwrap_or_else(|| self.passed.reason(!self.busy.is_empty()))
    }

    /// The error of a request nothing took, after waiting `waited`.
    pub(crate) fn unavailable(&mut self, waited: Duration) -> BoxError {
        Unavailable {
            reason: self.reason(),
            waited,
            endpoints: self.endpoints,
            source: self.last_error.take(),
        }
        .into()
    }

    /// Takes `slot`'s service if it is ready now: the clone `held` (reserved by
    /// `poll_ready`) when it is of that endpoint, or a new clone polled once. A busy clone
    /// is kept in `busy`, a failed one noted.
    fn try_slot<K, Req>(
        &mut self,
        slot: &Slot<K, S>,
        skip: u32,
        held: &mut Option<Picked<S>>,
    ) -> bool
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        if let Some(h) = held.take_if(|h| Arc::ptr_eq(&h.load, &slot.load)) {
            self.ready = Some((h.service, h.load));
            return true;
        }
        let Picked {
            mut service,
            load,
            stamp,
        } = Picked::clone_of(slot, skip);
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => {
                self.ready = Some((service, load));
                return true;
            }
            Poll::Pending => self.busy.push(Picked {
                service,
                load,
                stamp,
            }),
            Poll::Ready(Err(error)) => {
                self.last_error = Some(readiness_failed(&load, error.into()));
                self.passed.broken = true;
            }
        }
        false
    }
}

/// Walks the preference order of `request` on `set`: one strategy attempt per endpoint
/// (for a strategy without keys, whose attempts are not an order, as many as `poll_ready`
/// makes), then the endpoints no attempt reached, from the first choice onwards (at most
/// `n` endpoints in all), and stops at the first that is ready now. `held` is the endpoint the
/// handle reserved in `poll_ready`, if any; it is dropped unless the walk takes it.
pub(crate) fn walk<K, S, P, H, Req>(
    shared: &Shared<K, S, P>,
    key: &H,
    set: &Set<K, S, P::Table>,
    request: &Req,
    held: Option<Picked<S>>,
) -> Walk<S>
where
    P: Strategy,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: RequestKey<Req>,
{
    let mut walk = Walk::new(set);
    // A reservation of an endpoint that changed since is given back at once.
    let mut held = held.filter(|h| !h.stamp.is_stale(&h.load));
    let Some(table) = set.table.as_ref() else {
        walk.empty = Some(set.empty_reason);
        return walk;
    };
    let n = set.entries.len();
    let endpoints = Endpoints::new(&set.entries, &set.names, &set.metadata);
    let request_key = key.key(request);
    let mut pick_cx = strategy::Context::new(shared.pick_epoch);
    pick_cx.set_key(request_key.as_deref().filter(|k| !k.is_empty()));
    let previous = key.previous_endpoints(request);
    let mut passed_over = Vec::new();
    let mut tried = Tried::default();
    let mut first = None;
    let (mut attempts, mut scanned) = (0, 0);
    let max_attempts = if shared.strategy.uses_request_key() {
        n
    } else {
        PICKS_BEFORE_SCAN.min(n)
    };
    while tried.len() < n {
        let index = if attempts < max_attempts {
            if attempts > 0 {
                pick_cx = pick_cx.next_attempt();
            }
            attempts += 1;
            let index = shared.strategy.pick(table, &endpoints, &pick_cx);
            let index = if index < n { index } else { index % n };
            first.get_or_insert(index);
            index
        } else if scanned < n {
            scanned += 1;
            (first.unwrap_or(0) + scanned) % n
        } else {
            break;
        };
        if !tried.insert(index, n) {
            continue;
        }
        let slot = &set.eligible[index];
        if Stamp::new(slot, set.skip).is_stale(&slot.load) {
            walk.passed.flagged = true;
            continue;
        }
        if !previous.is_empty() && previous.iter().any(|p| p == endpoints.name(index)) {
            passed_over.push(index);
            continue;
        }
        if walk.try_slot(slot, set.skip, &mut held) {
            return walk;
        }
    }
    // A retry with no other candidate: back to an endpoint an earlier try went to, rather
    // than failing.
    if walk.busy.is_empty() {
        for index in passed_over {
            let slot = &set.eligible[index];
            if walk.try_slot(slot, set.skip, &mut held) {
                return walk;
            }
        }
    }
    walk
}

/// Walks a waiting request's preference order again on a newer snapshot, without naming
/// the balancer's types in its response future.
pub(crate) trait Rewalk<S, Req>: Send + Sync {
    /// The version of the newest snapshot.
    fn version(&self) -> u64;

    /// Has `waker` woken when a newer snapshot is published.
    fn watch(&mut self, waker: &Waker);

    /// Walks the preference order of `request` on the newest snapshot.
    fn walk(&self, request: &Req) -> Walk<S>;

    /// Counts a request refused for `reason` (fail fast).
    fn refused(&self, reason: UnavailableReason);
}

/// The balancer's state and request key, for [`Rewalk`].
struct Rewalker<K, S, P: Strategy, H> {
    shared: Arc<Shared<K, S, P>>,
    key: H,
    /// The id under which it waits for snapshots, once it has.
    waiter: Option<u64>,
}

impl<K, S, P, H, Req> Rewalk<S, Req> for Rewalker<K, S, P, H>
where
    K: Send + Sync,
    S: Service<Req> + Clone + Send + Sync,
    S::Error: Into<BoxError>,
    P: Strategy,
    H: RequestKey<Req>,
{
    fn version(&self) -> u64 {
        self.shared.set.load().version
    }

    fn watch(&mut self, waker: &Waker) {
        let id = *self
            .waiter
            .get_or_insert_with(|| self.shared.new_handle_id());
        self.shared.register(id, waker);
    }

    fn walk(&self, request: &Req) -> Walk<S> {
        let set = self.shared.set.load();
        walk(&self.shared, &self.key, &set, request, None)
    }

    fn refused(&self, reason: UnavailableReason) {
        self.shared.refused(reason);
    }
}

impl<K, S, P: Strategy, H> Drop for Rewalker<K, S, P, H> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter {
            self.shared.unregister(id);
        }
    }
}

/// A request whose walk found every endpoint busy: it waits for the first of them (in
/// preference order) to become ready, walks again on each newer snapshot, and gives up
/// at the fail-fast timeout.
pub(crate) struct Routing<S, Req> {
    walk: Walk<S>,
    /// Whether a busy endpoint was taken out since the walk (ejected, drained, removed or
    /// replaced): the driver publishes a snapshot for that change, worth waiting for.
    changed: bool,
    request: Option<Req>,
    rewalk: Box<dyn Rewalk<S, Req>>,
    timing: Option<Timing>,
    fail_fast: Duration,
    deadline: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<S, Req> Routing<S, Req> {
    /// A request whose `walk` found only busy endpoints: it waits for them in its response
    /// future, and walks again on `shared`'s newer snapshots with `key`.
    pub(crate) fn new<K, P, H>(
        walk: Walk<S>,
        request: Req,
        shared: &Arc<Shared<K, S, P>>,
        key: H,
    ) -> Self
    where
        K: Send + Sync + 'static,
        S: Service<Req> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        P: Strategy,
        H: RequestKey<Req>,
    {
        Routing {
            walk,
            changed: false,
            request: Some(request),
            rewalk: Box::new(Rewalker {
                shared: shared.clone(),
                key,
                waiter: None,
            }),
            timing: shared.timing,
            fail_fast: shared.fail_fast,
            deadline: None,
        }
    }

    /// Polls until an endpoint takes the request: returns its response future and in-flight
    /// guard, or the error that ends the wait.
    pub(crate) fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(S::Future, InFlight), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        // Registered before looking, so that a snapshot published after the look wakes it.
        self.rewalk.watch(cx.waker());
        if self.rewalk.version() != self.walk.version {
            if let Some(request) = &self.request {
                let mut walk = self.rewalk.walk(request);
                walk.last_error = walk.last_error.or(self.walk.last_error.take());
                self.walk = walk;
                self.changed = false;
            }
        }
        if let Some((service, load)) = self.walk.ready.take() {
            return Poll::Ready(self.send(service, load));
        }
        let busy = &mut self.walk.busy;
        let mut i = 0;
        while i < busy.len() {
            // Ejected, drained, removed or replaced while the request waited: passed over.
            if busy[i].stamp.is_stale(&busy[i].load) {
                busy.remove(i);
                self.walk.passed.flagged = true;
                self.changed = true;
                continue;
            }
            match busy[i].service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Picked { service, load, .. } = busy.remove(i);
                    busy.clear();
                    return Poll::Ready(self.send(service, load));
                }
                Poll::Pending => i += 1,
                Poll::Ready(Err(error)) => {
                    let failed = busy.remove(i);
                    self.walk.last_error = Some(readiness_failed(&failed.load, error.into()));
                    self.walk.passed.broken = true;
                }
            }
        }
        // Something to wait for: a busy endpoint, or the snapshot after a change.
        if (!busy.is_empty() || self.changed) && !self.fail_fast.is_zero() {
            let fail_fast = self.fail_fast;
            let (_, sleep) = self
                .deadline
                .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(fail_fast))));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let waited = self
            .deadline
            .as_ref()
            .map_or(Duration::ZERO, |d| d.0.elapsed());
        self.rewalk.refused(self.walk.reason());
        Poll::Ready(Err(self.walk.unavailable(waited)))
    }

    /// Sends the request to `service`, counting it in flight on `load`.
    fn send(&mut self, mut service: S, load: Arc<Load>) -> Result<(S::Future, InFlight), BoxError>
    where
        S: Service<Req>,
    {
        let Some(request) = self.request.take() else {
            // Not reachable: the wait ends when the request is sent.
            return Err("tower-lb routed a request twice".into());
        };
        let start_ns = self.timing.map_or(0, |t| t.now_ns());
        let guard = InFlight::new(load, start_ns);
        Ok((service.call(request), guard))
    }
}
