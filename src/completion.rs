//! When a request stops counting as in flight.
//!
//! Every request the balancer sends holds an [`InFlight`] guard. The guard records the
//! request's outcome and latency once, and releases the endpoint's in-flight count exactly
//! once, when it is dropped: whether the response arrived, the service failed, or the caller
//! dropped the response future (cancellation).
//!
//! A [`TrackCompletion`] policy decides where the guard goes when the response arrives:
//!
//! - [`OnResponse`] (the default) drops it at once: the request stops counting when its
//!   response (for HTTP, the response head) is ready.
//! - [`OnBodyEnd`](crate::http::OnBodyEnd) (feature `http`) moves it into the response body,
//!   so a streaming response counts as in flight until its body ends or is dropped.

use std::fmt;
use std::sync::Arc;

use crate::classify::Outcome;
use crate::endpoint::{Load, Observed};
use crate::error::BoxError;

/// What happens to a request's [`InFlight`] guard when its response arrives.
pub trait TrackCompletion<Res>: Clone + Send + Sync + 'static {
    /// The response type the balancer returns.
    type Output;

    /// Attaches the guard to the response, or drops it.
    fn track(&self, response: Res, guard: InFlight) -> Self::Output;
}

/// Releases the in-flight count as soon as the response is ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnResponse;

impl<Res> TrackCompletion<Res> for OnResponse {
    type Output = Res;

    #[inline]
    fn track(&self, response: Res, _guard: InFlight) -> Res {
        response
    }
}

/// Counts one request as in flight on one endpoint until dropped.
///
/// Created by the balancer when it calls an endpoint; see the [module docs](self).
pub struct InFlight {
    load: Arc<Load>,
    /// When the request started, on the balancer's clock (0 when latency is not tracked).
    start_ns: u64,
    recorded: bool,
}

impl InFlight {
    #[inline]
    pub(crate) fn new(load: Arc<Load>, start_ns: u64) -> Self {
        load.start();
        InFlight {
            load,
            start_ns,
            recorded: false,
        }
    }

    /// Records the outcome and latency; later calls do nothing.
    #[inline]
    pub(crate) fn record(&mut self, outcome: Outcome) {
        let observed = match outcome {
            Outcome::Success => Observed::Success,
            Outcome::Failure => Observed::Failure,
        };
        self.observe(observed);
    }

    /// Records the outcome of a call that returned `error`: a failure the classifier
    /// judged one is [unreachable](crate::health::unreachable) when the error says so.
    #[cold]
    pub(crate) fn record_error(&mut self, outcome: Outcome, error: &BoxError) {
        let observed = match outcome {
            Outcome::Success => Observed::Success,
            Outcome::Failure if crate::health::unreachable::is_unreachable(&**error) => {
                Observed::Unreachable
            }
            Outcome::Failure => Observed::Failure,
        };
        self.observe(observed);
    }

    #[inline]
    fn observe(&mut self, observed: Observed) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.load.record(observed);
        self.load
            .sample_latency(self.start_ns, observed != Observed::Success);
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        if !self.recorded {
            // Cancelled before an outcome: the time waited so far is a lower bound of the
            // latency, which lets a hung endpoint look slow but never makes one look fast.
            self.load.record_cancel();
            self.load.sample_cancelled(self.start_ns);
        }
        self.load.finish();
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.load.in_flight())
            .field("recorded", &self.recorded)
            .finish()
    }
}
