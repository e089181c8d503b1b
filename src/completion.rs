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
//!
//! When the classifier's verdict on the head is [`Outcome::Trailers`] (a gRPC response whose
//! status comes in its trailers), `OnResponse` records a success at once, and `OnBodyEnd`
//! records the verdict of the trailers when they arrive. A policy of your own that drops
//! the guard of such a response before the verdict leaves the request counted as cancelled.

use std::fmt;
use std::sync::Arc;

use crate::classify::{grpc, GrpcCodes, Outcome};
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
    fn track(&self, response: Res, mut guard: InFlight) -> Res {
        // The request is over at the head: a verdict that waits for trailers cannot wait.
        guard.assume_success();
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
    verdict: Verdict,
}

/// How far the guard got with the request's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing recorded yet: dropped like this, the request was cancelled.
    Open,
    /// The outcome and the latency sample are recorded.
    Recorded,
    /// The head's latency is sampled; the outcome waits for the trailers, and a code in the
    /// set is a failure.
    Trailers(GrpcCodes),
}

impl InFlight {
    #[inline]
    pub(crate) fn new(load: Arc<Load>, start_ns: u64) -> Self {
        load.start();
        InFlight {
            start_ns: load.request_start_ns(start_ns),
            load,
            verdict: Verdict::Open,
        }
    }

    /// The endpoint's counters.
    #[inline]
    #[cfg_attr(not(feature = "orca"), allow(dead_code))]
    pub(crate) fn load(&self) -> &Load {
        &self.load
    }

