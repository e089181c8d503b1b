//! Peak-EWMA: two random choices compared by expected latency × load.
//!
//! # The algorithm
//!
//! Each endpoint keeps a latency estimate that jumps up to any slower sample at once (the
//! *peak*) and otherwise follows an exponentially weighted moving average with time constant
//! `decay`. On each pick, two distinct random endpoints are compared by
//!
//! ```text
//! cost = rtt_estimate × (in_flight + 1)
//! ```
//!
//! and the cheaper one wins. Before comparing, an estimate is decayed toward zero by
//! `exp(-idle / decay)` for the time since its last update, so an endpoint that was slow a
//! while ago gets tried again.
//!
//! An endpoint without samples costs nothing while it is idle, so a new endpoint receives a
//! request at once instead of waiting behind endpoints whose measured latency is lower than
//! any guess; while its first requests are in flight it counts as `default_rtt`
//! (Finagle treats unmeasured endpoints the same way; tower's `PeakEwma` uses `default_rtt`
//! even when idle, which can starve a new endpoint behind fast ones).
//!
//! This is Finagle's `PeakEwma` load metric, as used by linkerd (default RTT 30 ms, decay
//! 10 s). Unlike tower's `PeakEwma`, failures do not count as fast successes: a request the
//! classifier judges a failure (an error, an HTTP 5xx or 429, or a failing gRPC status with
//! the default classifier) counts as a sample of at least `failure_penalty` (1 s by
//! default), so an endpoint that fails fast is avoided instead of favoured.
//!
//! The balancer reads the clock twice per request for this strategy: when it calls the
//! endpoint and when the response completes. The pick itself needs no clock, because the
//! decay of two measured endpoints compares their update times (only a comparison with an
//! endpoint that has no sample yet reads it).

use std::time::Duration;

use super::rng::Rng;
use super::{Context, Endpoints, LatencyTracking, Strategy};
use crate::error::BuildError;

/// Peak-EWMA with two random choices. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PeakEwma {
    default_rtt_ns: f64,
    /// `tracking.decay` in nanoseconds, converted once (u128 to f64 is slow).
    decay_ns: f64,
    tracking: LatencyTracking,
    rng: Rng,
}

impl Default for PeakEwma {
    /// Default RTT 30 ms, decay 10 s, failure penalty 1 s.
    fn default() -> Self {
        let tracking = LatencyTracking::default();
        PeakEwma {
            default_rtt_ns: 30e6,
            decay_ns: tracking.decay.as_nanos() as f64,
            tracking,
            rng: Rng::default(),
        }
    }
}

impl PeakEwma {
    /// Default RTT 30 ms, decay 10 s, failure penalty 1 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The estimate used for an endpoint that has no sample yet but has requests in flight.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt_ns = rtt.as_nanos() as f64;
        self
    }

    /// The EWMA time constant. Zero is rejected when the balancer is built.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.tracking.decay = decay;
        self.decay_ns = decay.as_nanos() as f64;
        self
    }

    /// The least latency a failed request counts as.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.tracking.failure_penalty = penalty;
        self
    }

    /// Draws from one reproducible sequence (see
    /// [`LeastRequest::with_seed`](super::LeastRequest::with_seed)).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Rng::seeded(seed);
        self
    }

    /// Whether endpoint `b` is strictly cheaper than endpoint `a` now.
    ///
    /// Both estimates decay by `exp(-idle / decay)`, so instead of two exponentials the
    /// comparison scales `b`'s undecayed cost by one: `exp((idle_a - idle_b) / decay)`, and
    /// `idle_a - idle_b` is the difference of their update times, whatever the time is now.
    /// Only a comparison with an unmeasured endpoint needs the clock.
    #[inline]
    fn cheaper(&self, endpoints: &Endpoints<'_>, b: usize, a: usize, cx: &Context) -> bool {
        let (la, lb) = (endpoints.load(a), endpoints.load(b));
        let (ia, ib) = (la.in_flight() as f64 + 1.0, lb.in_flight() as f64 + 1.0);
        let ((ea, ta), (eb, tb)) = (la.rtt_raw(), lb.rtt_raw());
        match (ea == 0.0, eb == 0.0) {
            // Unmeasured endpoints: free while idle, `default_rtt` while busy.
            (true, true) => ib < ia,
            (true, false) | (false, true) => {
                let unmeasured = |i: f64| {
                    if i == 1.0 {
                        0.0
                    } else {
                        self.default_rtt_ns * i
                    }
                };
                let now_ns = cx.now_nanos();
                let cost_a = if ea == 0.0 {
                    unmeasured(ia)
                } else {
                    self.decayed(ea, ta, now_ns) * ia
                };
                let cost_b = if eb == 0.0 {
                    unmeasured(ib)
                } else {
                    self.decayed(eb, tb, now_ns) * ib
                };
                cost_b < cost_a
            }
            (false, false) => {
                // idle_a - idle_b = (now - ta) - (now - tb) = tb - ta.
                let d = (tb as f64 - ta as f64) / self.decay_ns;
                // e^d to within 5e-7 when |d| is small, which it is under steady traffic.
                let scale = if d.abs() < 1e-3 { 1.0 + d } else { d.exp() };
                eb * ib * scale < ea * ia
            }
        }
    }

    #[inline]
    fn decayed(&self, estimate: f64, at: u64, now_ns: u64) -> f64 {
        estimate * crate::endpoint::decay_weight(now_ns.saturating_sub(at), self.decay_ns)
    }
}

