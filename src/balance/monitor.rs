//! A cloneable, type-erased handle on a balancer's statistics.

use std::fmt;
use std::sync::Weak;

use super::events::HealthEvents;
use super::shared::Shared;
use crate::discover::DiscoveryStats;
use crate::endpoint::EndpointStats;
use crate::error::UnknownEndpoint;
use crate::health::HealthStats;
use crate::strategy::Strategy;

/// Reads a balancer's statistics, and drains its endpoints, without naming its type.
///
/// Get one with [`Balance::monitor`](crate::Balance::monitor). It stays usable after the
/// balancer is boxed (see [`Balance::boxed`](crate::Balance::boxed)) and does not keep the
/// balancer alive. Its methods answer as the [`Balance`](crate::Balance) methods of the same
/// name do; once every `Balance` handle is dropped, they report an empty balancer (no
/// endpoints, default statistics, an ended event stream), and [`is_alive`](Self::is_alive)
/// tells the two apart.
pub struct Monitor<K> {
    shared: Weak<dyn Source<K>>,
}

trait Source<K>: Send + Sync {
    fn endpoints(&self) -> Vec<EndpointStats<K>>;
    fn discovery(&self) -> DiscoveryStats;
    fn health(&self) -> HealthStats;
    fn events(&self) -> HealthEvents<K>;
    fn drain(&self, key: &K, draining: bool) -> Result<(), UnknownEndpoint>;
}

impl<K, S, P> Source<K> for Shared<K, S, P>
where
    K: Clone + PartialEq + fmt::Debug + Send + Sync,
    S: Send + Sync,
    P: Strategy,
{
    fn endpoints(&self) -> Vec<EndpointStats<K>> {
        self.endpoint_stats()
    }

    fn discovery(&self) -> DiscoveryStats {
        self.discovery_stats()
    }

    fn health(&self) -> HealthStats {
        self.health_stats()
    }

    fn events(&self) -> HealthEvents<K> {
        self.health_events()
    }

    fn drain(&self, key: &K, draining: bool) -> Result<(), UnknownEndpoint> {
        self.set_draining(key, draining)
    }
}

impl<K> Monitor<K> {
    pub(crate) fn new<S, P>(shared: Weak<Shared<K, S, P>>) -> Self
    where
        K: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
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
    /// [`Balance::discovery_stats`](crate::Balance::discovery_stats); the defaults once the
    /// balancer is gone.
    pub fn discovery_stats(&self) -> DiscoveryStats {
        self.shared
            .upgrade()
            .map(|s| s.discovery())
            .unwrap_or_default()
    }

    /// The health picture, as [`Balance::health_stats`](crate::Balance::health_stats); the
    /// defaults (no endpoint) once the balancer is gone.
    pub fn health_stats(&self) -> HealthStats {
        self.shared
            .upgrade()
            .map(|s| s.health())
            .unwrap_or_default()
    }

    /// A stream of health events, as
    /// [`Balance::health_events`](crate::Balance::health_events); one that has ended once
    /// the balancer is gone.
    pub fn health_events(&self) -> HealthEvents<K> {
        self.shared
            .upgrade()
            .map_or_else(HealthEvents::ended, |s| s.events())
    }

    /// Starts or stops draining an endpoint, as
    /// [`Balance::set_draining`](crate::Balance::set_draining). Fails with
    /// [`UnknownEndpoint`] when the balancer has no such endpoint, or is gone.
    pub fn set_draining(&self, key: &K, draining: bool) -> Result<(), UnknownEndpoint>
    where
        K: fmt::Debug,
    {
        match self.shared.upgrade() {
            Some(s) => s.drain(key, draining),
            None => Err(UnknownEndpoint::new(key)),
        }
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
