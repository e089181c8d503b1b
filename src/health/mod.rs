//! Health: keeping traffic away from endpoints that are down, broken or slow, and bringing
//! it back when they recover, the way Envoy, linkerd and HAProxy do.
//!
//! | mechanism | what it does | configure with | module |
//! |---|---|---|---|
//! | active checks | probes each endpoint every 2 s; rise 2, fall 3 | [`Builder::active_checks`](crate::Builder::active_checks) | [`ActiveChecks`], [`Probe`] |
//! | outlier detection | ejects endpoints whose responses fail; **on by default** | [`Builder::outlier_detection`](crate::Builder::outlier_detection) | [`outlier`] |
//! | panic mode | below 50 % healthy, also sends traffic to endpoints out on a probe verdict alone | [`Builder::panic_threshold`](crate::Builder::panic_threshold) | this module |
//! | unreachable endpoints | refused connections prove an endpoint down: ejected beyond the cap, kept out in panic mode | | [`unreachable`](mod@unreachable) |
//! | slow start | ramps a new or recovered endpoint's weight | [`Builder::slow_start`](crate::Builder::slow_start) | [`slow_start`] |
//! | draining | no new requests, in-flight ones finish | [`Balance::set_draining`](crate::Balance::set_draining) | this module |
//! | events | every change of an endpoint's health | [`Balance::health_events`](crate::Balance::health_events) | this module |
//!
//! All of it runs in the balancer's background task, off the hot path: a state change
//! rebuilds the strategy's table and publishes a new snapshot. The one exception is
//! ejection after consecutive failures, which the completion path applies at once so that
//! no request picks the endpoint after its last allowed failure.
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::health::{ActiveChecks, OutlierDetection, SlowStart, TcpProbe};
//! use tower_lb::{discover, Balance};
//! use tower_lb::classify::ErrorsAsFailures;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
//! let balance = Balance::builder()
//!     // The toy service answers strings, not HTTP: only `Err` is a failure.
//!     .classify(ErrorsAsFailures)
//!     .active_checks(TcpProbe::new(), ActiveChecks::new().interval(Duration::from_secs(5)))
//!     // On by default; here with 3 failures in a row instead of 5.
//!     .outlier_detection(OutlierDetection::new().consecutive_failures(Some(3)))
//!     .slow_start(SlowStart::new(Duration::from_secs(30)))
//!     .panic_threshold(0.5)
//!     .build(discover::static_list([("127.0.0.1:8000", echo)]))
//!     .unwrap();
//! # drop(balance);
//! # }
//! ```
//!
//! # Panic mode
//!
//! Health verdicts can be wrong together: a probe path that breaks on every server at
//! once, or probes that time out because the whole fleet is overloaded. Envoy and Finagle
//! answer with *panic mode*: below a share of healthy endpoints (the
//! [panic threshold](crate::Builder::panic_threshold), 50 % by default), stop trusting the
//! verdicts. Sending traffic to an endpoint that is known to fail it helps nobody, though,
//! so the balancer sorts the endpoints that are out by how the balancer knows:
//!
//! | endpoint | evidence | in panic mode |
//! |---|---|---|
//! | healthy | | takes requests |
//! | suspect | unhealthy by a probe answer alone (a status, a timeout, a custom verdict) | takes requests: the probe may be what is broken, and outlier detection judges the traffic it gets |
//! | failing | ejected for failed requests, or unreachable (its last request or probe was refused, or its host or network was unreachable) | stays out, unless no endpoint is healthy or suspect |
//!
//! Below the threshold, the balancer balances over the healthy and the suspect endpoints.
//! When there are none, it balances over every endpoint (fail open, as nginx does when
//! every server has failed). With [`fail_closed`](crate::Builder::fail_closed) it keeps to
//! the healthy ones, and fails with
//! [`UnavailableReason::AllUnhealthy`](crate::error::UnavailableReason::AllUnhealthy) when
//! there are none. Draining endpoints, endpoints of weight 0 and endpoints awaiting their
//! first probe answer with [`Initial::Unhealthy`] never take requests. Panic mode's start
//! and end are logged (a warning and an info line), and
//! [`Balance::health_stats`](crate::Balance::health_stats) reports it.
//!
//! **Worked example: three endpoints, the defaults, and two broken.** `a` is well, `b`
//! answers 500 to everything, `c` refuses connections.
//!
//! 1. Least request sends `b` and `c` fewer requests than `a` from their first failure on
//!    (each failure counts as a request in flight for a second), and
//!    [outlier detection](outlier) ejects each after 5 failures in a row: `c` whatever
//!    the cap (it is unreachable), `b` because 50 % of 3 endpoints, rounded up, is 2.
//! 2. One endpoint of three is healthy, below 50 %: panic mode starts (and logs a
//!    warning). `b` and `c` are *failing*, not suspect, and `a` is healthy, so `a` takes
//!    every request. With a TCP probe (`TcpProbe`), `c` is also unhealthy by its probe,
//!    which changes nothing: it is unreachable.
//! 3. `c` restarts: its next probe succeeds after having failed, which ends its ejection
//!    (probation: a tenth of its weight until 5 successes in a row, or 10 s). Without
//!    probes, its ejection ends after 30 s. `b` comes back on probation after 30 s, fails
//!    its one request there, and is ejected again for 60 s, and so on up to 300 s: one
//!    failed request per return (measured: 56 of 48 400 requests over ten minutes,
//!    `tests/health_defaults.rs`).
//!
//! Envoy's defaults (ejecting at most 10 %, at least one; panic mode over every endpoint)
//! keep `b` in service and add `c` back: a third to two thirds of the requests fail for as
//! long as the two stay broken. In a fleet of 100 endpoints, the same rules eject up to 50
//! for failed requests (any number of unreachable ones), and panic mode still brings
//! back endpoints that only a probe says are down, which is the protection Envoy's panic
//! threshold gives large fleets.
//!
//! # Retries
//!
//! Health keeps new requests away from a broken endpoint once it is detected; the requests
//! that fail while it is being detected can be retried on another endpoint. Put a
//! `tower::retry::Retry` layer *outside* the balancer: each attempt goes through the
//! balancer again, which picks afresh, and the failed endpoint has fewer chances to be
//! picked (it is ejected, or least request and peak-EWMA see its failures). Retry only
//! idempotent requests, and bound retries with a budget (`tower::retry::budget::TpsBudget`)
//! so that retries cannot multiply the load of an outage. See the README's "Retries" section
//! for a complete policy.

