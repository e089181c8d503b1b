//! [`Balance`] and its `Service` implementation: the hot path, top to bottom.
//!
//! `poll_ready` reserves a ready endpoint ([`ready`](super::ready)) or waits for one up to
//! the fail-fast timeout ([`wait`](super::wait)); `call` sends the request to the reserved
//! endpoint, or routes it afresh when the strategy routes by key or the endpoint changed
//! since ([`route`](super::route)); the [`ResponseFuture`] records the outcome. What a
//! handle offers besides `Service` (statistics, draining, health events) is in
//! [`handle`](super::handle).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use super::ready::Readiness;
use super::route::{walk, Routing};
use super::shared::{Picked, Shared};
use super::wait::FailFast;
use crate::classify::{Classify, DefaultClassifier};
use crate::completion::{InFlight, OnResponse, TrackCompletion};
use crate::endpoint::SyncEndpoint;
use crate::error::{BoxError, Unavailable, UnavailableReason};
use crate::key::{NoKey, RequestKey};
use crate::strategy::{LeastRequest, Strategy};

/// A load balancer over a changing set of endpoint services.
///
/// `Balance` is a handle: clones are cheap and share one endpoint set, one strategy state and
/// one background driver, so a single balancer serves every task and thread without
/// `tower::buffer::Buffer`. Each clone keeps its own readiness: `poll_ready` on one clone
/// reserves an endpoint for that clone's next `call`.
///
/// Build one with [`Balance::builder`]; see the [crate docs](crate) for an example.
///
/// # What the endpoint service must be
///
/// The endpoint service `S` must be `Clone + Send + Sync + 'static`: the balancer keeps one
/// per endpoint in a snapshot that every handle reads, on every thread, and clones it for
/// each request. hyper and hyper-util clients, tonic channels, `tower::service_fn` and
/// `tower::util::BoxCloneSyncService` are. A service that is `Send` but not `Sync`
/// (`tower::util::BoxCloneService`, a service holding a `Cell`) works wrapped in
/// [`SyncService`](crate::endpoint::SyncService), which takes an uncontended lock to clone
/// it. `Balance` itself is then `Clone + Send + Sync`.
///
/// Its response is the endpoint's response (or, with a
/// [completion policy](crate::completion) such as `OnBodyEnd`, a wrapped one), and its error
/// is [`BoxError`]: the endpoint's error, or one of the balancer's own
/// [errors](crate::error).
///
/// # When `balance.ready()` does not compile
///
/// `ready()` (tower's `ServiceExt`) needs the balancer to be a `Service` for the request.
/// When a bound of that is not met (most often a [classifier](crate::classify) that does not
/// fit the endpoint's responses), rustc says the method's trait bounds are not satisfied
/// (E0599); the function form `ServiceExt::<Request>::ready(&mut balance)` names the bound
/// that is missing, with its fix.
///
/// ```compile_fail,E0599
/// use tower::ServiceExt;
/// use tower_lb::{discover, Balance};
///
/// # async fn demo() {
/// let strings = tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>("hi") });
/// let mut balance = Balance::builder().build(discover::static_list([("a", strings)])).unwrap();
/// // error[E0599]: the method `ready` exists for struct `Balance<..>`, but its trait bounds
/// //               were not satisfied
/// balance.ready().await;
/// # }
/// ```
///
/// # Runtime
///
/// A balancer belongs to one tokio runtime: the one its background driver runs on (see
/// [`Builder::build`](crate::Builder::build)). Its handles may be used from any thread,
/// but once that runtime shuts down, `poll_ready` fails with
/// [`DriverStopped`](crate::error::DriverStopped).
///
/// # Type parameters
///
/// | type parameter | meaning | default |
/// |---|---|---|
/// | `K` | endpoint key, for example `SocketAddr` | |
/// | `S` | the service that talks to one endpoint | |
/// | `P` | the [strategy](crate::strategy) | [`LeastRequest`] |
/// | `C` | the [classifier](crate::classify) | [`DefaultClassifier`] |
/// | `T` | the [completion policy](crate::completion) | [`OnResponse`] |
/// | `H` | the [request key](crate::key), for hashing strategies | [`NoKey`] |
///
/// To store a balancer without naming them, [`boxed`](Balance::boxed) erases them all but
/// the key's, keeping the statistics; a strategy chosen at run time is one type,
/// [`AnyStrategy`](crate::strategy::AnyStrategy).
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
    /// The endpoint reserved for the next `call`, and the search for one.
    readiness: Readiness<S>,
    /// The wait for an eligible endpoint, while none is.
    wait: FailFast,
}

