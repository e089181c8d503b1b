//! Least request: the power of two choices over in-flight counts, weighted.
//!
//! # The algorithm
//!
//! Draw `choices` endpoints uniformly at random (two by default, distinct) and send the
//! request to the one with the highest score
//!
//! ```text
//! score = weight / (in_flight + 1) ^ bias
//! ```
//!
//! With equal weights this is plain "fewest requests in flight wins".
//!
//! **Failures count as load.** An endpoint that fails fast has few requests in flight, so a
//! plain least-request balancer sends it *more* traffic the faster it fails (tower's
//! `PendingRequests`, Envoy's and gRPC's least request all do). Here each failure adds 1 to
//! the endpoint's [failure penalty](crate::endpoint::Load::failure_penalty), which fades
//! exponentially with time constant [`failure_penalty`](LeastRequest::failure_penalty)
//! (1 s), and the score counts it as requests in flight:
//!
//! ```text
//! score = weight / (in_flight + penalty + 1) ^ bias
//! ```
//!
//! An endpoint that fails λ requests a second carries a penalty of about λ × 1 s, as if
//! each failure had taken a second to answer, the same failure penalty peak-EWMA applies
//! to latency. A fast-failing endpoint therefore draws less traffic than a healthy one
//! before outlier detection ejects it, and draws its share again about 5 s after its last
//! failure (the penalty is then below 0.01, which counts as none).
//!
//! Two random choices
//! already avoid the herd behaviour of always choosing the global minimum while keeping the
//! maximum load exponentially closer to the mean than one random choice (Mitzenmacher, "The
//! Power of Two Choices in Randomized Load Balancing", 2001). The weighted score and the
//! default bias of 1.0 follow Envoy's least-request balancer; gRPC and Envoy default to two
//! choices. A bias of 0 ignores load and compares weights only.
//!
//! [`LeastRequest::full_scan`] scores every endpoint instead (O(n) per pick) and starts the
//! scan at a random position so that ties spread evenly.
//!
//! With bias 1.0 and no penalty the comparison is exact integer arithmetic
//! (`w_a × (in_b + 1)` against `w_b × (in_a + 1)` in 128 bits); other biases, and endpoints
//! with a penalty, use `f64`.

use std::time::Duration;

use super::rng::Rng;
use super::{Context, Endpoints, Strategy};
use crate::error::BuildError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choices {
    Sample(usize),
    All,
}

/// Least request with random choices. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LeastRequest {
    choices: Choices,
    bias: f64,
    failure_penalty: Duration,
    rng: Rng,
}

impl Default for LeastRequest {
    /// Two choices, bias 1.0, failure penalty 1 s.
    fn default() -> Self {
        LeastRequest {
            choices: Choices::Sample(2),
            bias: 1.0,
            failure_penalty: Duration::from_secs(1),
            rng: Rng::default(),
        }
    }
}

impl LeastRequest {
    /// Two choices, bias 1.0, failure penalty 1 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a failure counts as a request in flight: the time constant with which an
    /// endpoint's [failure penalty](crate::endpoint::Load::failure_penalty) fades. Default
    /// 1 s (peak-EWMA's failure penalty). Zero turns the penalty off: failures then weigh
    /// nothing, and a fast-failing endpoint draws more traffic than a healthy one.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Compares `n` random endpoints per pick. Two choices are distinct; with more, draws
    /// may repeat. When `n` is at least the number of endpoints, every endpoint is scored
    /// (as with [`full_scan`](Self::full_scan)), so a pick never costs more than a scan. `n = 1` is weighted-by-nothing random choice. `n = 0` is rejected when the
    /// balancer is built.
    pub fn choices(mut self, n: usize) -> Self {
        self.choices = Choices::Sample(n);
        self
    }

    /// Scores every endpoint on each pick instead of sampling.
    pub fn full_scan(mut self) -> Self {
        self.choices = Choices::All;
        self
    }

    /// The exponent applied to `in_flight + 1`. Must be finite and at least 0; the balancer
    /// rejects other values when it is built.
    pub fn bias(mut self, bias: f64) -> Self {
        self.bias = bias;
        self
    }

