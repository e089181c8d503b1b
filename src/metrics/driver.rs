//! What the balancer's background task records: discovery, snapshots, health events, and
//! every [`SYNC`] the counters requests keep in each endpoint's [`Load`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use tokio::time::Sleep;

use super::{BalancerMetrics, EndpointMetrics, SYNC};
use crate::endpoint::Load;
use crate::health::{HealthEvent, HealthReason, HealthStats};

/// The driver's side of the metrics: the balancer's handles and what was last published,
/// to write again at each [`SYNC`].
#[derive(Debug)]
pub(crate) struct DriverMetrics {
    pub(crate) balancer: Arc<BalancerMetrics>,
    /// Each endpoint in the set with its published weight (`None`: takes no requests).
    published: Vec<(Arc<Load>, Option<f64>)>,
    /// Removed endpoints with requests still in flight: synced until these finish.
    leaving: Vec<Arc<Load>>,
    /// The last snapshot's size and health picture.
    stats: (usize, HealthStats),
    timer: Option<Pin<Box<Sleep>>>,
}

impl DriverMetrics {
    pub(crate) fn new(balancer: Arc<BalancerMetrics>) -> Self {
        DriverMetrics {
            balancer,
            published: Vec::new(),
            leaving: Vec::new(),
            stats: (0, HealthStats::default()),
            timer: None,
        }
    }

    /// Registers a new endpoint's handles.
    pub(crate) fn endpoint(&self, name: &Arc<str>) -> Arc<EndpointMetrics> {
        self.balancer.endpoint(name)
    }

    /// An endpoint left the set: its gauges go to 0, and its requests still in flight are
    /// followed until they end.
    pub(crate) fn removed(&mut self, load: &Arc<Load>) {
        // No longer written by the sync as live, even before the next snapshot is
        // published (which may wait for further discovery changes).
        self.published.retain(|(l, _)| !Arc::ptr_eq(l, load));
        if let Some(metrics) = load.metrics() {
            metrics.removed();
            metrics.sync_requests(load);
            if load.in_flight() > 0 {
                self.leaving.push(load.clone());
            }
        }
    }

    /// A snapshot is published: each endpoint with its effective weight (`None`: it takes
    /// no requests), the health picture, and whether a strategy table was built.
    pub(crate) fn publish<'a>(
        &mut self,
        endpoints: impl Iterator<Item = (&'a Arc<Load>, Option<f64>)>,
        stats: &HealthStats,
        rebuilt: bool,
    ) {
        self.published.clear();
        for (load, weight) in endpoints {
            if let Some(metrics) = load.metrics() {
                metrics.sync(load, weight);
            }
            self.published.push((load.clone(), weight));
        }
        self.stats = (self.published.len(), *stats);
        self.balancer.publish(self.published.len(), stats, rebuilt);
    }

    /// Counts an ejection (`load` is the endpoint's, if it is still in the set).
    pub(crate) fn health_event<K>(event: &HealthEvent<K>, load: Option<&Load>) {
        let ejection = matches!(
            event.reason,
            HealthReason::ConsecutiveFailures(_)
                | HealthReason::SuccessRate { .. }
                | HealthReason::FailurePercentage { .. }
        );
        if ejection {
            if let Some(metrics) = load.and_then(Load::metrics) {
                metrics.ejected();
            }
        }
    }

    /// Every [`SYNC`]: copies the request counters of every endpoint (and of removed ones
    /// whose requests are still in flight) and writes every live series again, so that a
    /// recorder's idle timeout only ever drops removed endpoints' series.
    pub(crate) fn sync_if_due(&mut self, cx: &mut Context<'_>) {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(SYNC)));
        if timer.as_mut().poll(cx).is_pending() {
            return;
        }
        for (load, weight) in &self.published {
            if let Some(metrics) = load.metrics() {
                metrics.sync(load, *weight);
            }
        }
        self.leaving.retain(|load| {
            if let Some(metrics) = load.metrics() {
                metrics.sync_requests(load);
            }
            load.in_flight() > 0
        });
        let (endpoints, stats) = &self.stats;
        self.balancer.refresh(*endpoints, stats);
        timer.as_mut().reset(tokio::time::Instant::now() + SYNC);
        let _ = timer.as_mut().poll(cx);
    }
}
