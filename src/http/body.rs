use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::completion::{InFlight, TrackCompletion};

/// Moves the [`InFlight`] guard into the response body. See the [module docs](super).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnBodyEnd;

impl<B> TrackCompletion<http::Response<B>> for OnBodyEnd {
    type Output = http::Response<TrackedBody<B>>;

    fn track(&self, response: http::Response<B>, guard: InFlight) -> Self::Output {
        response.map(|inner| TrackedBody {
            inner,
            guard: Some(guard),
        })
    }
}

pin_project! {
    /// A response body that releases its request's in-flight count when it ends.
    ///
    /// The count is released when the body reports its end (`is_end_stream`, or a `None`
    /// frame), when it yields an error, or when it is dropped, whichever comes first.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B> TrackedBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_frame(cx);
        match &result {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.guard.take();
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.guard.take();
            }
            _ => {}
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
