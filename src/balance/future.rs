use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::service::PassedOver;
use crate::classify::Classify;
use crate::completion::{InFlight, TrackCompletion};
use crate::endpoint::{Load, Timing};
use crate::error::{BoxError, NotReady, Unavailable};

/// An endpoint whose service was not ready when a request was routed to it by key, kept in
/// the key's preference order until one of them is.
pub(crate) struct Candidate<S> {
    pub(crate) service: S,
    pub(crate) load: Arc<Load>,
}

/// A request routed by key whose candidates were all busy: it waits for the first of them
/// (in preference order) to become ready, up to the fail-fast timeout.
pub(crate) struct Routing<S, Req> {
    pub(crate) candidates: Vec<Candidate<S>>,
    pub(crate) request: Option<Req>,
    /// Health flags that take a candidate out (it was ejected or drained while waiting).
    skip: u32,
    passed: PassedOver,
    pub(crate) timing: Option<Timing>,
    pub(crate) fail_fast: Duration,
    pub(crate) endpoints: usize,
    deadline: Option<(Instant, Pin<Box<Sleep>>)>,
    last_error: Option<Arc<BoxError>>,
}

impl<S, Req> Routing<S, Req> {
    pub(crate) fn new(
        candidates: Vec<Candidate<S>>,
        request: Req,
        skip: u32,
        timing: Option<Timing>,
        fail_fast: Duration,
        endpoints: usize,
    ) -> Self {
        Routing {
            candidates,
            request: Some(request),
            skip,
            passed: PassedOver::default(),
            timing,
            fail_fast,
            endpoints,
            deadline: None,
            last_error: None,
        }
    }

    /// Polls the candidates in order; the first ready one gets the request. A candidate
    /// ejected or drained while the request waited is passed over for good.
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<(S::Future, InFlight), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let mut i = 0;
        while i < self.candidates.len() {
            if self.candidates[i].load.health_flags() & self.skip != 0 {
                self.candidates.remove(i);
                self.passed.flagged = true;
                continue;
            }
            match self.candidates[i].service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Candidate { mut service, load } = self.candidates.swap_remove(i);
                    self.candidates.clear();
                    let Some(request) = self.request.take() else {
                        // Not reachable: the candidates are cleared when the request is sent.
                        return Poll::Ready(Err("tower-lb routed a request twice".into()));
                    };
                    let start_ns = self.timing.map_or(0, |t| t.now_ns());
                    let guard = InFlight::new(load, start_ns);
                    return Poll::Ready(Ok((service.call(request), guard)));
                }
                Poll::Pending => i += 1,
                Poll::Ready(Err(error)) => {
                    let candidate = self.candidates.remove(i);
                    self.last_error = Some(super::service::readiness_failed(
                        &candidate.load,
                        error.into(),
                    ));
                    self.passed.broken = true;
                }
            }
        }
        if !self.candidates.is_empty() && !self.fail_fast.is_zero() {
            let fail_fast = self.fail_fast;
            let (_, sleep) = self
                .deadline
                .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(fail_fast))));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let waited = self
            .deadline
            .as_ref()
            .map_or(Duration::ZERO, |d| d.0.elapsed());
        Poll::Ready(Err(Unavailable {
            reason: self.passed.reason(!self.candidates.is_empty()),
            waited,
            endpoints: self.endpoints,
            source: self.last_error.take(),
        }
        .into()))
    }
}

/// A request waiting for a routed endpoint, or one that failed before it was sent.
enum Slow<S, Req> {
    Routing(Routing<S, Req>),
    Failed(Option<BoxError>),
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Called { #[pin] future: S::Future, guard: Option<InFlight> },
        // The rare states, boxed so the common one stays small and cheap to drop.
        Slow { slow: Box<Slow<S, Req>> },
        NotReady,
        // The response was returned: the endpoint's future is gone (an `async` block panics
        // when polled after completion), and polling again is an error.
        Done,
    }
}

pin_project! {
    /// The response future of [`Balance`](crate::Balance).
    ///
    /// It holds the request's [`InFlight`] guard: the outcome and latency are recorded when
    /// the endpoint's future completes, and the in-flight count is released then (or, with
    /// a body-tracking policy, when the body ends), or when this future is dropped.
    ///
    /// A request routed by key (consistent hashing) whose preferred endpoints were all busy
    /// waits here, in the key's preference order, for the first of them to become ready, up
    /// to the fail-fast timeout.
    ///
    /// Polled again after it returned its result, it fails (without polling the endpoint's
    /// future again, which may panic).
    pub struct ResponseFuture<S, Req, C, T>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        classify: C,
        track: T,
    }
}

impl<S: Service<Req>, Req, C, T> ResponseFuture<S, Req, C, T> {
    pub(crate) fn called(future: S::Future, guard: InFlight, classify: C, track: T) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                guard: Some(guard),
            },
            classify,
            track,
        }
    }

    pub(crate) fn routing(routing: Routing<S, Req>, classify: C, track: T) -> Self {
        ResponseFuture {
            state: State::Slow {
                slow: Box::new(Slow::Routing(routing)),
            },
            classify,
            track,
        }
    }

    pub(crate) fn failed(error: BoxError, classify: C, track: T) -> Self {
        ResponseFuture {
            state: State::Slow {
                slow: Box::new(Slow::Failed(Some(error))),
            },
            classify,
            track,
        }
    }

    pub(crate) fn not_ready(classify: C, track: T) -> Self {
        ResponseFuture {
            state: State::NotReady,
            classify,
            track,
        }
    }
}

impl<S, Req, C, T> Future for ResponseFuture<S, Req, C, T>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    T: TrackCompletion<S::Response>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::NotReady => return Poll::Ready(Err(NotReady.into())),
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
                StateProj::Slow { slow } => match &mut **slow {
                    Slow::Failed(error) => {
                        return Poll::Ready(Err(error
                            .take()
                            .unwrap_or_else(polled_after_completion)))
                    }
                    Slow::Routing(routing) => match ready!(routing.poll_call(cx)) {
                        Ok((future, guard)) => this.state.set(State::Called {
                            future,
                            guard: Some(guard),
                        }),
                        Err(error) => {
                            **slow = Slow::Failed(None);
                            return Poll::Ready(Err(error));
                        }
                    },
                },
                StateProj::Called { future, guard } => {
                    let result = ready!(future.poll(cx));
                    let guard = guard.take();
                    this.state.set(State::Done);
                    let Some(mut guard) = guard else {
                        // Not reachable: the guard is taken only here, on the way to `Done`.
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    guard.record(this.classify.classify(&result));
                    return Poll::Ready(match result {
                        Ok(response) => Ok(this.track.track(response, guard)),
                        Err(e) => Err(e.into()),
                    });
                }
            }
        }
    }
}

/// The error of a response future polled again after it returned its result.
#[cold]
fn polled_after_completion() -> BoxError {
    "tower-lb: the response future was polled after it completed".into()
}

impl<S: Service<Req>, Req, C, T> fmt::Debug for ResponseFuture<S, Req, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
