//! The adapter that applies a [`Subsetting`] algorithm to any discovery source.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_core::Stream;
use pin_project_lite::pin_project;

use super::Subsetting;
use crate::balance::default_name;
use crate::discover::snapshots::dedup_last_wins;
use crate::discover::{Change, Discover};
use crate::endpoint::Endpoint;

/// Changes taken from the source before the subset is recomputed once (as the balancer
/// applies a channel's changes in batches).
const BATCH: usize = 256;

/// Wraps `source` so that the balancer sees only this client's subset of its backends,
/// chosen by `algorithm`; the [`SubsetHandle`] shows the current subset.
///
/// - The adapter tracks the full backend set. After each batch of changes from the source
///   (everything it has ready, up to 256), it recomputes the subset and sends only the
///   differences: a remove for each member that left, an insert for each that joined, and
///   an insert for each member whose weight, metadata or service changed.
/// - Members keep their metadata; their weight is their weight from discovery times the
///   algorithm's factor (1 for [`Deterministic`](super::Deterministic) and
///   [`Random`](super::Random); the share in hundredths for [`Aperture`](super::Aperture)),
///   saturating at `u32::MAX`.
/// - The first subset is sent as one [`Change::Reset`].
/// - An empty reset from the source is passed on as is: the balancer ignores it by
///   default and keeps the last set, and so does the adapter. The next subset, after the
///   next change from the source, is sent as a full reset (so with
///   [`allow_empty_reset`](crate::Builder::allow_empty_reset) the subset of the kept set
///   returns then).
/// - The algorithms choose by name only: a backend of weight 0 can be a member (it gets
///   no requests).
/// - Errors from the source are passed on, after the changes before them; the end of the
///   source ends the adapter, after the last subset.
///
/// Services are cloned: a backend that leaves the subset and joins it again is sent with
/// the service discovery gave for it, so `S` must be `Clone` (hyper clients, tonic
/// channels and most tower services are cheap handles).
pub fn subset<D, K, S, A>(source: D, algorithm: A) -> (Subset<D, K, S, A>, SubsetHandle<K>)
where
    D: Discover<K, S>,
    K: Clone + Eq + Hash + fmt::Debug,
    S: Clone,
    A: Subsetting,
{
    let stats = Arc::new(ArcSwap::from_pointee(SubsetStats::default()));
    let handle = SubsetHandle {
        stats: stats.clone(),
    };
    let state = State {
        algorithm,
        backends: Vec::new(),
        position: HashMap::new(),
        members: HashMap::new(),
        updated: Vec::new(),
        resync: true,
        changed: false,
        out: VecDeque::new(),
        stats,
        #[cfg(feature = "metrics")]
        metrics: None,
    };
    let adapter = Subset {
        source,
        state,
        error: None,
        ended: false,
    };
    (adapter, handle)
}

pin_project! {
    /// The discovery source returned by [`subset`]: only this client's subset of the
    /// wrapped source's backends.
    pub struct Subset<D, K, S, A>
    where
        D: Discover<K, S>,
    {
        #[pin]
        source: D,
        state: State<K, S, A>,
        error: Option<D::Error>,
        ended: bool,
    }
}

impl<D, K, S, A> Subset<D, K, S, A>
where
    D: Discover<K, S>,
{
    /// Records the subset through the `metrics` facade (feature `metrics`), labelled
    /// `balancer="name"`: give it the [name](crate::Builder::name) of the balancer this
    /// adapter feeds, so that its series sit beside the balancer's. The series:
    /// `tower_lb_subset_members` and `tower_lb_subset_backends` (gauges), and
    /// `tower_lb_subset_joined_total` and `tower_lb_subset_left_total` (counters), set at each
    /// new subset. Without a recorder installed (install it first) nothing is registered.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, name: impl Into<Arc<str>>) -> Self {
        self.state.metrics = crate::metrics::SubsetMetrics::register(name.into());
        self
    }
}

