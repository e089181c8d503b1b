//! What a scenario is made of: the backends, the load in [`Step`]s, the membership changes,
//! the keys ([`Zipf`]), the contestants, and the [`Options`] that size it. The scenarios
//! themselves are in `scenarios/`.

use std::time::Duration;

use super::backend::BackendSpec;
use super::contestants::Contestant;
use super::rng::SimRng;

/// A period of constant arrival rate.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step ends here (scenario time).
    pub until: Duration,
    /// Requests per second.
    pub rate: f64,
    /// How the step is named in tables ("0.85×").
    pub label: String,
}

/// A discovery change: `backend` is listed (inserted) or not (removed) from `at` on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Membership {
    pub at: Duration,
    pub backend: usize,
    pub listed: bool,
}

/// Zipf-distributed keys `0..n`: key `k` has probability proportional to `1 / (k + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    pub s: f64,
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { s, cdf }
    }

    pub fn keys(&self) -> usize {
        self.cdf.len()
    }

    /// The share of requests that carry key `k`.
    pub fn share(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }

    pub fn sample(&self, rng: &mut SimRng) -> u64 {
        let u = rng.unit();
        self.cdf
            .partition_point(|c| *c <= u)
            .min(self.cdf.len() - 1) as u64
    }
}

/// How scenarios are sized: full length by default, shorter for the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub seed: u64,
    /// Multiplies the duration and every time in the scenario's timeline (not latencies,
    /// deadlines or the speed changes of noisy neighbours).
    pub time_scale: f64,
    /// Multiplies the request rate; where backends have slots, their slot counts too
    /// (rounded, at least 1), and the rates follow the resulting capacity, so the load
    /// relative to capacity stays the same.
    pub rate_scale: f64,
    /// Independent balancers (clients), each sent a random share of the requests; every
    /// client sees only its own requests, as separate processes would. 1 by default.
    pub clients: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            time_scale: 1.0,
            rate_scale: 1.0,
            clients: 1,
        }
    }
}

/// A scenario: backends, load, timeline, contestants.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// One line on what it models.
    pub title: String,
    /// Details: backends, load, timeline, what to look for.
    pub notes: Vec<String>,
    pub duration: Duration,
    pub deadline: Duration,
    pub backends: Vec<BackendSpec>,
    pub steps: Vec<Step>,
    pub keys: Option<Zipf>,
    pub membership: Vec<Membership>,
    pub contestants: Vec<Contestant>,
    pub seed: u64,
    /// The width of the time bins of the load-over-time plot.
    pub bin: Duration,
    /// Requests per second all backends serve at speed 1, where they have slots.
    pub capacity: Option<f64>,
    /// Independent balancers per contestant (see [`Options::clients`]).
    pub clients: usize,
    /// Whether backends attach load reports to their answers (feature `orca`).
    pub reports: bool,
}

impl Scenario {
    pub(super) fn bin_ms(&self) -> u64 {
        (self.bin.as_millis() as u64).max(1)
    }

    /// Keeps only the contestants `keep` accepts.
    pub fn only(mut self, keep: impl Fn(&Contestant) -> bool) -> Self {
        self.contestants.retain(|c| keep(c));
        self
    }
}
