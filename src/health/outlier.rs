//! Passive outlier detection: ejecting endpoints whose responses fail, judged from the
//! balancer's own classification of every response. **On by default**
//! ([`Builder::outlier_detection`](crate::Builder::outlier_detection) changes the settings
//! or, with `None`, turns it off).
//!
//! Three detectors, with Envoy's thresholds (`outlier_detection` in Envoy's cluster
//! configuration; gRPC's outlier detection uses the same rules):
//!
//! - **Consecutive failures** (default 5). Counted on the completion path, so the endpoint
//!   is ejected the moment its fifth failure in a row is recorded: no request picks it
//!   after that. With requests already in flight, those may still fail.
//! - **Success rate**, every [`interval`](OutlierDetection::interval) (10 s): among the
//!   endpoints with at least `request_volume` (100) requests in the interval, if there are
//!   at least `minimum_hosts` (5), those whose success rate is below
//!   `mean - stdev_factor × stdev` (factor 1.9) are ejected.
//! - **Failure percentage**, every interval: among the endpoints with at least
//!   `request_volume` (50) requests, if there are at least `minimum_hosts` (5), those whose
//!   failures are at least `threshold` percent (85) of their requests are ejected.
//!
//! An ejection lasts `base_ejection × times ejected` (30 s, 60 s, ...), capped at
//! `max_ejection` (300 s). Each interval that an endpoint spends wholly back in service
//! (not ejected, no ejection ending in it, not on probation) lowers its count of times
//! ejected by one, so an endpoint that stays well is forgiven. With
//! [active checks](super::active), an ejection also ends at the first successful probe
//! after a failed one: the probe saw the endpoint fail and come back (a restarted process,
//! say), so it does not sit out the rest of its ejection time. A probe that never failed
//! (a TCP probe of a server that answers 500) does not end it.
//!
//! # How many endpoints may be ejected
//!
//! Envoy ejects at most 10 % of the endpoints (and at least one), and panic mode sends
//! traffic to every endpoint below 50 % healthy. Those numbers were made for fleets of
//! hundreds; with three endpoints of which two fail they keep one failing endpoint in
//! service for ever, and then panic mode adds the other (a third to two thirds of the
//! requests fail). This crate keeps the protection they give large fleets and drops the
//! harm they do to small ones:
//!
//! - **Failures of answered requests** (5xx, errors, timeouts): at most
//!   [`max_ejection_percent`](OutlierDetection::max_ejection_percent) of the endpoints,
//!   **50 %** by default, rounded up (as Envoy's own check rounds: it ejects while fewer
//!   than the percentage are ejected). With 2 endpoints that is 1; with 3, 2; with 100, 50.
//!   Ejection never takes out more than half of a fleet because of errors that an
//!   overload can cause on every endpoint at once.
//! - **Unreachable endpoints** (the request failed with a connection refused, or the host
//!   or network unreachable; see [`unreachable`](super::unreachable)): not capped. A
//!   request sent there cannot succeed, and no overload makes a process stop listening.
//!   [`cap_unreachable(true)`](OutlierDetection::cap_unreachable) caps them too.
//!
//! Panic mode then never brings an ejected endpoint back while another endpoint can take
//! requests; see [panic mode](super#panic-mode) for the whole rule and a worked example.
//!
//! **Probation.** When an ejection ends the endpoint comes back on probation: it gets a
//! tenth of its weight (or its [slow start](super::SlowStart) ramp, whichever is lower;
//! with a consistent-hashing strategy, its whole weight, so that keys do not move) and
//! a single failure ejects it again, until it has answered `probation_successes` (5)
//! requests in a row successfully, or a whole `interval` (10 s) has passed without a
//! failure: under least request and a light load, a tenth of the weight can mean almost no
//! requests, and the endpoint must not wait for its successes for ever.
//!
//! Failed readiness checks (an endpoint service's `poll_ready` error) count as failures
//! for the consecutive-failure detector. Failures are what the balancer's
//! [classifier](crate::classify) says they are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::error::BuildError;

/// Passive outlier detection settings. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) interval: Duration,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejection_percent: u32,
    pub(crate) cap_unreachable: bool,
    pub(crate) success_rate: Option<SuccessRate>,
    pub(crate) failure_percentage: Option<FailurePercentage>,
    pub(crate) probation_successes: Option<u32>,
}

/// Success-rate ejection settings; see [`OutlierDetection::success_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    /// Fewest endpoints with enough requests for the detector to run. Default 5.
    pub minimum_hosts: usize,
    /// Fewest requests in an interval for an endpoint to be judged. Default 100.
    pub request_volume: u64,
    /// Ejects below `mean - stdev_factor × stdev`. Default 1.9.
    pub stdev_factor: f64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }
}

