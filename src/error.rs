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

/// The balancer could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `poll_ready` ran outside a tokio runtime (and the balancer was built outside one), so
    /// neither the background driver nor the fail-fast timer can run. Poll the balancer
    /// from a task of a tokio runtime with its time driver enabled.
    NoRuntime,
    /// A configuration value is out of range; the string names it.
    InvalidConfig(&'static str),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoRuntime => f.write_str(
                "tower-lb needs a tokio runtime for its background driver and timers; poll the balancer inside one",
            ),
            BuildError::InvalidConfig(what) => write!(f, "invalid load balancer configuration: {what}"),
        }
    }
}

impl std::error::Error for BuildError {}
