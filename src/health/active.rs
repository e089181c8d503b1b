//! Active health checks: probing each endpoint on a schedule.
//!
//! The background task probes every endpoint every [`interval`](ActiveChecks::interval)
//! (default 2 s, HAProxy's `inter`), give or take a [jitter](ActiveChecks::jitter) so a
//! fleet of balancers does not probe in step. Each probe has a
//! [timeout](ActiveChecks::timeout) (default 1 s); no answer in time is a failure.
//!
//! - A **new endpoint** is probed at once. Its first result decides its state (one success
//!   marks it healthy, as in Envoy; one failure marks it unhealthy), and an event reports
//!   it either way. Until then it is [`Initial::Healthy`] (takes traffic, the default) or
//!   [`Initial::Unhealthy`] (takes none until its first success; in panic mode, none
//!   until its first answer).
//! - After that, a healthy endpoint becomes unhealthy after [`fall`](ActiveChecks::fall)
//!   failures in a row (default 3) and an unhealthy one healthy after
//!   [`rise`](ActiveChecks::rise) successes in a row (default 2), HAProxy's defaults.
//!   An endpoint that could not be reached (its probe was refused a connection, or its host
//!   or network was unreachable; see [`unreachable`](super::unreachable)) is healthy again
//!   at its first successful probe: a process that was not listening and now is has
//!   restarted, which needs no second look.
//! - A successful probe after a failed one also ends an
//!   [outlier ejection](super::outlier) early.
//! - At most [`concurrency`](ActiveChecks::concurrency) probes (default 64) run at once;
//!   the others wait their turn.

use std::time::Duration;

use crate::error::BuildError;

/// What a new endpoint is until its first probe answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Initial {
    /// It takes traffic at once (the default).
    #[default]
    Healthy,
    /// It takes no traffic until its first probe succeeds (in panic mode, until its first
    /// probe answers).
    Unhealthy,
}

/// Active health-check settings. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActiveChecks {
    pub(crate) interval: Duration,
    pub(crate) jitter: f64,
    pub(crate) timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
    pub(crate) initial: Initial,
    pub(crate) concurrency: usize,
}

impl Default for ActiveChecks {
    fn default() -> Self {
        ActiveChecks {
            interval: Duration::from_secs(2),
            jitter: 0.1,
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            initial: Initial::Healthy,
            concurrency: 64,
        }
    }
}

impl ActiveChecks {
    /// Every 2 s (± 10 %), timeout 1 s, rise 2, fall 3, new endpoints healthy, 64 probes
    /// at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time between the probes of one endpoint. Must be > 0.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Spreads each interval uniformly over `interval × (1 ± jitter)`. Within 0..=1;
    /// default 0.1. 0 probes exactly every interval.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// How long a probe may take. Must be > 0.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Successes in a row that make an unhealthy endpoint healthy (one, for an endpoint
    /// whose last failed probe could not reach it). At least 1.
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// Failures in a row that make a healthy endpoint unhealthy. At least 1.
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// What a new endpoint is until its first probe answers.
    pub fn initial(mut self, initial: Initial) -> Self {
        self.initial = initial;
        self
    }

    /// The most probes running at once. At least 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.interval.is_zero(),
            "ActiveChecks::interval",
            self.interval,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.timeout.is_zero(),
            "ActiveChecks::timeout",
            self.timeout,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.rise == 0,
            "ActiveChecks::rise",
            self.rise,
            "at least 1",
        )?;
        BuildError::reject_if(
            self.fall == 0,
            "ActiveChecks::fall",
            self.fall,
            "at least 1",
        )?;
        BuildError::reject_if(
            !(0.0..=1.0).contains(&self.jitter),
            "ActiveChecks::jitter",
            self.jitter,
            "within 0..=1",
        )?;
        BuildError::reject_if(
            self.concurrency == 0,
            "ActiveChecks::concurrency",
            self.concurrency,
            "at least 1",
        )?;
        Ok(())
    }

    /// The pause before the next probe, given a uniform random number in `[0, 1)`.
    pub(crate) fn next_delay(&self, unit: f64) -> Duration {
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        // `Duration::mul_f64` panics past `Duration::MAX`; a huge interval means "rarely".
        Duration::try_from_secs_f64(self.interval.as_secs_f64() * spread.max(0.0))
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_rejected() {
        for s in [
            ActiveChecks::new().interval(Duration::ZERO),
            ActiveChecks::new().timeout(Duration::ZERO),
            ActiveChecks::new().rise(0),
            ActiveChecks::new().fall(0),
            ActiveChecks::new().jitter(1.5),
            ActiveChecks::new().concurrency(0),
        ] {
            assert!(s.validate().is_err(), "{s:?}");
        }
        assert_eq!(ActiveChecks::new().validate(), Ok(()));
    }

    #[test]
    fn jitter_spreads_the_interval() {
        let s = ActiveChecks::new()
            .interval(Duration::from_secs(2))
            .jitter(0.1);
        assert_eq!(s.next_delay(0.0), Duration::from_millis(1800));
        assert_eq!(s.next_delay(0.5), Duration::from_secs(2));
        assert!(s.next_delay(0.999_999) < Duration::from_millis(2200));
        assert_eq!(s.jitter(0.0).next_delay(0.9), Duration::from_secs(2));
        // No overflow panic at the largest interval.
        let max = ActiveChecks::new().interval(Duration::MAX);
        assert_eq!(max.next_delay(0.999), Duration::MAX);
        assert!(max.next_delay(0.0) > Duration::from_secs(1 << 62));
    }
}
