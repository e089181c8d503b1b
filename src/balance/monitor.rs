//! A cloneable, type-erased handle on a balancer's statistics.

use std::fmt;
use std::sync::Weak;

use super::shared::{lock, Shared};
use crate::discover::DiscoveryStats;
use crate::endpoint::EndpointStats;
use crate::strategy::Strategy;

/// Reads a balancer's statistics without naming its type.
///
/// Get one with [`Balance::monitor`](crate::Balance::monitor). It stays usable after the
/// balancer is boxed (for example into a `BoxCloneSyncService`) and does not keep the
/// balancer alive: once every `Balance` handle is dropped, it reports no endpoints.
pub struct Monitor<K> {
    shared: Weak<dyn Source<K>>,
}

trait Source<K>: Send + Sync {
    fn endpoints(&self) -> Vec<EndpointStats<K>>;
    fn discovery(&self) -> DiscoveryStats;
}

impl<K, S, P> Source<K> for Shared<K, S, P>
where
    K: Clone + Send + Sync,
    S: Send + Sync,
    P: Strategy,
{
    fn endpoints(&self) -> Vec<EndpointStats<K>> {
        self.endpoint_stats()
    }

    fn discovery(&self) -> DiscoveryStats {
        lock(&self.discovery).clone()
    }
}

impl<K> Monitor<K> {
    pub(crate) fn new<S, P>(shared: Weak<Shared<K, S, P>>) -> Self
    where
        K: Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
        P: Strategy,
    {
        Monitor { shared }
    }

    /// Every endpoint's statistics, as [`Balance::endpoints`](crate::Balance::endpoints);
    /// empty once the balancer is gone.
    pub fn endpoints(&self) -> Vec<EndpointStats<K>> {
        self.shared
            .upgrade()
            .map(|s| s.endpoints())
            .unwrap_or_default()
    }

    /// The discovery statistics, as
    /// [`Balance::discovery_stats`](crate::Balance::discovery_stats); `None` once the balancer
    /// is gone.
    pub fn discovery_stats(&self) -> Option<DiscoveryStats> {
        self.shared.upgrade().map(|s| s.discovery())
    }

    /// Whether any handle of the balancer is still alive.
    pub fn is_alive(&self) -> bool {
        self.shared.strong_count() > 0
    }
}

impl<K> Clone for Monitor<K> {
    fn clone(&self) -> Self {
        Monitor {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for Monitor<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("alive", &self.is_alive())
            .finish()
    }
}
