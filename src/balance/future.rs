use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::route::Routing;
use crate::classify::Classify;
use crate::completion::{InFlight, TrackCompletion};
use crate::error::{BoxError, NotReady};

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
    }
}

pin_project! {
    /// The response future of [`Balance`](crate::Balance).
    ///
    /// It holds the request's [`InFlight`] guard: the outcome and latency are recorded when
    /// the endpoint's future completes, and the in-flight count is released then (or, with
    /// a body-tracking policy, when the body ends), or when this future is dropped.
    ///
    /// A request routed at `call` (by key, or again because the endpoint `poll_ready`
    /// reserved changed since) whose candidates were all busy waits here, in preference
    /// order, for the first of them to become ready, walking the order again whenever the
    /// endpoint set changes, up to the fail-fast timeout.
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
                    // The guard is taken when the endpoint's future completes: without it,
                    // this future already returned its result, and the endpoint's future
                    // must not be polled again (an `async` block panics then).
                    if guard.is_none() {
                        return Poll::Ready(Err(polled_after_completion()));
                    }
                    let result = ready!(future.poll(cx));
                    let Some(mut guard) = guard.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let outcome = this.classify.classify(&result);
                    return Poll::Ready(match result {
                        Ok(response) => {
                            guard.record(outcome);
                            #[cfg(feature = "orca")]
                            if guard.load().keeps_load_reports() {
                                if let Some(report) = this.classify.load_report(&response) {
                                    guard.load().record_load_report(report);
                                }
                            }
                            Ok(this.track.track(response, guard))
                        }
                        Err(e) => {
                            let e = e.into();
                            guard.record_error(outcome, &e);
                            Err(e)
                        }
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