impl<D, K, S, A> fmt::Debug for Subset<D, K, S, A>
where
    D: Discover<K, S>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subset")
            .field("backends", &self.state.backends.len())
            .field("members", &self.state.members.len())
            .finish_non_exhaustive()
    }
}

/// A member of the current subset, as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<K> {
    /// The backend's key.
    pub key: K,
    /// The weight sent to the balancer: the backend's weight times the algorithm's factor.
    pub weight: u32,
}

/// The current subset, from a [`SubsetHandle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubsetStats<K> {
    /// The members, in the algorithm's order.
    pub members: Vec<Member<K>>,
    /// Backends in the full set.
    pub backends: usize,
    /// Backends that joined the subset so far, the first subset included.
    pub joined: u64,
    /// Backends that left the subset so far.
    pub left: u64,
}

impl<K> Default for SubsetStats<K> {
    fn default() -> Self {
        SubsetStats {
            members: Vec::new(),
            backends: 0,
            joined: 0,
            left: 0,
        }
    }
}

impl<K> SubsetStats<K> {
    /// The members' keys, in the algorithm's order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.members.iter().map(|m| &m.key)
    }
}

/// Shows the current subset of a [`subset`] adapter. Cheap to clone; reading it takes no
/// lock.
pub struct SubsetHandle<K> {
    stats: Arc<ArcSwap<SubsetStats<K>>>,
}

