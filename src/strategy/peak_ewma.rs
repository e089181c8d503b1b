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
//! classifier judges a failure (an error, or an HTTP 5xx or 429 with the default classifier)
//! counts as a sample of at least `failure_penalty` (1 s by default), so an endpoint that
//! fails fast is avoided instead of favoured.
//!
//! The balancer reads the clock twice per request for this strategy: once when it picks
//! (that instant is also the request's start) and once when the response completes.

use std::time::Duration;

use super::rng::Rng;
use super::{Context, Endpoints, LatencyTracking, Strategy};
use crate::error::BuildError;

/// Peak-EWMA with two random choices. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PeakEwma {
    default_rtt_ns: f64,
    tracking: LatencyTracking,
    rng: Rng,
}

impl Default for PeakEwma {
    /// Default RTT 30 ms, decay 10 s, failure penalty 1 s.
    fn default() -> Self {
        PeakEwma {
            default_rtt_ns: 30e6,
            tracking: LatencyTracking::default(),
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

    #[inline]
    fn cost(&self, endpoints: &Endpoints<'_>, i: usize, now_ns: u64) -> f64 {
        let load = endpoints.load(i);
        let in_flight = load.in_flight();
        let (est, at) = load.rtt_raw();
        let rtt = if est == 0.0 {
            if in_flight == 0 {
                // Never measured and idle: free, so a new endpoint gets its first request.
                return 0.0;
            }
            self.default_rtt_ns
        } else {
            let idle = now_ns.saturating_sub(at) as f64;
            est * (-idle / self.tracking.decay.as_nanos() as f64).exp()
        };
        rtt * (in_flight as f64 + 1.0)
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
        if self.cost(endpoints, b, cx.now_ns) < self.cost(endpoints, a, cx.now_ns) {
            b
        } else {
            a
        }
    }

    fn latency(&self) -> Option<LatencyTracking> {
        Some(self.tracking)
    }

    fn validate(&self) -> Result<(), BuildError> {
        if self.tracking.decay.is_zero() {
            return Err(BuildError::InvalidConfig(
                "peak-EWMA decay must be greater than zero",
            ));
        }
        Ok(())
    }
}
