//! Slow start: a new or recovered endpoint ramps up to its full weight instead of taking
//! its whole share at once, so cold caches, JIT warm-up and connection pools can fill.
//!
//! During the window the endpoint's effective weight is (Envoy's slow-start formula)
//!
//! ```text
//! weight × max(min_percent / 100, (t / window) ^ (1 / aggression))
//! ```
//!
//! where `t` is the time since the endpoint was added or came back (from unhealthy or
//! ejected). Aggression 1.0 ramps linearly; above 1 the ramp rises fast then flattens,
//! below 1 it starts slow. `min_percent` (default 10) keeps a starting endpoint from
//! getting no traffic at all.
//!
//! The balancer rebuilds its strategy tables as the ramp progresses (in 20 steps over
//! the window, off the hot path). The endpoints present when the balancer starts do not
//! ramp: they all start together. Slow start works with the strategies that honour
//! weights: round robin, random and least request. Peak-EWMA ignores weights, so it ignores
//! slow start, and so do the consistent-hashing strategies: they place keys by weight, so
//! a ramping weight would move keys to and from the endpoint at every step (Envoy, too,
//! offers slow start only for round robin and least request).

use std::time::Duration;

use crate::error::BuildError;

/// Slow-start settings. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub(crate) window: Duration,
    pub(crate) aggression: f64,
    pub(crate) min_percent: f64,
}

impl SlowStart {
    /// Ramps over `window`, linearly (aggression 1.0), from at least 10 % of the weight.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: 1.0,
            min_percent: 10.0,
        }
    }

    /// The ramp's shape: the exponent is `1 / aggression`. Must be finite and > 0.
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// The share of the weight an endpoint gets at the start, in percent (default 10).
    /// Must be within 1..=100: with 0 a starting endpoint could get no traffic at all.
    pub fn min_percent(mut self, percent: f64) -> Self {
        self.min_percent = percent;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.window.is_zero(),
            "SlowStart::window",
            self.window,
            "greater than zero",
        )?;
        BuildError::reject_if(
            !(self.aggression.is_finite() && self.aggression > 0.0),
            "SlowStart::aggression",
            self.aggression,
            "finite and greater than zero",
        )?;
        BuildError::reject_if(
            !(1.0..=100.0).contains(&self.min_percent),
            "SlowStart::min_percent",
            self.min_percent,
            "within 1..=100",
        )?;
        Ok(())
    }

    /// The share of its weight an endpoint gets `elapsed` after it started, in `(0, 1]`.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression)
            .max(self.min_percent / 100.0)
            .min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ramp_with_a_floor() {
        let s = SlowStart::new(Duration::from_secs(10));
        assert_eq!(s.factor(Duration::ZERO), 0.1);
        assert_eq!(s.factor(Duration::from_millis(500)), 0.1);
        assert!((s.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(Duration::from_secs(10)), 1.0);
        assert_eq!(s.factor(Duration::from_secs(60)), 1.0);
    }

    #[test]
    fn aggression_bends_the_ramp() {
        let s = SlowStart::new(Duration::from_secs(10)).aggression(2.0);
        // (0.25)^(1/2) = 0.5
        assert!((s.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for s in [
            SlowStart::new(Duration::ZERO),
            SlowStart::new(Duration::from_secs(1)).aggression(0.0),
            SlowStart::new(Duration::from_secs(1)).aggression(f64::NAN),
            SlowStart::new(Duration::from_secs(1)).min_percent(0.0),
            SlowStart::new(Duration::from_secs(1)).min_percent(101.0),
        ] {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