pub mod active;
#[cfg(feature = "http")]
mod http_probe;
mod outcome;
pub mod outlier;
mod probe;
pub(crate) mod runner;
pub mod slow_start;
mod tcp_probe;
pub mod unreachable;

pub use active::{ActiveChecks, Initial};
#[cfg(feature = "http")]
pub use http_probe::HttpProbe;
pub use outlier::OutlierDetection;
pub(crate) use outlier::OutlierSignal;
pub use probe::{Probe, ProbeFailure, ProbeTarget};
pub use slow_start::SlowStart;
pub use tcp_probe::TcpProbe;

use std::fmt;
use std::sync::Arc;

/// An endpoint's health, as [events](HealthEvent) report it.
///
/// An endpoint can be several of these at once (draining and ejected, say); the state
/// reported is the first that applies in this order: draining, ejected, unknown (no probe
/// answer yet), unhealthy, probation, healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Health {
    /// Active checks are on and the endpoint's first probe has not answered yet.
    Unknown,
    /// The endpoint takes requests.
    Healthy,
    /// Active checks found it unhealthy.
    Unhealthy,
    /// Outlier detection ejected it.
    Ejected,
    /// Back from an ejection, on limited traffic until it proves healthy.
    Probation,
    /// It is draining: no new requests.
    Draining,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Ejected => "ejected",
            Health::Probation => "probation",
            Health::Draining => "draining",
        })
    }
}

