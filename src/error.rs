//! Errors returned by the balancer.
//!
//! The balancer's `Service::Error` is [`BoxError`], as everywhere in tower. Errors of the
//! endpoints' own services pass through unchanged; the balancer's own errors are the types
//! in this module, which callers can recover with [`downcast_ref`](std::error::Error):
//!
//! ```
//! # use tower_lb::error::{BoxError, Unavailable};
//! fn is_unavailable(err: &BoxError) -> bool {
//!     err.downcast_ref::<Unavailable>().is_some()
//! }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A type-erased error, as used across tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why no endpoint could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// Discovery has produced no endpoint yet, or every endpoint was removed.
    NoEndpoints,
    /// Endpoints exist, but every one has weight 0.
    AllZeroWeight,
    /// Endpoints exist, but none of their services became ready (each was not ready or
    /// failed its readiness check).
    NoneReady,
    /// Endpoints exist, but every one with a weight is unhealthy, ejected or draining, and
    /// panic mode does not apply (fail closed) or only draining ones are left.
    AllUnhealthy,
}

impl fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnavailableReason::NoEndpoints => "no endpoints have been discovered",
            UnavailableReason::AllZeroWeight => "every endpoint has weight 0",
            UnavailableReason::NoneReady => "no endpoint's service became ready",
            UnavailableReason::AllUnhealthy => "every endpoint is unhealthy, ejected or draining",
        })
    }
}

/// No endpoint was eligible for a request within the fail-fast timeout.
///
/// Returned by `poll_ready` after the balancer has waited
/// [`fail_fast`](crate::Builder::fail_fast) for an eligible endpoint to appear.
///
/// When endpoints failed their readiness checks, the last of those errors is the
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub(crate) reason: UnavailableReason,
    pub(crate) waited: Duration,
    pub(crate) endpoints: usize,
    pub(crate) source: Option<Arc<BoxError>>,
}

impl Unavailable {
    /// Why no endpoint was eligible.
    pub fn reason(&self) -> UnavailableReason {
        self.reason
    }

    /// How long the balancer waited before giving up.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How many endpoints the balancer knew about (eligible or not) when it gave up.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole milliseconds read better than `1.00112264s`.
        let waited = Duration::from_millis(self.waited.as_millis() as u64);
        write!(
            f,
            "load balancer has no available endpoint after waiting {:?}: {} ({} known)",
            waited, self.reason, self.endpoints
        )
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

/// `call` was invoked without a successful `poll_ready` first.
///
/// tower's contract requires `poll_ready` to return `Ready(Ok(()))` before each `call`.
/// Instead of panicking, the balancer returns a future that fails with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("load balancer called before poll_ready returned Ready(Ok)")
    }
}

impl std::error::Error for NotReady {}

/// The balancer's background task has stopped, so `poll_ready` fails: nothing would apply
/// discovery changes, run health checks or end ejections any more.
///
/// The task runs on the tokio runtime the balancer was built in (or first polled in, if it
/// was built outside one), and stops for good when that runtime shuts down, for example at
/// the end of a `#[tokio::test]`. A balancer belongs to that runtime: build one in each
/// runtime that sends requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverStopped;

impl fmt::Display for DriverStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the load balancer's background task has stopped, because the tokio runtime it ran on \
             shut down (or the task panicked); a balancer belongs to the runtime it was built in: \
             build one in each runtime",
        )
    }
}

impl std::error::Error for DriverStopped {}

/// An operation named an endpoint the balancer does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEndpoint {
    pub(crate) key: String,
}

impl UnknownEndpoint {
    pub(crate) fn new(key: &impl fmt::Debug) -> Self {
        UnknownEndpoint {
            key: format!("{key:?}"),
        }
    }
}

impl fmt::Display for UnknownEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the load balancer has no endpoint {}", self.key)
    }
}

impl std::error::Error for UnknownEndpoint {}

/// `poll_ready` ran outside a tokio runtime (and the balancer was built outside one), so
/// neither the background driver nor the fail-fast timer can run.
///
/// Poll the balancer from a task of a tokio runtime with its time driver enabled
/// (`enable_time` or `enable_all`); build it inside that runtime too, so its static
/// endpoints are in place before the first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoRuntime;

impl fmt::Display for NoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "tower-lb needs a tokio runtime for its background driver and timers; poll the balancer inside one",
        )
    }
}

impl std::error::Error for NoRuntime {}

/// The balancer could not be built: [`Builder::build`](crate::Builder::build) (and the
/// other ways to build one) check every setting before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range; the [`InvalidConfig`] names it, its value and what it
    /// must be.
    InvalidConfig(InvalidConfig),
}

impl BuildError {
    /// A setting `field` whose `value` is not what it must be (`expected`).
    pub(crate) fn invalid(
        field: &'static str,
        value: impl fmt::Debug,
        expected: &'static str,
    ) -> Self {
        BuildError::InvalidConfig(InvalidConfig {
            field,
            value: format!("{value:?}"),
            expected,
        })
    }
}

impl BuildError {
    /// Fails, naming `field` and its `value`, when `invalid` holds: one check of a setting.
    pub(crate) fn reject_if(
        invalid: bool,
        field: &'static str,
        value: impl fmt::Debug,
        expected: &'static str,
    ) -> Result<(), BuildError> {
        if invalid {
            return Err(BuildError::invalid(field, value, expected));
        }
        Ok(())
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InvalidConfig(invalid) => invalid.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {}

/// A setting that is out of range: which one, its value, and what it must be.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::error::BuildError;
/// use tower_lb::health::{ActiveChecks, TcpProbe};
/// use tower_lb::{discover, Balance};
///
/// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
/// let built = Balance::builder()
///     .active_checks(TcpProbe::new(), ActiveChecks::new().interval(Duration::ZERO))
///     .build(discover::static_list([("127.0.0.1:8000", echo)]));
/// let Err(BuildError::InvalidConfig(invalid)) = built else { panic!("accepted") };
/// assert_eq!(invalid.field(), "ActiveChecks::interval");
/// assert_eq!(invalid.value(), "0ns");
/// assert_eq!(
///     invalid.to_string(),
///     "invalid load balancer configuration: ActiveChecks::interval is 0ns; it must be greater than zero"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    field: &'static str,
    value: String,
    expected: &'static str,
}

impl InvalidConfig {
    /// The setting, as the setter that sets it: `ActiveChecks::interval`,
    /// `Builder::panic_threshold`, `Dns::min_ttl`, ...
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The value given, in its `Debug` form.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What the value must be.
    pub fn expected(&self) -> &'static str {
        self.expected
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid load balancer configuration: {} is {}; it must be {}",
            self.field, self.value, self.expected
        )
    }
}

impl std::error::Error for InvalidConfig {}
