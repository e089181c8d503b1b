//! Active health checks: the [`Probe`] trait and what a failed probe reports.
//!
//! A probe is an async check of one endpoint, run by the balancer's background task on a
//! schedule (see [`ActiveChecks`](super::ActiveChecks)). It answers healthy (`Ok(())`) or
//! unhealthy with a [`ProbeFailure`] that says why. Built in:
//!
//! - [`TcpProbe`](super::TcpProbe): the endpoint accepts a TCP connection.
//! - `HttpProbe` (feature `http`): an HTTP request over any `tower::Service` answers with an
//!   accepted status, within a body limit.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::error::BoxError;

/// An async check of one endpoint. See the [module docs](self).
///
/// The balancer applies its own timeout around every probe, so a probe that never answers
/// counts as a [`ProbeFailure::Timeout`].
///
/// ```
/// use std::future::{ready, Ready};
/// use tower_lb::health::{Probe, ProbeFailure};
///
/// /// Healthy when the key is even (a stand-in for a real check).
/// struct Even;
///
/// impl Probe<u32> for Even {
///     type Future = Ready<Result<(), ProbeFailure>>;
///
///     fn probe(&self, key: &u32) -> Self::Future {
///         ready(if key % 2 == 0 {
///             Ok(())
///         } else {
///             Err(ProbeFailure::Unhealthy("odd".into()))
///         })
///     }
/// }
/// ```
pub trait Probe<K>: Send + Sync + 'static {
    /// The check in progress.
    type Future: Future<Output = Result<(), ProbeFailure>> + Send + 'static;

    /// Starts a check of the endpoint with key `key`.
    fn probe(&self, key: &K) -> Self::Future;
}

/// Why a probe found an endpoint unhealthy.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeFailure {
    /// No answer within this time.
    Timeout(Duration),
    /// The connection could not be made or broke (refused, reset, unreachable, ...).
    Connect(std::io::Error),
    /// The transport failed (for the HTTP probe, the `tower::Service` it sends through).
    Transport(BoxError),
    /// The answer's status is outside the accepted range.
    Status(http::StatusCode),
    /// The answer's body is longer than the probe reads.
    BodyTooLarge {
        /// The most bytes the probe reads.
        limit: usize,
    },
    /// The answer could not be read or understood.
    Malformed(String),
    /// A probe of the user's own said the endpoint is unhealthy.
    Unhealthy(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Timeout(t) => write!(f, "probe timed out after {t:?}"),
            ProbeFailure::Connect(e) => write!(f, "probe could not connect: {e}"),
            ProbeFailure::Transport(e) => write!(f, "probe transport failed: {e}"),
            ProbeFailure::Status(s) => write!(f, "probe answered with status {s}"),
            ProbeFailure::BodyTooLarge { limit } => {
                write!(f, "probe answer's body is over the {limit}-byte limit")
            }
            ProbeFailure::Malformed(why) => write!(f, "probe answer is malformed: {why}"),
            ProbeFailure::Unhealthy(why) => write!(f, "probe found the endpoint unhealthy: {why}"),
        }
    }
}

impl std::error::Error for ProbeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeFailure::Connect(e) => Some(e),
            ProbeFailure::Transport(e) => Some(&**e),
            _ => None,
        }
    }
}