impl Strategy for PeakEwma {
    type Table = ();

    fn build(&self, _endpoints: &Endpoints<'_>) {}

    #[inline]
    fn pick(&self, _table: &(), endpoints: &Endpoints<'_>, cx: &Context) -> usize {
        let n = endpoints.len();
        if n == 1 {
            return 0;
        }
        let (a, b) = self.rng.two_distinct(n);
        if self.cheaper(endpoints, b, a, cx) {
            b
        } else {
            a
        }
    }

    fn seed(&self) -> Option<u64> {
        self.rng.seed()
    }

    fn latency(&self) -> Option<LatencyTracking> {
        Some(self.tracking)
    }

    fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.tracking.decay.is_zero(),
            "PeakEwma::decay",
            self.tracking.decay,
            "greater than zero",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Load;
    use crate::strategy::{Context, EndpointList};
    use std::sync::Arc;

    /// The cost as the module docs define it, computed directly.
    fn naive_cost(p: &PeakEwma, load: &Load, now_ns: u64) -> f64 {
        let in_flight = load.in_flight() as f64;
        let (est, at) = load.rtt_raw();
        if est == 0.0 {
            return if in_flight == 0.0 {
                0.0
            } else {
                p.default_rtt_ns * (in_flight + 1.0)
            };
        }
        est * (-(now_ns.saturating_sub(at) as f64) / p.decay_ns).exp() * (in_flight + 1.0)
    }

    #[test]
    fn one_exponential_comparison_agrees_with_the_definition() {
        let p = PeakEwma::new();
        let rng = super::super::rng::Rng::seeded(42);
        let mut disagreements = 0;
        for _ in 0..20_000 {
            let mut list = EndpointList::default();
            for _ in 0..2 {
                let load = Arc::new(Load::default());
                if rng.below(4) != 0 {
                    let sample = (1 + rng.below(50_000_000)) as f64;
                    load.observe_rtt(sample, rng.below(30_000_000_000) as u64, p.decay_ns);
                }
                for _ in 0..rng.below(4) {
                    load.start();
                }
                list.push(1, load);
            }
            let e = list.endpoints();
            let now = 30_000_000_000 + rng.below(1_000_000_000) as u64;
            let fast = p.cheaper(&e, 1, 0, &Context::at_nanos(now));
            let (ca, cb) = (
                naive_cost(&p, e.load(0), now),
                naive_cost(&p, e.load(1), now),
            );
            // Only near-ties may differ, by rounding.
            if fast != (cb < ca) && (ca - cb).abs() > 1e-6 * ca.max(cb) {
                disagreements += 1;
            }
        }
        assert_eq!(disagreements, 0);
    }
}