impl<K, S, P: Strategy, C, T, H> Balance<K, S, P, C, T, H> {
    pub(super) fn from_shared(shared: Arc<Shared<K, S, P>>, classify: C, track: T, key: H) -> Self {
        Balance {
            shared,
            classify,
            track,
            key,
            waiter_id: None,
            readiness: Readiness::default(),
            wait: FailFast::default(),
        }
    }

    /// Ends a wait that found no endpoint with [`Unavailable`].
    #[cold]
    fn unavailable(
        &mut self,
        reason: UnavailableReason,
        waited: Duration,
        known: usize,
    ) -> BoxError {
        self.shared.refused(reason);
        Unavailable {
            reason,
            waited,
            endpoints: known,
            source: self.readiness.give_up(),
        }
        .into()
    }
}

impl<K, S, P, C, T, H, Req> Service<Req> for Balance<K, S, P, C, T, H>
where
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + SyncEndpoint,
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
        if self.readiness.is_reserved() {
            return Poll::Ready(Ok(()));
        }
        self.shared.ensure_driver()?;
        loop {
            let set = self.shared.set.load();
            let reason = match self.readiness.find(&self.shared, &set, cx) {
                Ok(()) => {
                    self.wait.reset();
                    self.readiness.settled();
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
            // With every endpoint failing its readiness check, nothing will wake the task.
            let recheck = reason == UnavailableReason::NoneReady && !self.readiness.has_pending();
            return match self.wait.poll(cx, self.shared.fail_fast, recheck) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(waited)) => {
                    Poll::Ready(Err(self.unavailable(reason, waited, set.all.len())))
                }
                Poll::Ready(Err(no_runtime)) => Poll::Ready(Err(no_runtime.into())),
            };
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let Some(reserved) = self.readiness.take_reserved() else {
            return ResponseFuture::not_ready(self.classify.clone(), self.track.clone());
        };
        if self.shared.strategy.uses_request_key() || reserved.stamp.is_stale(&reserved.load) {
            // Chosen by the request's key, or chosen again: the endpoint reserved in
            // `poll_ready` was ejected, drained, removed or replaced since.
            return self.route(request, reserved);
        }
        // The request starts now, not when its endpoint became ready.
        let start_ns = self.shared.timing.map_or(0, |t| t.now_ns());
        let guard = InFlight::new(reserved.load, start_ns);
        let mut service = reserved.service;
        ResponseFuture::called(
            service.call(request),
            guard,
            self.classify.clone(),
            self.track.clone(),
        )
    }
}

impl<K, S, P, C, T, H> Balance<K, S, P, C, T, H>
where
    P: Strategy,
    C: Clone,
    T: Clone,
{
    /// Routes a request at `call`: by its key, or again because `held` (the endpoint
    /// `poll_ready` reserved) changed since. The first endpoint in the request's preference
    /// order that is ready now takes it; if none is, the response future waits for one.
    /// Kept out of line so that the common `call` stays small.
    #[inline(never)]
    fn route<Req>(&mut self, request: Req, held: Picked<S>) -> ResponseFuture<S, Req, C, T>
    where
        K: Send + Sync + 'static,
        S: Service<Req> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        H: RequestKey<Req>,
    {
        let mut walk = {
            let set = self.shared.set.load();
            walk(&self.shared, &self.key, &set, &request, Some(held))
        };
        let (classify, track) = (self.classify.clone(), self.track.clone());
        if let Some((mut service, load)) = walk.take_ready() {
            let start_ns = self.shared.timing.map_or(0, |t| t.now_ns());
            let guard = InFlight::new(load, start_ns);
            return ResponseFuture::called(service.call(request), guard, classify, track);
        }
        if !walk.found_busy() {
            self.shared.refused(walk.reason());
            return ResponseFuture::failed(walk.unavailable(Duration::ZERO), classify, track);
        }
        let routing = Routing::new(walk, request, &self.shared, self.key.clone());
        ResponseFuture::routing(routing, classify, track)
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
            .field("reserved", &self.readiness.is_reserved())
            .finish()
    }
}
