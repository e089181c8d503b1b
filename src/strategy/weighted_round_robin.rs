//! Weighted round robin by server-reported load (feature `orca`): gRPC's
//! `weighted_round_robin` (gRFC A58, with gRFC A114's choice of utilization) and Envoy's
//! `client_side_weighted_round_robin`.
//!
//! # The algorithm
//!
//! Each server reports its load on its responses ([ORCA](crate::orca), gRFC A51). From an
//! endpoint's report the strategy computes its weight:
//!
//! ```text
//! weight = qps / (utilization + eps / qps × error_utilization_penalty)
//! ```
//!
//! where `qps` is `rps_fractional`, `eps` the errors per second, and `utilization` the
//! report's `application_utilization` if above 0; else the largest of the configured
//! [metric names](WeightedRoundRobin::metric_names_for_computing_utilization) if any is
//! above 0 (Envoy's order); else `cpu_utilization` (gRFC A114). A server that answers many
//! requests per unit of utilization can take more; errors count as extra utilization, so a
//! server that fails fast does not look cheap. A report with a zero `qps` or utilization
//! gives no weight and is ignored.
//!
//! Every [`weight_update_period`](WeightedRoundRobin::weight_update_period) (1 s), the
//! balancer's background driver rebuilds the schedule ([`Strategy::rebuild_every`]) from
//! each endpoint's latest weight:
//!
//! - a weight is used only after the endpoint has reported usable weights for the
//!   [`blackout_period`](WeightedRoundRobin::blackout_period) (10 s), so that a server that
//!   just started, whose figures are not yet steady, is not flooded;
//! - a weight not refreshed for the
//!   [`weight_expiration_period`](WeightedRoundRobin::weight_expiration_period) (3 min)
//!   expires, and the blackout applies again when reports resume;
//! - an endpoint without a usable weight gets the mean of the others; with fewer than two
//!   usable weights the strategy is plain round robin.
//!
//! Picks follow gRPC's static stride scheduler ([`stride`](super::stride)): lock-free, one
//! compare-and-swap per pick, no table of slots, and the same order as gRPC C++ and Go.
//!
//! The weights come only from reports: the endpoints' own weights (from discovery) are not
//! used, as in gRPC.
//!
//! # Where reports come from
//!
//! The balancer reads reports for this strategy ([`Strategy::load_reports`]): from response
//! headers with the default classifier, and for gRPC from the trailers, with
//! [`OnBodyEnd`](crate::http::OnBodyEnd) (use it: with the default
//! [`OnResponse`](crate::completion::OnResponse) gRPC reports, which come in trailers, are
//! never seen). Servers send them with [`OrcaLayer`](crate::orca::OrcaLayer), gRPC's ORCA
//! support, or Envoy.
//!
//! One difference from gRPC: gRPC computes a weight at every report, this strategy at each
//! rebuild from the endpoint's latest report. When several reports arrive between two
//! rebuilds, the last one counts (and an unusable last one hides a usable one before it);
//! the blackout starts at the first report a rebuild saw, up to one update period late.
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::strategy::WeightedRoundRobin;
//! use tower_lb::Balance;
//!
//! let wrr = WeightedRoundRobin::new()
//!     .blackout_period(Duration::from_secs(5))
//!     .error_utilization_penalty(2.0);
//! let builder = Balance::builder().strategy(wrr);
//! # drop(builder);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::stride::StaticStride;
use super::{Context, Endpoints, Strategy};
use crate::endpoint::Load;
use crate::error::BuildError;
use crate::orca::LoadReport;

/// The shortest update period gRPC allows; shorter ones are raised to it.
const MIN_UPDATE_PERIOD: Duration = Duration::from_millis(100);

/// Weighted round robin by server load reports. See the [module docs](self).
#[derive(Debug)]
pub struct WeightedRoundRobin {
    blackout_period: Duration,
    weight_expiration_period: Duration,
    weight_update_period: Duration,
    error_utilization_penalty: f64,
    metric_names: Vec<String>,
    /// The pick sequence, shared by every table (as gRPC's `scheduler_state_`).
    sequence: AtomicU32,
    /// What the strategy remembers of each endpoint between rebuilds.
    state: Mutex<HashMap<usize, Remembered>>,
}

