//! The balancer-wide metric handles, registered when the balancer is built.

use std::sync::Arc;

use ::metrics::{counter, gauge, Counter, Gauge, Label};
use tokio::time::Instant;

use super::*;
use crate::error::UnavailableReason;
use crate::health::HealthStats;

/// The handles of one balancer's series, and what it needs to register its endpoints'.
#[derive(Debug)]
pub(crate) struct BalancerMetrics {
    name: Arc<str>,
    /// The clock of latency samples for endpoints of a balancer that does not track latency.
    epoch: Instant,
    endpoints: Gauge,
    endpoints_healthy: Gauge,
    ejections_active: Gauge,
    panic_mode: Gauge,
    discovery_updates: Counter,
    discovery_errors: Counter,
    table_rebuilds: Counter,
    /// By [`UnavailableReason`], in the order of [`reason_index`].
    fail_fast: [Counter; 4],
}

/// The `reason` label of a fail-fast refusal.
fn reason_label(reason: UnavailableReason) -> &'static str {
    match reason {
        UnavailableReason::NoEndpoints => "no_endpoints",
        UnavailableReason::AllZeroWeight => "all_zero_weight",
        UnavailableReason::NoneReady => "none_ready",
        UnavailableReason::AllUnhealthy => "all_unhealthy",
    }
}

const REASONS: [UnavailableReason; 4] = [
    UnavailableReason::NoEndpoints,
    UnavailableReason::AllZeroWeight,
    UnavailableReason::NoneReady,
    UnavailableReason::AllUnhealthy,
];

fn reason_index(reason: UnavailableReason) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

impl BalancerMetrics {
    /// Registers the series of balancer `name`, or returns `None` when no recorder is
    /// installed (then nothing is recorded, and requests pay nothing).
    pub(crate) fn register(name: Arc<str>) -> Option<Arc<Self>> {
        if !recorder_installed() {
            return None;
        }
        describe_once();
        let labels = [Label::new(LABEL_BALANCER, name.clone())];
        let fail_fast = REASONS.map(|reason| {
            let mut labels = labels.to_vec();
            labels.push(Label::new(LABEL_REASON, reason_label(reason)));
            counter!(FAIL_FAST_TOTAL, labels)
        });
        Some(Arc::new(BalancerMetrics {
            epoch: Instant::now(),
            endpoints: gauge!(ENDPOINTS, labels.to_vec()),
            endpoints_healthy: gauge!(ENDPOINTS_HEALTHY, labels.to_vec()),
            ejections_active: gauge!(EJECTIONS_ACTIVE, labels.to_vec()),
            panic_mode: gauge!(PANIC_MODE, labels.to_vec()),
            discovery_updates: counter!(DISCOVERY_UPDATES_TOTAL, labels.to_vec()),
            discovery_errors: counter!(DISCOVERY_ERRORS_TOTAL, labels.to_vec()),
            table_rebuilds: counter!(TABLE_REBUILDS_TOTAL, labels.to_vec()),
            fail_fast,
            name,
        }))
    }

    /// Registers the series of one endpoint of this balancer.
    pub(crate) fn endpoint(&self, endpoint: &Arc<str>) -> Arc<EndpointMetrics> {
        Arc::new(EndpointMetrics::register(&self.name, endpoint, self.epoch))
    }

    /// One change from discovery applied.
    pub(crate) fn discovery_update(&self) {
        self.discovery_updates.increment(1);
    }

    /// One error from discovery.
    pub(crate) fn discovery_error(&self) {
        self.discovery_errors.increment(1);
    }

    /// A snapshot was published: `endpoints` in the set, with this health picture, and a
    /// strategy table built for it (`rebuilt`).
    pub(crate) fn publish(&self, endpoints: usize, health: &HealthStats, rebuilt: bool) {
        self.endpoints.set(endpoints as f64);
        self.endpoints_healthy.set(health.healthy as f64);
        self.ejections_active.set(health.ejected as f64);
        self.panic_mode.set(if health.panic { 1.0 } else { 0.0 });
        if rebuilt {
            self.table_rebuilds.increment(1);
        }
    }

    /// Writes every series again (see [`EndpointMetrics::sync`]).
    pub(crate) fn refresh(&self, endpoints: usize, health: &HealthStats) {
        self.publish(endpoints, health, false);
        for counter in [
            &self.discovery_updates,
            &self.discovery_errors,
            &self.table_rebuilds,
        ]
        .into_iter()
        .chain(&self.fail_fast)
        {
            counter.increment(0);
        }
    }

    /// A request refused by fail-fast.
    #[cold]
    pub(crate) fn fail_fast(&self, reason: UnavailableReason) {
        self.fail_fast[reason_index(reason)].increment(1);
    }
}