/// Why an endpoint's health changed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HealthReason {
    /// A probe succeeded (the first, or the `rise`-th in a row).
    ProbeSucceeded,
    /// A probe failed (the first, or the `fall`-th in a row).
    ProbeFailed(Arc<ProbeFailure>),
    /// This many failures in a row (one, on probation).
    ConsecutiveFailures(u32),
    /// The success rate over the last interval was below the threshold.
    SuccessRate {
        /// The endpoint's success rate, in `[0, 1]`.
        rate: f64,
        /// `mean - stdev_factor × stdev` over the judged endpoints.
        threshold: f64,
    },
    /// At least the threshold percentage of requests failed over the last interval.
    FailurePercentage {
        /// The endpoint's failure percentage.
        percent: f64,
    },
    /// The ejection time is over.
    EjectionEnded,
    /// A probe succeeded after one had failed during the ejection, or after the endpoint
    /// was ejected for requests that could not reach it (refused connections): it came
    /// back (restarted, say) before its ejection time was over.
    ProbeRecovered,
    /// Enough successes in a row on probation.
    ProbationPassed,
    /// A whole outlier interval on probation without a failure (an endpoint that gets few
    /// requests on probation is not held back for ever).
    ProbationElapsed,
    /// [`Balance::set_draining`](crate::Balance::set_draining) started draining it.
    DrainStarted,
    /// [`Balance::set_draining`](crate::Balance::set_draining) stopped draining it.
    DrainStopped,
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthReason::ProbeSucceeded => f.write_str("probe succeeded"),
            HealthReason::ProbeFailed(e) => write!(f, "{e}"),
            HealthReason::ConsecutiveFailures(n) => write!(f, "{n} failures in a row"),
            HealthReason::SuccessRate { rate, threshold } => write!(
                f,
                "success rate {:.1} % below the threshold {:.1} %",
                rate * 100.0,
                threshold * 100.0
            ),
            HealthReason::FailurePercentage { percent } => {
                write!(f, "{percent:.1} % of requests failed")
            }
            HealthReason::EjectionEnded => f.write_str("ejection time over"),
            HealthReason::ProbeRecovered => {
                f.write_str("probe succeeded after failing during the ejection")
            }
            HealthReason::ProbationPassed => f.write_str("passed probation"),
            HealthReason::ProbationElapsed => {
                f.write_str("probation time passed without a failure")
            }
            HealthReason::DrainStarted => f.write_str("drain started"),
            HealthReason::DrainStopped => f.write_str("drain stopped"),
        }
    }
}

/// One change of an endpoint's health. See [`Balance::health_events`](crate::Balance::health_events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthEvent<K> {
    /// The endpoint.
    pub key: K,
    /// Its health before.
    pub from: Health,
    /// Its health now. Can equal `from` when a change is hidden by a state that comes
    /// first (a draining endpoint whose probes start failing).
    pub to: Health,
    /// What happened.
    pub reason: HealthReason,
}

impl<K: fmt::Debug> fmt::Display for HealthEvent<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: {} -> {} ({})",
            self.key, self.from, self.to, self.reason
        )
    }
}

/// The balancer-wide health picture. See [`Balance::health_stats`](crate::Balance::health_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HealthStats {
    /// Endpoints that may take requests by weight (weight > 0) and are not draining.
    pub candidates: usize,
    /// Of those, the healthy ones (not unhealthy by probes, not ejected).
    pub healthy: usize,
    /// Endpoints ejected by outlier detection now.
    pub ejected: usize,
    /// Candidates whose last request or probe could not reach them (connection refused,
    /// host or network unreachable).
    pub unreachable: usize,
    /// Whether panic mode is on: fewer than the threshold are healthy. See
    /// [panic mode](self#panic-mode) for which endpoints take requests then.
    pub panic: bool,
    /// Endpoints that take requests although they are not healthy: in panic mode, those
    /// out on a probe verdict alone, or, when no endpoint is healthy or merely suspect,
    /// every candidate. 0 outside panic mode and when failing closed.
    pub admitted_unhealthy: usize,
}

/// Panic-mode settings; see the [module docs](self#panic-mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PanicMode {
    pub(crate) threshold: f64,
    pub(crate) fail_closed: bool,
}

impl Default for PanicMode {
    fn default() -> Self {
        PanicMode {
            threshold: 0.5,
            fail_closed: false,
        }
    }
}

/// Everything about health that a builder holds.
#[derive(Clone, Default)]
pub(crate) struct HealthSettings {
    pub(crate) active: Option<(ActiveChecks, Arc<dyn probe::DynProbe>)>,
    pub(crate) outlier: Option<OutlierDetection>,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) panic: PanicMode,
    /// Set for strategies that hash request keys: slow start and probation leave their
    /// weights alone, since a changed weight moves keys between endpoints.
    pub(crate) fixed_weights: bool,
}

impl fmt::Debug for HealthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthSettings")
            .field("active", &self.active.as_ref().map(|(a, _)| a))
            .field("outlier", &self.outlier)
            .field("slow_start", &self.slow_start)
            .field("panic", &self.panic)
            .finish()
    }
}

impl HealthSettings {
    pub(crate) fn validate(&self) -> Result<(), crate::error::BuildError> {
        if let Some((active, probe)) = &self.active {
            active.validate()?;
            probe.validate_dyn()?;
        }
        if let Some(outlier) = &self.outlier {
            outlier.validate()?;
        }
        if let Some(slow_start) = &self.slow_start {
            slow_start.validate()?;
        }
        crate::error::BuildError::reject_if(
            !(0.0..=1.0).contains(&self.panic.threshold),
            "Builder::panic_threshold",
            self.panic.threshold,
            "within 0..=1",
        )?;
        Ok(())
    }
}