/// One endpoint's weight history, keyed by the address of its [`Load`]; the weak handle keeps
/// that address from being reused while the entry lives.
#[derive(Debug)]
struct Remembered {
    load: Weak<Load>,
    weight: EndpointWeight,
}

/// An endpoint's weight as gRPC's `EndpointWeight` keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct EndpointWeight {
    /// The last usable weight.
    weight: f64,
    /// When the last usable weight arrived.
    last_update: Option<Instant>,
    /// When the current run of usable weights began (the blackout counts from here).
    non_empty_since: Option<Instant>,
    /// When the report last consumed arrived (a report is consumed once).
    seen: Option<Instant>,
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for WeightedRoundRobin {
    /// The same settings, with no weights remembered and the sequence where this one is.
    fn clone(&self) -> Self {
        WeightedRoundRobin {
            blackout_period: self.blackout_period,
            weight_expiration_period: self.weight_expiration_period,
            weight_update_period: self.weight_update_period,
            error_utilization_penalty: self.error_utilization_penalty,
            metric_names: self.metric_names.clone(),
            sequence: AtomicU32::new(self.sequence.load(Ordering::Relaxed)),
            state: Mutex::default(),
        }
    }
}

impl WeightedRoundRobin {
    /// gRPC's defaults: blackout 10 s, expiration 3 min, update every 1 s, error penalty
    /// 1.0, utilization from `application_utilization` or `cpu_utilization`.
    pub fn new() -> Self {
        WeightedRoundRobin {
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
            metric_names: Vec::new(),
            sequence: AtomicU32::new(0),
            state: Mutex::default(),
        }
    }

    /// How long an endpoint must report usable weights before its weight is used (default
    /// 10 s). Zero uses a weight from its first report.
    pub fn blackout_period(mut self, period: Duration) -> Self {
        self.blackout_period = period;
        self
    }

    /// How long a weight stays valid without a new report (default 3 min).
    pub fn weight_expiration_period(mut self, period: Duration) -> Self {
        self.weight_expiration_period = period;
        self
    }

    /// How often the schedule is rebuilt from the latest weights (default 1 s; below
    /// 100 ms it is raised to 100 ms, as gRPC does).
    pub fn weight_update_period(mut self, period: Duration) -> Self {
        self.weight_update_period = period;
        self
    }

    /// How much errors weigh: `eps / qps × penalty` is added to the utilization (default
    /// 1.0; 0 ignores errors). Negative or NaN fails [`validate`](Strategy::validate).
    pub fn error_utilization_penalty(mut self, penalty: f64) -> Self {
        self.error_utilization_penalty = penalty;
        self
    }

    /// Metrics to take the utilization from when `application_utilization` is 0 (Envoy's
    /// `metric_names_for_computing_utilization`): `named_metrics.<name>` or
    /// `utilization.<name>` (a bare name is a named metric); the largest of those present
    /// counts. Without them, or when none is above 0, `cpu_utilization` counts.
    pub fn metric_names_for_computing_utilization<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.metric_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// The weight a report gives its endpoint (0: the report is unusable), by the formula of
    /// the [module docs](self) with this strategy's penalty and metric names.
    pub fn weight_of(&self, report: &LoadReport) -> f64 {
        let qps = report.rps_fractional;
        let utilization = report.utilization_for_weight(&self.metric_names);
        if !(qps.is_finite() && utilization.is_finite() && qps > 0.0 && utilization > 0.0) {
            return 0.0;
        }
        let penalty = if report.eps > 0.0 && self.error_utilization_penalty > 0.0 {
            report.eps / qps * self.error_utilization_penalty
        } else {
            0.0
        };
        let weight = qps / (utilization + penalty);
        if weight.is_finite() {
            weight
        } else {
            0.0
        }
    }

