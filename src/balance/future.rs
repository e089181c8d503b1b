use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::completion::{InFlight, TrackCompletion};
use crate::error::{BoxError, NotReady};

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F, guard: Option<InFlight> },
        NotReady,
    }
}

pin_project! {
    /// The response future of [`Balance`](crate::Balance).
    ///
    /// It holds the request's [`InFlight`] guard: the outcome and latency are recorded when
    /// the endpoint's future completes, and the in-flight count is released then (or, with
    /// a body-tracking policy, when the body ends), or when this future is dropped.
    pub struct ResponseFuture<F, C, T> {
        #[pin]
        state: State<F>,
        classify: C,
        track: T,
    }
}

impl<F, C, T> ResponseFuture<F, C, T> {
    pub(crate) fn called(future: F, guard: InFlight, classify: C, track: T) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                guard: Some(guard),
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

impl<F, C, T, R, E> Future for ResponseFuture<F, C, T>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    C: Classify<R, E>,
    T: TrackCompletion<R>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::NotReady => Poll::Ready(Err(NotReady.into())),
            StateProj::Called { future, guard } => {
                let result = ready!(future.poll(cx));
                let Some(mut guard) = guard.take() else {
                    // Polled again after it completed: the endpoint's future decides, and the
                    // request was already counted.
                    return Poll::Ready(result.map_err(Into::into).and_then(|_| {
                        Err("tower-lb response future polled after completion".into())
                    }));
                };
                guard.record(this.classify.classify(&result));
                Poll::Ready(match result {
                    Ok(response) => Ok(this.track.track(response, guard)),
                    Err(e) => Err(e.into()),
                })
            }
        }
    }
}

impl<F, C, T> fmt::Debug for ResponseFuture<F, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