/// Failure-percentage ejection settings; see [`OutlierDetection::failure_percentage`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentage {
    /// Ejects at or above this percentage of failed requests. Default 85.
    pub threshold: f64,
    /// Fewest endpoints with enough requests for the detector to run. Default 5.
    pub minimum_hosts: usize,
    /// Fewest requests in an interval for an endpoint to be judged. Default 50.
    pub request_volume: u64,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        FailurePercentage {
            threshold: 85.0,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl Default for OutlierDetection {
    /// Envoy's defaults, but for the ejection cap (50 % instead of 10 %, and none for
    /// unreachable endpoints); see the [module docs](self).
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Some(5),
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            cap_unreachable: false,
            success_rate: Some(SuccessRate::default()),
            failure_percentage: Some(FailurePercentage::default()),
            probation_successes: Some(5),
        }
    }
}

impl OutlierDetection {
    /// The defaults; see the [module docs](self).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ejects after `n` failures in a row; `None` turns this detector off. `Some(0)` is
    /// rejected when the balancer is built.
    pub fn consecutive_failures(mut self, n: Option<u32>) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// How often the success-rate and failure-percentage detectors run. Must be > 0.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The first ejection's length; later ones are multiples of it. Must be > 0.
    pub fn base_ejection(mut self, time: Duration) -> Self {
        self.base_ejection = time;
        self
    }

    /// The longest ejection. Must be at least the base ejection time.
    pub fn max_ejection(mut self, time: Duration) -> Self {
        self.max_ejection = time;
        self
    }

    /// The most endpoints ejected at once for failures of answered requests, in percent
    /// of the endpoints that may take requests, rounded up (so at least one, unless this
    /// is 0). Default 50; Envoy's is 10. Unreachable endpoints are ejected beyond it unless
    /// [`cap_unreachable`](Self::cap_unreachable) is set. Over 100 is rejected when the
    /// balancer is built.
    pub fn max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = percent;
        self
    }

    /// Whether ejections of unreachable endpoints (connection refused, host or network
    /// unreachable) count against [`max_ejection_percent`](Self::max_ejection_percent)
    /// (`true`, Envoy's behaviour) or are never held back by it (`false`, the default).
    pub fn cap_unreachable(mut self, cap: bool) -> Self {
        self.cap_unreachable = cap;
        self
    }

    /// Success-rate ejection settings; `None` turns this detector off.
    pub fn success_rate(mut self, settings: Option<SuccessRate>) -> Self {
        self.success_rate = settings;
        self
    }

    /// Failure-percentage ejection settings; `None` turns this detector off.
    pub fn failure_percentage(mut self, settings: Option<FailurePercentage>) -> Self {
        self.failure_percentage = settings;
        self
    }

    /// Successes in a row that end probation; `None` brings an endpoint back at full
    /// weight at once, counting failures in a row from zero. `Some(0)` is rejected when
    /// the balancer is built.
    pub fn probation_successes(mut self, n: Option<u32>) -> Self {
        self.probation_successes = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.consecutive_failures == Some(0),
            "OutlierDetection::consecutive_failures",
            self.consecutive_failures,
            "at least 1 (None turns it off)",
        )?;
        BuildError::reject_if(
            self.interval.is_zero(),
            "OutlierDetection::interval",
            self.interval,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.base_ejection.is_zero(),
            "OutlierDetection::base_ejection",
            self.base_ejection,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.max_ejection < self.base_ejection,
            "OutlierDetection::max_ejection",
            self.max_ejection,
            "at least the base ejection time",
        )?;
        BuildError::reject_if(
            self.max_ejection_percent > 100,
            "OutlierDetection::max_ejection_percent",
            self.max_ejection_percent,
            "at most 100",
        )?;
        BuildError::reject_if(
            self.probation_successes == Some(0),
            "OutlierDetection::probation_successes",
            self.probation_successes,
            "at least 1 (None turns probation off)",
        )?;
        if let Some(sr) = &self.success_rate {
            BuildError::reject_if(
                !(sr.stdev_factor.is_finite() && sr.stdev_factor >= 0.0),
                "SuccessRate::stdev_factor",
                sr.stdev_factor,
                "finite and at least 0",
            )?;
            BuildError::reject_if(
                sr.minimum_hosts == 0,
                "SuccessRate::minimum_hosts",
                sr.minimum_hosts,
                "at least 1",
            )?;
            BuildError::reject_if(
                sr.request_volume == 0,
                "SuccessRate::request_volume",
                sr.request_volume,
                "at least 1",
            )?;
        }
        if let Some(fp) = &self.failure_percentage {
            BuildError::reject_if(
                !(fp.threshold.is_finite() && (0.0..=100.0).contains(&fp.threshold)),
                "FailurePercentage::threshold",
                fp.threshold,
                "within 0..=100",
            )?;
            BuildError::reject_if(
                fp.minimum_hosts == 0,
                "FailurePercentage::minimum_hosts",
                fp.minimum_hosts,
                "at least 1",
            )?;
            BuildError::reject_if(
                fp.request_volume == 0,
                "FailurePercentage::request_volume",
                fp.request_volume,
                "at least 1",
            )?;
        }
        Ok(())
    }

    /// The length of an endpoint's `times`-th ejection (1-based).
    pub(crate) fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times.max(1))
            .min(self.max_ejection)
    }

    /// How many of `n` endpoints may be ejected at once: the percentage, rounded up.
    pub(crate) fn max_ejected(&self, n: usize) -> usize {
        if self.max_ejection_percent == 0 || n == 0 {
            return 0;
        }
        (n * self.max_ejection_percent as usize)
            .div_ceil(100)
            .max(1)
    }
}

