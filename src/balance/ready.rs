//! The ready search of `poll_ready`: which endpoint a handle reserves for its next `call`.
//!
//! The strategy chooses first. If its choice is not ready, the strategy chooses again (a
//! random strategy draws new candidates, round robin moves on in its cycle), up to
//! [`PICKS_BEFORE_SCAN`] choices in all, and only then are the remaining endpoints scanned
//! from a random place, so a busy endpoint's share spreads over the others instead of
//! landing on its neighbour. A strategy that routes by key chooses in `call`, with the key:
//! here any ready endpoint will do (backpressure when none is), so it only scans.
//!
//! Clones that were not ready are kept ([`Readiness`]'s pending list), so that their
//! wake-ups reach the caller, and polled first the next time.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::shared::{Picked, Set, Shared, Stamp};
use crate::endpoint::{Load, Observed};
use crate::error::{BoxError, UnavailableReason};
use crate::strategy::{self, Endpoints, Strategy};

/// How many times the strategy chooses before the remaining endpoints are scanned.
pub(super) const PICKS_BEFORE_SCAN: usize = 3;

/// One handle's readiness: the endpoint reserved for its next `call`, the clones that were
/// not ready, and the last readiness error.
pub(super) struct Readiness<S> {
    /// The endpoint `poll_ready` reserved for the next `call`. A strategy that routes by
    /// key chooses in `call`, and uses it if the key's walk reaches it.
    reserved: Option<Picked<S>>,
    pending: Vec<PendingEndpoint<S>>,
    /// The last readiness error while no endpoint was ready, for `Unavailable::source`.
    last_error: Option<Arc<BoxError>>,
}

/// A clone of endpoint `index`'s service that was not ready, kept so its wake-up reaches
/// the caller. Only kept while the set is still at `version`, so `index` stays valid.
struct PendingEndpoint<S> {
    index: usize,
    version: u64,
    service: S,
}

impl<S> Default for Readiness<S> {
    fn default() -> Self {
        Readiness {
            reserved: None,
            pending: Vec::new(),
            last_error: None,
        }
    }
}

impl<S> Readiness<S> {
    /// Whether an endpoint is reserved for the next `call`.
    #[inline]
    pub(super) fn is_reserved(&self) -> bool {
        self.reserved.is_some()
    }

    /// Takes the reserved endpoint, for `call`.
    #[inline]
    pub(super) fn take_reserved(&mut self) -> Option<Picked<S>> {
        self.reserved.take()
    }

    /// Whether clones that were not ready are kept (their wake-ups will reach the caller).
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// An endpoint was found: the last error no longer says anything.
    #[inline]
    pub(super) fn settled(&mut self) {
        self.last_error = None;
    }

    /// Ends a search that found nothing: drops the pending clones and returns the last
    /// readiness error.
    pub(super) fn give_up(&mut self) -> Option<Arc<BoxError>> {
        self.pending.clear();
        self.last_error.take()
    }

    /// Tries the endpoints kept from an earlier poll, then picks new ones; on success the
    /// endpoint is reserved. Inlined into `poll_ready`: it is most of it.
    #[inline]
    pub(super) fn find<K, P, Req>(
        &mut self,
        shared: &Shared<K, S, P>,
        set: &Set<K, S, P::Table>,
        cx: &mut Context<'_>,
    ) -> Result<(), UnavailableReason>
    where
        P: Strategy,
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

        if !self.pending.is_empty() && self.poll_pending(set, cx, &mut tried, &mut passed) {
            return Ok(());
        }

        let pick_cx = strategy::Context::new(shared.pick_epoch);
        let endpoints = Endpoints::new(&set.entries, &set.names, &set.metadata);
        let picks = if shared.strategy.uses_request_key() {
            0
        } else {
            PICKS_BEFORE_SCAN
        };
        for _ in 0..picks {
            let index = shared.strategy.pick(table, &endpoints, &pick_cx);
            let index = if index < n { index } else { index % n };
            if tried.insert(index, n) && self.try_endpoint(set, index, cx, &mut passed) {
                return Ok(());
            }
        }
        if tried.len() < n {
            let start = shared.rng.below(n);
            for index in (start..n).chain(0..start) {
                if tried.insert(index, n) && self.try_endpoint(set, index, cx, &mut passed) {
                    return Ok(());
                }
            }
        }
        Err(passed.reason(!self.pending.is_empty()))
    }

    /// Polls the clones kept from an earlier poll; reserves the first that is ready.
    fn poll_pending<K, T, Req>(
        &mut self,
        set: &Set<K, S, T>,
        cx: &mut Context<'_>,
        tried: &mut Tried,
        passed: &mut PassedOver,
    ) -> bool
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let n = set.entries.len();
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
                    self.reserved = Some(Picked {
                        service: p.service,
                        load: slot.load.clone(),
                        stamp,
                    });
                    return true;
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
        false
    }

    /// Clones endpoint `index`'s service and polls it: reserves it, or keeps it among the
    /// pending ones, or records its readiness failure.
    fn try_endpoint<K, T, Req>(
        &mut self,
        set: &Set<K, S, T>,
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
                self.reserved = Some(Picked {
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
}

/// The endpoint indices tried during one search. The first needs no allocation, so the
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
pub(super) struct PassedOver {
    /// An endpoint with a health flag set since the snapshot (ejected or drained meanwhile).
    pub(super) flagged: bool,
    /// An endpoint whose service failed its readiness check.
    pub(super) broken: bool,
}

impl PassedOver {
    /// Why no endpoint took a request: `AllUnhealthy` when the endpoints were passed over
    /// only for their flags (as the next snapshot, on its way, will say too), `NoneReady`
    /// when one was `busy` or broken.
    pub(super) fn reason(self, busy: bool) -> UnavailableReason {
        if self.flagged && !self.broken && !busy {
            UnavailableReason::AllUnhealthy
        } else {
            UnavailableReason::NoneReady
        }
    }
}

/// Records that an endpoint's service failed its readiness check: a failure of the
/// endpoint (unreachable when the error says so), logged, and kept for `Unavailable`.
#[cold]
pub(super) fn readiness_failed(load: &Load, error: BoxError) -> Arc<BoxError> {
    // Per request: trace (see the crate docs on logging).
    tracing::trace!(%error, "endpoint service failed its readiness check; skipping it");
    load.record_readiness_failure(if crate::health::unreachable::is_unreachable(&*error) {
        Observed::Unreachable
    } else {
        Observed::Failure
    });
    Arc::new(error)
}