impl<K> Clone for SubsetHandle<K> {
    fn clone(&self) -> Self {
        SubsetHandle {
            stats: self.stats.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for SubsetHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SubsetHandle")
            .field(&self.stats.load())
            .finish()
    }
}

impl<K> SubsetHandle<K> {
    /// The subset as last sent to the balancer.
    pub fn stats(&self) -> Arc<SubsetStats<K>> {
        self.stats.load_full()
    }
}

struct Backend<K, S> {
    endpoint: Endpoint<K, S>,
    name: Arc<str>,
}

struct State<K, S, A> {
    algorithm: A,
    /// The full set, in discovery order.
    backends: Vec<Backend<K, S>>,
    position: HashMap<K, usize>,
    /// What the balancer has: each member's weight as sent.
    members: HashMap<K, u32>,
    /// Backends whose description changed since the last subset.
    updated: Vec<K>,
    /// Send the next subset as a full reset.
    resync: bool,
    /// Whether the full set changed since the last subset.
    changed: bool,
    out: VecDeque<Change<K, S>>,
    stats: Arc<ArcSwap<SubsetStats<K>>>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::SubsetMetrics>,
}

impl<K, S, A> State<K, S, A>
where
    K: Clone + Eq + Hash + fmt::Debug,
    S: Clone,
    A: Subsetting,
{
    fn apply(&mut self, change: Change<K, S>) {
        self.changed = true;
        match change {
            Change::Insert(endpoint) => self.insert(endpoint),
            Change::Remove(key) => {
                if let Some(i) = self.position.remove(&key) {
                    self.backends.swap_remove(i);
                    if let Some(moved) = self.backends.get(i) {
                        self.position.insert(moved.endpoint.key.clone(), i);
                    }
                }
            }
            Change::Reset(list) if list.is_empty() => {
                // Passed on for the balancer to judge; the set stays here, as it does in
                // the balancer by default, and the next subset is a full reset.
                self.resync = true;
                self.out.push_back(Change::Reset(Vec::new()));
            }
            Change::Reset(list) => {
                self.backends.clear();
                self.position.clear();
                for endpoint in dedup_last_wins(list) {
                    self.insert(endpoint);
                }
            }
        }
    }

    fn insert(&mut self, endpoint: Endpoint<K, S>) {
        let name = match &endpoint.metadata.name {
            Some(name) => name.clone(),
            None => default_name(&endpoint.key),
        };
        let key = endpoint.key.clone();
        let backend = Backend { endpoint, name };
        match self.position.get(&key) {
            Some(&i) => self.backends[i] = backend,
            None => {
                self.position.insert(key.clone(), self.backends.len());
                self.backends.push(backend);
            }
        }
        self.updated.push(key);
    }

    /// Recomputes the subset and queues the changes the balancer needs.
    fn publish(&mut self) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        let mut sorted: Vec<usize> = (0..self.backends.len()).collect();
        sorted.sort_by(|&a, &b| self.backends[a].name.cmp(&self.backends[b].name));
        let names: Vec<&str> = sorted.iter().map(|&i| &*self.backends[i].name).collect();
        let chosen = if names.is_empty() {
            Vec::new()
        } else {
            self.algorithm.select(&names)
        };
        let mut next: Vec<(usize, u32)> = Vec::with_capacity(chosen.len());
        for (i, factor) in chosen {
            let Some(&b) = sorted.get(i) else { continue };
            let weight = u64::from(self.backends[b].endpoint.weight) * u64::from(factor);
            next.push((b, weight.min(u64::from(u32::MAX)) as u32));
        }
        let endpoint = |(b, weight): (usize, u32)| {
            let e = &self.backends[b].endpoint;
            Endpoint {
                key: e.key.clone(),
                service: e.service.clone(),
                weight,
                metadata: e.metadata.clone(),
            }
        };
        let next_members: HashMap<K, u32> = next
            .iter()
            .map(|&(b, w)| (self.backends[b].endpoint.key.clone(), w))
            .collect();
        let joined = next_members
            .keys()
            .filter(|k| !self.members.contains_key(*k))
            .count() as u64;
        let left: Vec<K> = self
            .members
            .keys()
            .filter(|k| !next_members.contains_key(*k))
            .cloned()
            .collect();
        if std::mem::take(&mut self.resync) {
            let list = next.iter().map(|&m| endpoint(m)).collect();
            self.out.push_back(Change::Reset(list));
        } else {
            for key in &left {
                self.out.push_back(Change::Remove(key.clone()));
            }
            let updated: std::collections::HashSet<&K> = self.updated.iter().collect();
            for &(b, w) in &next {
                let key = &self.backends[b].endpoint.key;
                if self.members.get(key) != Some(&w) || updated.contains(key) {
                    self.out.push_back(Change::Insert(endpoint((b, w))));
                }
            }
        }
        self.updated.clear();
        let previous = self.stats.load();
        self.stats.store(Arc::new(SubsetStats {
            members: next
                .iter()
                .map(|&(b, weight)| Member {
                    key: self.backends[b].endpoint.key.clone(),
                    weight,
                })
                .collect(),
            backends: self.backends.len(),
            joined: previous.joined + joined,
            left: previous.left + left.len() as u64,
        }));
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.subset(next.len(), self.backends.len(), joined, left.len() as u64);
        }
        self.members = next_members;
    }
}

impl<D, K, S, A> Stream for Subset<D, K, S, A>
where
    D: Discover<K, S>,
    K: Clone + Eq + Hash + fmt::Debug,
    S: Clone,
    A: Subsetting,
{
    type Item = Result<Change<K, S>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(change) = this.state.out.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some(error) = this.error.take() {
                return Poll::Ready(Some(Err(error)));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let mut taken = 0;
            while taken < BATCH {
                match this.source.as_mut().poll_change(cx) {
                    Poll::Ready(Some(Ok(change))) => {
                        this.state.apply(change);
                        taken += 1;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        *this.error = Some(error);
                        break;
                    }
                    Poll::Ready(None) => {
                        *this.ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            this.state.publish();
            let idle = this.state.out.is_empty() && this.error.is_none() && !*this.ended;
            if idle && taken < BATCH {
                return Poll::Pending;
            }
            if idle {
                // A full batch changed nothing the balancer sees: let others run first.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}
