use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::ClientBodyError;
use crate::error::BoxError;

pin_project! {
    /// A request body whose errors are the caller's: each is a [`ClientBodyError`], so
    /// that the balancer records a request that fails because of it as neither a failure
    /// nor a success of the endpoint ([`Outcome::Ignored`]).
    ///
    /// For the bodies a proxy forwards (hyper's `Incoming`, for one): a client that aborts
    /// its upload, sends a malformed chunk or stalls is no reason to eject the upstream.
    /// The HTTP client reports the body's error as the request's (hyper: *error from
    /// user's Body stream*); [`ClientBodyError::find`] finds it in that error's source
    /// chain. See [`classify`](crate::classify#errors-of-the-callers-request-body).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use http_body::Frame;
    /// use tower_lb::classify::ClientBodyError;
    /// use tower_lb::http::ClientBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let aborted = futures::stream::iter([
    ///     Ok(Frame::data(Bytes::from("part"))),
    ///     Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
    /// ]);
    /// let body = ClientBody::new(StreamBody::new(aborted));
    /// let error = body.collect().await.unwrap_err();
    /// assert!(ClientBodyError::find(&error).is_some());
    /// # }
    /// ```
    ///
    /// [`Outcome::Ignored`]: crate::classify::Outcome::Ignored
    #[derive(Debug)]
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> ClientBody<B> {
    /// Wraps a request body.
    pub fn new(inner: B) -> Self {
        ClientBody { inner }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = ClientBodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = ready!(self.project().inner.poll_frame(cx));
        Poll::Ready(polled.map(|result| result.map_err(ClientBodyError::new)))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
