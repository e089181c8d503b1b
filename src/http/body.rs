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
    ///
    /// When the classifier left the verdict to the trailers ([`Outcome::Trailers`], a gRPC
    /// response whose status is not in its head), the body records it: by the
    /// `grpc-status` of its trailers frame; as `UNKNOWN` when it ends without trailers; as a
    /// failure when it yields an error. Dropped before then, the request counts as cancelled.
    ///
    /// [`Outcome::Trailers`]: crate::classify::Outcome::Trailers
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
            Poll::Pending => {}
            Poll::Ready(None) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.record_trailers(None);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.record_body_error();
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(guard)) = (frame.trailers_ref(), this.guard.as_mut()) {
                    guard.record_trailers(Some(trailers));
                    // gRPC servers send their load report in the trailers (gRFC A51).
                    #[cfg(feature = "orca")]
                    if guard.load().keeps_load_reports() {
                        if let Some(report) = crate::orca::LoadReport::from_headers(trailers) {
                            guard.load().record_load_report(report);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    if let Some(mut guard) = this.guard.take() {
                        guard.record_trailers(None);
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::classify::{GrpcCodes, Outcome};
    use crate::endpoint::Load;

    type Scripted = Result<Frame<Bytes>, &'static str>;
    type Frames = Vec<Scripted>;
    type Body = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Scripted>>>;

    /// A response body of `frames`, tracked with a guard whose verdict was `outcome`.
    fn tracked(load: &Arc<Load>, outcome: Outcome, frames: Frames) -> TrackedBody<Body> {
        let mut guard = InFlight::new(load.clone(), 0);
        guard.record(outcome);
        let body = StreamBody::new(futures_util::stream::iter(frames));
        OnBodyEnd
            .track(http::Response::new(body), guard)
            .into_body()
    }

    fn message() -> Scripted {
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))
    }

    fn status(code: &'static str) -> Scripted {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        Ok(Frame::trailers(trailers))
    }

    const DEFERRED: Outcome = Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES);

    #[tokio::test]
    async fn trailers_decide_a_deferred_verdict() {
        let load = Arc::new(Load::default());
        for (frames, failures) in [
            (vec![message(), status("0")], 0),
            (vec![message(), status("14")], 1),
            (vec![status("13")], 2),
            (vec![message(), status("5")], 2),
            // Ends without trailers, or without a status in them: UNKNOWN.
            (vec![message()], 3),
            (vec![], 4),
            (vec![Ok(Frame::trailers(http::HeaderMap::new()))], 5),
            // A body error.
            (vec![message(), Err("reset")], 6),
        ] {
            let n = frames.len();
            let _ = tracked(&load, DEFERRED, frames).collect().await;
            assert_eq!(load.failures(), failures, "{n} frames");
            assert_eq!(load.in_flight(), 0);
        }
        assert_eq!((load.completed(), load.cancelled()), (8, 0));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_trailers_is_cancelled() {
        let load = Arc::new(Load::default());
        let mut body = tracked(&load, DEFERRED, vec![message(), status("14")]);
        body.frame().await.unwrap().unwrap();
        assert_eq!(load.in_flight(), 1);
        drop(body);
        assert_eq!(
            (
                load.in_flight(),
                load.completed(),
                load.failures(),
                load.cancelled()
            ),
            (0, 0, 0, 1)
        );
    }

    #[tokio::test]
    async fn a_verdict_of_the_head_stands() {
        let load = Arc::new(Load::default());
        let _ = tracked(&load, Outcome::Success, vec![message(), status("14")])
            .collect()
            .await;
        let _ = tracked(&load, Outcome::Failure, vec![message(), status("0")])
            .collect()
            .await;
        let _ = tracked(&load, Outcome::Success, vec![message(), Err("reset")])
            .collect()
            .await;
        assert_eq!((load.completed(), load.failures()), (3, 1));
    }
}
