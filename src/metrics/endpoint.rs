//! One endpoint's metric handles, registered once and reached from its
//! [`Load`](crate::endpoint::Load): on a request's outcome (latency, failures), and from
//! the balancer's background task (everything else).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};
use tokio::time::Instant;

use super::latency::LatencyBuckets;
use super::*;
use crate::endpoint::Load;

/// Why a request (or readiness check) failed, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The classifier judged the response or error a failure.
    Classified,
    /// An error that says the endpoint could not be reached.
    Unreachable,
    /// The endpoint's service failed `poll_ready`.
    Readiness,
}

/// The handles of one endpoint's series. Cloned handles share their series, so an
/// endpoint inserted again under the same name continues them.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    /// The clock of latency samples when the balancer does not track latency itself.
    pub(crate) epoch: Instant,
    requests: Counter,
    active: Gauge,
    /// Latency samples since the last sync.
    latency: LatencyBuckets,
    failed_classified: Counter,
    failed_unreachable: Counter,
    failed_readiness: Counter,
    cancelled: Counter,
    healthy: Gauge,
    weight: Gauge,
    ejections: Counter,
    /// The labels, for the series looked up when written: the latency histogram (written
    /// only when there are samples) and a strategy's own figures. A handle kept across a
    /// recorder's idle timeout would point at storage the recorder has dropped, so these
    /// series, which may rest for minutes, are looked up again at each write.
    labels: [Label; 2],
    /// Weighted round robin's weight from load reports (feature `orca`), registered when
    /// that strategy first sets it.
    /// `requests` and `cancelled` as of the last sync.
    synced_requests: AtomicU64,
    synced_cancelled: AtomicU64,
}

impl EndpointMetrics {
    /// Registers the series of endpoint `endpoint` of balancer `balancer`.
    pub(crate) fn register(balancer: &Arc<str>, endpoint: &Arc<str>, epoch: Instant) -> Self {
        let labels = [
            Label::new(LABEL_BALANCER, balancer.clone()),
            Label::new(LABEL_ENDPOINT, endpoint.clone()),
        ];
        let failed = |reason: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(Label::new(LABEL_REASON, reason));
            counter!(REQUESTS_FAILED_TOTAL, labels)
        };
        EndpointMetrics {
            epoch,
            requests: counter!(REQUESTS_TOTAL, labels.to_vec()),
            active: gauge!(RQ_ACTIVE, labels.to_vec()),
            latency: LatencyBuckets::new(),
            failed_classified: failed("classified"),
            failed_unreachable: failed("unreachable"),
            failed_readiness: failed("readiness"),
            cancelled: counter!(REQUESTS_CANCELLED_TOTAL, labels.to_vec()),
            healthy: gauge!(ENDPOINT_HEALTHY, labels.to_vec()),
            weight: gauge!(ENDPOINT_WEIGHT, labels.to_vec()),
            ejections: counter!(EJECTIONS_TOTAL, labels.to_vec()),
            labels: labels.clone(),
            synced_requests: AtomicU64::new(0),
            synced_cancelled: AtomicU64::new(0),
        }
    }

    /// A request's outcome arrived `elapsed_ns` after it was sent: counted in a bucket,
    /// recorded at the next sync.
    #[inline]
    pub(crate) fn latency(&self, elapsed_ns: u64) {
        self.latency.record(elapsed_ns);
    }

    /// A failure.
    #[cold]
    pub(crate) fn failure(&self, failure: Failure) {
        match failure {
            Failure::Classified => &self.failed_classified,
            Failure::Unreachable => &self.failed_unreachable,
            Failure::Readiness => &self.failed_readiness,
        }
        .increment(1);
    }

    /// Prequal picked this endpoint by its fallback (no usable probe in the pool): counted
    /// in the balancer-wide `tower_lb_prequal_fallbacks_total`.
    #[cfg(feature = "prequal")]
    #[cold]
    pub(crate) fn prequal_fallback(&self) {
        // One series per balancer (the balancer label only), whichever endpoint counts.
        counter!(PREQUAL_FALLBACKS_TOTAL, self.labels[..1].to_vec()).increment(1);
    }

    /// The weight weighted round robin gives the endpoint from its load reports (0 while it
    /// has no usable weight), at each rebuild of its schedule.
    #[cfg(feature = "orca")]
    pub(crate) fn wrr_weight(&self, weight: f64) {
        gauge!(WRR_ENDPOINT_WEIGHT, self.labels.to_vec()).set(weight);
    }

    /// An ejection by outlier detection.
    pub(crate) fn ejected(&self) {
        self.ejections.increment(1);
    }

    /// The endpoint's standing as published: its effective weight, `None` when it takes
    /// no requests.
    pub(crate) fn publish(&self, weight: Option<f64>) {
        self.healthy.set(if weight.is_some() { 1.0 } else { 0.0 });
        self.weight.set(weight.unwrap_or(0.0));
    }

    /// Copies the counters every request updates (requests sent, in flight, cancelled)
    /// from the endpoint's [`Load`], where the request path keeps them anyway, so that a
    /// request pays for none of them here; and writes the other series again (a no-op for
    /// their values), so that a live endpoint never looks idle to a recorder's idle
    /// timeout. `weight`: as last published, `None` when it takes no requests. The
    /// histogram has no such write: an endpoint without requests for longer than the
    /// timeout loses its latency series until its next request, which registers it again
    /// (the histogram is looked up at each sync that has samples).
    pub(crate) fn sync(&self, load: &Load, weight: Option<f64>) {
        self.sync_requests(load);
        self.publish(weight);
        for counter in [
            &self.failed_classified,
            &self.failed_unreachable,
            &self.failed_readiness,
            &self.ejections,
        ] {
            counter.increment(0);
        }
    }

    /// Copies requests sent, in flight and cancelled from `load`, and hands the latency
    /// samples since the last sync to the histogram: the counters grow by what
    /// `load`'s grew since the last sync, so that an endpoint that comes back (with new
    /// counters) continues its series.
    pub(crate) fn sync_requests(&self, load: &Load) {
        let grow = |counter: &Counter, synced: &AtomicU64, now: u64| {
            let before = synced.swap(now, Ordering::Relaxed);
            counter.increment(now.saturating_sub(before));
        };
        grow(&self.requests, &self.synced_requests, load.started());
        grow(&self.cancelled, &self.synced_cancelled, load.cancelled());
        self.active.set(load.in_flight() as f64);
        let mut duration: Option<Histogram> = None;
        self.latency.drain(|seconds, count| {
            duration
                .get_or_insert_with(|| histogram!(REQUEST_DURATION_SECONDS, self.labels.to_vec()))
                .record_many(seconds, count)
        });
    }

    /// The endpoint left the set: its health and weight gauges go to 0 (its requests in
    /// flight still finish, and [`sync_requests`](Self::sync_requests) brings `rq_active`
    /// down to 0).
    pub(crate) fn removed(&self) {
        self.publish(None);
    }
}
