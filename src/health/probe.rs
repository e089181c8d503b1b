//! Active health checks: the [`Probe`] trait and what a failed probe reports.
//!
//! A probe is an async check of one endpoint, run by the balancer's background task on a
//! schedule (see [`active`](super::active)). It answers healthy (`Ok(())`) or
//! unhealthy with a [`ProbeFailure`] that says why. Built in:
//!
//! - [`TcpProbe`](super::TcpProbe): the endpoint accepts a TCP connection.
//! - `HttpProbe` (feature `http`): an HTTP request over any `tower::Service` answers with an
//!   accepted status, within a body limit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Metadata;
use crate::error::{BoxError, BuildError};

/// The endpoint a probe checks: its name and metadata.
///
/// The name is the endpoint's [`Metadata::name`] if set, or else its key's `Debug` form
/// without surrounding quotes: `127.0.0.1:8000` for a `SocketAddr` key. The built-in
/// probes connect to it as `host:port`.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub(crate) name: Arc<str>,
    pub(crate) metadata: Metadata,
}

impl ProbeTarget {
    /// A target with this name and no metadata (for calling a probe outside a balancer).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        ProbeTarget {
            name: name.into(),
            metadata: Metadata::default(),
        }
    }

    /// The endpoint's name, usually `host:port`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// An async check of one endpoint, run on the schedule of [`ActiveChecks`](super::ActiveChecks).
///
/// The balancer applies its own timeout around every probe, so a probe that never answers
/// counts as a [`ProbeFailure::Timeout`].
///
/// ```
/// use std::future::{ready, Ready};
/// use tower_lb::health::{Probe, ProbeFailure, ProbeTarget};
///
/// /// Healthy unless the endpoint is named in the deny list (a stand-in for a real check).
/// struct DenyList(Vec<String>);
///
/// impl Probe for DenyList {
///     type Future = Ready<Result<(), ProbeFailure>>;
///
///     fn probe(&self, target: &ProbeTarget) -> Self::Future {
///         ready(if self.0.iter().any(|n| n == target.name()) {
///             Err(ProbeFailure::Unhealthy("on the deny list".into()))
///         } else {
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait Probe: Send + Sync + 'static {
    /// The check in progress.
    type Future: Future<Output = Result<(), ProbeFailure>> + Send + 'static;

    /// Starts a check of `target`.
    fn probe(&self, target: &ProbeTarget) -> Self::Future;

    /// Checks the probe's settings; called once when the balancer is built, which fails
    /// with the error, as for the balancer's own settings. The default accepts any.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

/// A boxed probe future.
pub(crate) type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send>>;

/// [`Probe`] with its future boxed, so the balancer can hold any probe without naming it.
pub(crate) trait DynProbe: Send + Sync + 'static {
    fn probe_boxed(&self, target: &ProbeTarget) -> ProbeFuture;

    fn validate_dyn(&self) -> Result<(), BuildError>;
}

impl<P: Probe> DynProbe for P {
    fn probe_boxed(&self, target: &ProbeTarget) -> ProbeFuture {
        Box::pin(self.probe(target))
    }

    fn validate_dyn(&self) -> Result<(), BuildError> {
        self.validate()
    }
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