    /// Draws from one reproducible sequence seeded with `seed` instead of per-thread
    /// generators. Single-threaded pick sequences then repeat exactly, which is what tests
    /// want; concurrent picks contend on one atomic. The balancer seeds its own random
    /// choices from it too (see [`Strategy::seed`]), so its whole run repeats.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Rng::seeded(seed);
        self
    }

    /// Scores every endpoint, starting at a random one so that ties spread evenly.
    fn scan(&self, table: &WeightInfo, endpoints: &Endpoints<'_>, cx: &Context) -> usize {
        let n = endpoints.len();
        let start = self.rng.below(n);
        let mut best = start;
        for c in (start + 1..n).chain(0..start) {
            if self.better(table, endpoints, c, best, cx) {
                best = c;
            }
        }
        best
    }

    /// Whether endpoint `a` scores strictly higher than endpoint `b`.
    #[inline]
    fn better(
        &self,
        table: &WeightInfo,
        e: &Endpoints<'_>,
        a: usize,
        b: usize,
        cx: &Context,
    ) -> bool {
        if self.bias == 0.0 {
            // (in_flight + 1)^0 = 1: only the weights count.
            return e.weight(a) > e.weight(b);
        }
        let (load_a, load_b) = (e.load(a), e.load(b));
        if load_a.has_failure_penalty() || load_b.has_failure_penalty() {
            return self.better_penalized(table, e, a, b, cx);
        }
        let (la, lb) = (load_a.in_flight(), load_b.in_flight());
        if table.equal_weights {
            // For any positive bias the score falls as the load rises.
            return la < lb;
        }
        if self.bias == 1.0 {
            let (wa, wb) = (u128::from(e.weight(a)), u128::from(e.weight(b)));
            wa * (u128::from(lb) + 1) > wb * (u128::from(la) + 1)
        } else {
            self.score(e.weight(a), la as f64) > self.score(e.weight(b), lb as f64)
        }
    }

    /// `weight / (load + 1)^bias`, in `f64`.
    #[inline]
    fn score(&self, weight: u32, load: f64) -> f64 {
        let divisor = load + 1.0;
        f64::from(weight)
            / if self.bias == 1.0 {
                divisor
            } else {
                divisor.powf(self.bias)
            }
    }

    /// [`better`](Self::better) when either endpoint has a failure penalty: each one's
    /// requests in flight plus its penalty, compared in `f64`.
    #[cold]
    fn better_penalized(
        &self,
        table: &WeightInfo,
        e: &Endpoints<'_>,
        a: usize,
        b: usize,
        cx: &Context,
    ) -> bool {
        let load = |i: usize| e.load(i).in_flight() as f64 + e.load(i).failure_penalty(cx);
        let (load_a, load_b) = (load(a), load(b));
        if table.equal_weights {
            return load_a < load_b;
        }
        self.score(e.weight(a), load_a) > self.score(e.weight(b), load_b)
    }
}

/// What least request precomputes: whether weights can be ignored.
#[derive(Debug, Clone, Copy)]
pub struct WeightInfo {
    equal_weights: bool,
}

impl Strategy for LeastRequest {
    type Table = WeightInfo;

    fn build(&self, endpoints: &Endpoints<'_>) -> WeightInfo {
        let first = endpoints.weight(0);
        WeightInfo {
            equal_weights: endpoints.weights().all(|w| w == first),
        }
    }

    #[inline]
    fn pick(&self, table: &WeightInfo, endpoints: &Endpoints<'_>, cx: &Context) -> usize {
        let n = endpoints.len();
        if n == 1 {
            return 0;
        }
        match self.choices {
            Choices::Sample(2) => {
                let (a, b) = self.rng.two_distinct(n);
                if self.better(table, endpoints, b, a, cx) {
                    b
                } else {
                    a
                }
            }
            Choices::Sample(k) if k >= n => self.scan(table, endpoints, cx),
            Choices::Sample(k) => {
                let mut best = self.rng.below(n);
                for _ in 1..k {
                    let c = self.rng.below(n);
                    if self.better(table, endpoints, c, best, cx) {
                        best = c;
                    }
                }
                best
            }
            Choices::All => self.scan(table, endpoints, cx),
        }
    }

    fn failure_penalty(&self) -> Option<Duration> {
        (!self.failure_penalty.is_zero()).then_some(self.failure_penalty)
    }

    fn seed(&self) -> Option<u64> {
        self.rng.seed()
    }

    fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.choices == Choices::Sample(0),
            "LeastRequest::choices",
            0,
            "at least 1",
        )?;
        BuildError::reject_if(
            !self.bias.is_finite() || self.bias < 0.0,
            "LeastRequest::bias",
            self.bias,
            "finite and at least 0",
        )?;
        Ok(())
    }
}