    /// Folds the endpoint's latest report into its history and returns the weight to use
    /// now (0: none).
    fn current_weight(&self, state: &mut EndpointWeight, load: &Load, now: Instant) -> f64 {
        if let Some(received) = load.latest_report() {
            if state.seen != Some(received.received_at) {
                state.seen = Some(received.received_at);
                let weight = self.weight_of(&received.report);
                if weight > 0.0 {
                    let at = received.received_at;
                    let expired = state.last_update.is_some_and(|last| {
                        at.saturating_duration_since(last) >= self.weight_expiration_period
                    });
                    if expired {
                        state.non_empty_since = None;
                    }
                    state.non_empty_since.get_or_insert(at);
                    state.weight = weight;
                    state.last_update = Some(at);
                }
            }
        }
        let Some(last) = state.last_update else {
            return 0.0;
        };
        if now.saturating_duration_since(last) >= self.weight_expiration_period {
            state.non_empty_since = None;
            return 0.0;
        }
        match state.non_empty_since {
            Some(since)
                if self.blackout_period.is_zero()
                    || now.saturating_duration_since(since) >= self.blackout_period =>
            {
                state.weight
            }
            _ => 0.0,
        }
    }
}

/// The schedule of one rebuild.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The weight each endpoint had at the rebuild (0: none usable).
    weights: Box<[f64]>,
    /// `None`: round robin (fewer than two usable weights).
    stride: Option<StaticStride>,
}

impl Schedule {
    /// The weight each endpoint had when the schedule was built, in endpoint order (0 for
    /// an endpoint without a usable weight, which gets the mean).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Whether the schedule is plain round robin (fewer than two usable weights).
    pub fn is_round_robin(&self) -> bool {
        self.stride.is_none()
    }

    /// The scaled weights of the stride scheduler (see [`StaticStride::weights`]), unless
    /// the schedule is round robin.
    pub fn scaled_weights(&self) -> Option<&[u16]> {
        self.stride.as_ref().map(StaticStride::weights)
    }
}

impl Strategy for WeightedRoundRobin {
    type Table = Schedule;

    fn build(&self, endpoints: &Endpoints<'_>) -> Schedule {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(endpoints.len());
        let weights: Box<[f64]> = (0..endpoints.len())
            .map(|i| {
                let load = endpoints.load_handle(i);
                let key = Arc::as_ptr(load) as usize;
                let mut remembered = match state.remove(&key) {
                    Some(r) if r.load.strong_count() > 0 => r,
                    _ => Remembered {
                        load: Arc::downgrade(load),
                        weight: EndpointWeight::default(),
                    },
                };
                let weight = self.current_weight(&mut remembered.weight, load, now);
                #[cfg(feature = "metrics")]
                if let Some(metrics) = load.metrics() {
                    metrics.wrr_weight(weight);
                }
                kept.insert(key, remembered);
                weight
            })
            .collect();
        // Endpoints that left the set (or became ineligible) are forgotten: when they
        // return, the blackout applies again, as when gRPC reconnects a subchannel.
        *state = kept;
        // With one usable weight the others would take it as their mean: round robin.
        let usable = weights.iter().filter(|&&w| w > 0.0).count();
        Schedule {
            stride: (usable >= 2).then(|| StaticStride::new(&weights)).flatten(),
            weights,
        }
    }

    #[inline]
    fn pick(&self, table: &Schedule, endpoints: &Endpoints<'_>, _cx: &Context<'_>) -> usize {
        match &table.stride {
            Some(stride) => stride.pick(&self.sequence),
            None => self.sequence.fetch_add(1, Ordering::Relaxed) as usize % endpoints.len(),
        }
    }

    fn load_reports(&self) -> bool {
        true
    }

    fn rebuild_every(&self) -> Option<Duration> {
        Some(self.weight_update_period.max(MIN_UPDATE_PERIOD))
    }

    fn validate(&self) -> Result<(), BuildError> {
        let penalty = self.error_utilization_penalty;
        BuildError::reject_if(
            !(penalty.is_finite() && penalty >= 0.0),
            "WeightedRoundRobin::error_utilization_penalty",
            penalty,
            "a finite number at least 0",
        )
    }
}
