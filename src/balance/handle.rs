//! What a [`Balance`] handle offers besides `Service`: statistics, draining, health
//! events, and a [`Monitor`] that outlives the balancer's type.

use std::fmt;
use std::sync::Arc;

use super::events::HealthEvents;
use super::monitor::Monitor;
use super::service::Balance;
use crate::discover::DiscoveryStats;
use crate::endpoint::EndpointStats;
use crate::error::UnknownEndpoint;
use crate::health::HealthStats;
use crate::strategy::Strategy;

impl<K, S, P: Strategy, C, T, H> Balance<K, S, P, C, T, H> {
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
        self.shared.discovery_stats()
    }

    /// A cloneable handle on this balancer's statistics that does not name its type and
    /// does not keep it alive; see [`Monitor`].
    pub fn monitor(&self) -> Monitor<K>
    where
        K: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        Monitor::new(Arc::downgrade(&self.shared))
    }

    /// The strategy, for example to read its configuration.
    pub fn strategy(&self) -> &P {
        &self.shared.strategy
    }

    /// The balancer-wide health picture: how many endpoints are healthy, how many are
    /// ejected, and whether [panic mode](crate::health#panic-mode) is on. As of the last
    /// published snapshot.
    pub fn health_stats(&self) -> HealthStats {
        self.shared.health_stats()
    }

    /// A stream of every change of an endpoint's health: probe results (including each
    /// endpoint's first, success or failure), ejections, probation, draining. Read it with
    /// [`HealthEvents::recv`] or as a `Stream`.
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
    /// Fails with [`UnknownEndpoint`] when the balancer has no endpoint `key`.
    pub fn set_draining(&self, key: &K, draining: bool) -> Result<(), UnknownEndpoint>
    where
        K: PartialEq + fmt::Debug,
    {
        self.shared.set_draining(key, draining)
    }
}