    /// Records the outcome and latency; later calls do nothing. [`Outcome::Trailers`]
    /// samples the latency now (the head's) and leaves the outcome to
    /// [`record_trailers`](Self::record_trailers).
    #[inline]
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if self.verdict != Verdict::Open {
            return;
        }
        let observed = match outcome {
            Outcome::Success => Observed::Success,
            Outcome::Failure => Observed::Failure,
            Outcome::Trailers(failures) => return self.defer(failures),
            Outcome::Ignored => Observed::Ignored,
        };
        self.observe(observed);
    }

    /// Records the outcome of a call that returned `error`: a failure the classifier
    /// judged one is the caller's when the caller's request body caused it
    /// ([`ClientBodyError`](crate::classify::ClientBodyError)), and
    /// [unreachable](crate::health::unreachable) when the error says so. An error has no
    /// trailers: a verdict left to them is judged as for a body that ended without any
    /// (`UNKNOWN`, a failure).
    #[cold]
    pub(crate) fn record_error(&mut self, outcome: Outcome, error: &BoxError) {
        if self.verdict != Verdict::Open {
            return;
        }
        let observed = match outcome {
            Outcome::Success => Observed::Success,
            Outcome::Ignored => Observed::Ignored,
            Outcome::Failure | Outcome::Trailers(_)
                if crate::classify::ClientBodyError::find(&**error).is_some() =>
            {
                Observed::Ignored
            }
            Outcome::Failure | Outcome::Trailers(_)
                if crate::health::unreachable::is_unreachable(&**error) =>
            {
                Observed::Unreachable
            }
            Outcome::Failure | Outcome::Trailers(_) => Observed::Failure,
        };
        self.observe(observed);
    }

    /// Records an outcome decided now: the verdict, and a latency sample up to now (none
    /// for an ignored one: its time may be the caller's).
    #[inline]
    fn observe(&mut self, observed: Observed) {
        self.verdict = Verdict::Recorded;
        self.load.record(observed);
        let _sampled = if observed != Observed::Ignored {
            self.load
                .sample_latency(self.start_ns, observed != Observed::Success)
        } else {
            None
        };
        #[cfg(feature = "metrics")]
        self.load
            .record_metrics(self.start_ns, _sampled, observed, true);
    }

    fn defer(&mut self, failures: GrpcCodes) {
        self.verdict = Verdict::Trailers(failures);
        let _sampled = self.load.sample_latency(self.start_ns, false);
        // The head's latency; the outcome waits for the trailers.
        #[cfg(feature = "metrics")]
        self.load
            .record_metrics(self.start_ns, _sampled, Observed::Success, true);
    }

    /// Judges a verdict that waits for trailers by `trailers`, or by their absence (`None`:
    /// the body ended without them, which is `UNKNOWN`). Does nothing otherwise.
    #[inline]
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn record_trailers(&mut self, trailers: Option<&http::HeaderMap>) {
        if let Verdict::Trailers(failures) = self.verdict {
            let outcome = grpc::trailers_outcome(trailers, failures);
            self.settle(outcome == Outcome::Failure);
        }
    }

    /// The body failed before its trailers: a verdict that waits for them is a failure.
    #[inline]
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn record_body_error(&mut self) {
        if let Verdict::Trailers(_) = self.verdict {
            self.settle(true);
        }
    }

    /// A verdict that waits for trailers counts as a success ([`OnResponse`]).
    #[inline]
    pub(crate) fn assume_success(&mut self) {
        if let Verdict::Trailers(_) = self.verdict {
            self.settle(false);
        }
    }

    /// Records the outcome of a deferred verdict. The latency was sampled at the head; a
    /// failure adds the failure penalty now, as a sample of its own: the estimate ends up
    /// as if the head's sample had counted as a failure (the greater of the two, give or
    /// take the decay in between), without taking the length of a long stream for latency.
    #[cold]
    fn settle(&mut self, failure: bool) {
        self.verdict = Verdict::Recorded;
        let observed = if failure {
            Observed::Failure
        } else {
            Observed::Success
        };
        self.load.record(observed);
        // The latency was recorded at the head.
        #[cfg(feature = "metrics")]
        self.load
            .record_metrics(self.start_ns, None, observed, false);
        if failure {
            // A start in the future makes the elapsed time 0 (it saturates), so the sample
            // is exactly the failure penalty. With a zero penalty the sample is 0, which
            // leaves the estimate as picks see it (a sample of 0 only applies the decay).
            self.load.sample_latency(u64::MAX, true);
        }
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        match self.verdict {
            Verdict::Recorded => {}
            Verdict::Open => {
                // Cancelled before an outcome: the time waited so far is a lower bound of the
                // latency, which lets a hung endpoint look slow but never makes one look fast.
                self.load.record_cancel();
                self.load.sample_cancelled(self.start_ns);
            }
            // Dropped before its trailers: cancelled, with the head's latency as its sample.
            Verdict::Trailers(_) => self.load.record_cancel(),
        }
        self.load.finish();
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.load.in_flight())
            .field("verdict", &self.verdict)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{advance, Instant};

    use super::*;
    use crate::classify::GrpcCode;
    use crate::endpoint::Timing;

    /// A load with latency tracking: decay 10 s, failure penalty 1 s.
    fn timed(penalty: Duration) -> (Arc<Load>, Timing) {
        let timing = Timing {
            epoch: Instant::now(),
            decay_ns: 10e9,
            penalty_ns: penalty.as_nanos() as f64,
        };
        let settings = crate::endpoint::LoadSettings {
            timing: Some(timing),
            penalty: None,
            outlier: None,
            reports: false,
        };
        (Arc::new(Load::new(Arc::new(settings), 0)), timing)
    }

    fn trailers(code: &'static str) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from_static(code));
        map
    }

    #[test]
    fn the_guard_stays_three_words() {
        assert_eq!(std::mem::size_of::<InFlight>(), 24);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_success_samples_the_heads_latency() {
        let (load, timing) = timed(Duration::from_secs(1));
        let mut guard = InFlight::new(load.clone(), timing.now_ns());
        advance(Duration::from_millis(20)).await;
        guard.record(Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES));
        assert_eq!(load.latency(), Some(Duration::from_millis(20)));
        // A long stream: its length is not latency.
        advance(Duration::from_secs(60)).await;
        guard.record_trailers(Some(&trailers("0")));
        assert_eq!(load.latency(), Some(Duration::from_millis(20)));
        drop(guard);
        assert_eq!(
            (load.completed(), load.failures(), load.cancelled()),
            (1, 0, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_failure_counts_and_adds_the_penalty_not_the_streams_length() {
        let (load, timing) = timed(Duration::from_secs(1));
        let mut guard = InFlight::new(load.clone(), timing.now_ns());
        advance(Duration::from_millis(20)).await;
        guard.record(Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES));
        advance(Duration::from_secs(60)).await;
        guard.record_trailers(Some(&trailers("14")));
        assert_eq!(load.failures(), 1);
        assert_eq!(load.latency(), Some(Duration::from_secs(1)));
        // Recorded once: later verdicts change nothing.
        guard.record_trailers(None);
        guard.record_body_error();
        guard.record(Outcome::Failure);
        drop(guard);
        assert_eq!(
            (load.completed(), load.failures(), load.cancelled()),
            (1, 1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_penalty_leaves_the_estimate_as_picks_see_it() {
        let (load, timing) = timed(Duration::ZERO);
        let mut guard = InFlight::new(load.clone(), timing.now_ns());
        advance(Duration::from_millis(20)).await;
        guard.record(Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES));
        guard.record_trailers(None);
        assert_eq!(load.failures(), 1);
        assert_eq!(load.latency(), Some(Duration::from_millis(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ends_of_a_deferred_verdict() {
        let failures = GrpcCodes::NONE.with(GrpcCode::Unavailable);
        let (load, timing) = timed(Duration::from_secs(1));
        let deferred = || {
            let mut guard = InFlight::new(load.clone(), timing.now_ns());
            guard.record(Outcome::Trailers(failures));
            guard
        };
        // No trailers: UNKNOWN, not in this set.
        deferred().record_trailers(None);
        assert_eq!((load.completed(), load.failures()), (1, 0));
        // A code in the set.
        deferred().record_trailers(Some(&trailers("14")));
        assert_eq!((load.completed(), load.failures()), (2, 1));
        // A body error is a failure whatever the set.
        deferred().record_body_error();
        assert_eq!((load.completed(), load.failures()), (3, 2));
        // OnResponse: a success at the head.
        OnResponse.track((), deferred());
        assert_eq!((load.completed(), load.failures()), (4, 2));
        // Dropped before the trailers: cancelled.
        drop(deferred());
        assert_eq!(
            (load.completed(), load.failures(), load.cancelled()),
            (4, 2, 1)
        );
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_callers_body_are_neither_failures_nor_successes() {
        let (load, timing) = timed(Duration::from_secs(1));
        let client: BoxError = Box::new(std::io::Error::other(
            crate::classify::ClientBodyError::new("aborted"),
        ));
        let endpoint: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        for (outcome, error) in [
            (Outcome::Failure, &client),
            (Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES), &client),
            (Outcome::Ignored, &endpoint),
        ] {
            let mut guard = InFlight::new(load.clone(), timing.now_ns());
            advance(Duration::from_millis(20)).await;
            guard.record_error(outcome, error);
        }
        let mut guard = InFlight::new(load.clone(), timing.now_ns());
        guard.record(Outcome::Ignored);
        drop(guard);
        assert_eq!(
            (
                load.completed(),
                load.failures(),
                load.cancelled(),
                load.ignored()
            ),
            (0, 0, 0, 4)
        );
        assert_eq!(load.latency(), None, "no latency sample");
        assert_eq!(load.in_flight(), 0);
        // The endpoint's own error still counts.
        InFlight::new(load.clone(), timing.now_ns()).record_error(Outcome::Failure, &endpoint);
        assert_eq!((load.completed(), load.failures()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_recorded_at_the_head_ignore_trailers() {
        let (load, timing) = timed(Duration::from_secs(1));
        let mut guard = InFlight::new(load.clone(), timing.now_ns());
        guard.record(Outcome::Success);
        guard.record_trailers(Some(&trailers("14")));
        guard.record_body_error();
        drop(guard);
        assert_eq!((load.completed(), load.failures()), (1, 0));
    }
}