/// What the completion path shares with the driver for outlier detection.
#[derive(Debug)]
pub(crate) struct OutlierSignal {
    consecutive: u32,
    uncapped_unreachable: bool,
    probation_successes: u32,
    ejected: AtomicUsize,
    max_ejected: AtomicUsize,
    driver: AtomicWaker,
}

impl OutlierSignal {
    pub(crate) fn new(settings: &OutlierDetection) -> Self {
        OutlierSignal {
            consecutive: settings.consecutive_failures.unwrap_or(0),
            uncapped_unreachable: !settings.cap_unreachable,
            probation_successes: settings.probation_successes.unwrap_or(1),
            ejected: AtomicUsize::new(0),
            max_ejected: AtomicUsize::new(0),
            driver: AtomicWaker::new(),
        }
    }

    #[inline]
    pub(crate) fn consecutive_threshold_reached(&self, in_row: u32) -> bool {
        self.consecutive != 0 && in_row >= self.consecutive
    }

    pub(crate) fn probation_successes(&self) -> u32 {
        self.probation_successes
    }

    /// Takes one of the ejection slots, if any is free; an ejection of an unreachable
    /// endpoint takes one whether or not it is free (it is not capped).
    pub(crate) fn reserve_ejection(&self, unreachable: bool) -> bool {
        if unreachable && self.uncapped_unreachable {
            self.ejected.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let max = self.max_ejected.load(Ordering::Acquire);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back an ejection slot.
    pub(crate) fn release_ejection(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Ejection slots taken now.
    #[cfg(test)]
    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    pub(crate) fn set_max_ejected(&self, max: usize) {
        self.max_ejected.store(max, Ordering::Release);
    }

    pub(crate) fn register_driver(&self, waker: &std::task::Waker) {
        self.driver.register(waker);
    }

    pub(crate) fn wake_driver(&self) {
        self.driver.wake();
    }
}

/// One endpoint's requests and failures over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
}

/// Why the interval detectors eject an endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    SuccessRate { rate: f64, threshold: f64 },
    FailurePercentage { percent: f64 },
}

/// Runs the success-rate and failure-percentage detectors over one interval's samples
/// (`None` for endpoints that are not judged, such as those already ejected). Returns the
/// endpoints to eject, in index order.
pub(crate) fn evaluate(
    settings: &OutlierDetection,
    samples: &[Option<Sample>],
) -> Vec<(usize, Verdict)> {
    let mut verdicts: Vec<(usize, Verdict)> = Vec::new();
    if let Some(sr) = &settings.success_rate {
        let judged: Vec<(usize, f64)> = samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = (*s)?;
                (s.requests >= sr.request_volume).then(|| {
                    (
                        i,
                        (s.requests - s.failures.min(s.requests)) as f64 / s.requests as f64,
                    )
                })
            })
            .collect();
        if judged.len() >= sr.minimum_hosts {
            let n = judged.len() as f64;
            let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let threshold = mean - sr.stdev_factor * variance.sqrt();
            for &(i, rate) in &judged {
                if rate < threshold {
                    verdicts.push((i, Verdict::SuccessRate { rate, threshold }));
                }
            }
        }
    }
    if let Some(fp) = &settings.failure_percentage {
        let judged: Vec<(usize, f64)> = samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = (*s)?;
                (s.requests >= fp.request_volume).then(|| {
                    (
                        i,
                        100.0 * s.failures.min(s.requests) as f64 / s.requests as f64,
                    )
                })
            })
            .collect();
        if judged.len() >= fp.minimum_hosts {
            for &(i, percent) in &judged {
                if percent >= fp.threshold && !verdicts.iter().any(|(j, _)| *j == i) {
                    verdicts.push((i, Verdict::FailurePercentage { percent }));
                }
            }
        }
    }
    verdicts.sort_by_key(|(i, _)| *i);
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, failures: u64) -> Option<Sample> {
        Some(Sample { requests, failures })
    }

    #[test]
    fn success_rate_ejects_below_mean_minus_1_9_stdev() {
        // Nine endpoints at 99 % success and one at 50 %: mean 0.941, stdev 0.147, threshold
        // 0.941 - 1.9 × 0.147 = 0.662.
        let mut samples = vec![sample(100, 1); 9];
        samples.push(sample(100, 50));
        let out = evaluate(
            &OutlierDetection::default().failure_percentage(None),
            &samples,
        );
        assert_eq!(out.len(), 1);
        let (i, Verdict::SuccessRate { rate, threshold }) = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(i, 9);
        assert!((rate - 0.5).abs() < 1e-9);
        assert!((threshold - 0.662).abs() < 0.001, "{threshold}");
    }

    #[test]
    fn success_rate_needs_enough_hosts_and_requests() {
        let settings = OutlierDetection::default().failure_percentage(None);
        // Four hosts: below the minimum of five.
        let mut few = vec![sample(100, 0); 3];
        few.push(sample(100, 100));
        assert!(evaluate(&settings, &few).is_empty());
        // Five hosts, but the bad one has 99 requests: not judged.
        let mut low_volume = vec![sample(100, 0); 5];
        low_volume.push(sample(99, 99));
        assert!(evaluate(&settings, &low_volume).is_empty());
    }

    #[test]
    fn failure_percentage_ejects_at_85_percent() {
        let settings = OutlierDetection::default().success_rate(None);
        let mut samples = vec![sample(50, 0); 4];
        samples.push(sample(100, 85));
        samples.push(sample(100, 84));
        samples.push(None);
        let out = evaluate(&settings, &samples);
        assert_eq!(out, vec![(4, Verdict::FailurePercentage { percent: 85.0 })]);
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let o = OutlierDetection::default();
        assert_eq!(o.ejection_time(1), Duration::from_secs(30));
        assert_eq!(o.ejection_time(3), Duration::from_secs(90));
        assert_eq!(o.ejection_time(100), Duration::from_secs(300));
    }

    #[test]
    fn at_most_half_ejected_rounded_up() {
        let o = OutlierDetection::default();
        let caps: Vec<usize> = [1, 2, 3, 4, 5, 10, 100, 10_000]
            .iter()
            .map(|&n| o.max_ejected(n))
            .collect();
        assert_eq!(caps, [1, 1, 2, 2, 3, 5, 50, 5_000]);
        assert_eq!(o.clone().max_ejection_percent(0).max_ejected(10), 0);
    }

    #[test]
    fn envoys_ten_percent_rounds_as_envoy_does() {
        // Envoy ejects while the ejected share is below the percentage: with 25 hosts,
        // 0 %, 4 % and 8 % are below 10 %, so a third host is ejected.
        let o = OutlierDetection::default().max_ejection_percent(10);
        assert_eq!(o.max_ejected(3), 1);
        assert_eq!(o.max_ejected(10), 1);
        assert_eq!(o.max_ejected(25), 3);
        assert_eq!(o.max_ejected(100), 10);
    }

    #[test]
    fn unreachable_endpoints_are_ejected_beyond_the_cap_unless_capped() {
        let signal = OutlierSignal::new(&OutlierDetection::default());
        signal.set_max_ejected(1);
        assert!(signal.reserve_ejection(false));
        assert!(
            !signal.reserve_ejection(false),
            "the cap holds for answered failures"
        );
        assert!(
            signal.reserve_ejection(true),
            "not for unreachable endpoints"
        );
        assert_eq!(signal.ejected(), 2);
        let capped = OutlierSignal::new(&OutlierDetection::default().cap_unreachable(true));
        capped.set_max_ejected(1);
        assert!(capped.reserve_ejection(true));
        assert!(!capped.reserve_ejection(true));
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = [
            OutlierDetection::default().consecutive_failures(Some(0)),
            OutlierDetection::default().interval(Duration::ZERO),
            OutlierDetection::default().base_ejection(Duration::ZERO),
            OutlierDetection::default().max_ejection_percent(101),
            OutlierDetection::default().probation_successes(Some(0)),
            OutlierDetection::default().max_ejection(Duration::from_secs(1)),
        ];
        for settings in bad {
            assert!(
                matches!(settings.validate(), Err(BuildError::InvalidConfig(_))),
                "{settings:?}"
            );
        }
        assert_eq!(OutlierDetection::default().validate(), Ok(()));
    }
}
