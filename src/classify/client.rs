//! Errors that the caller caused: its own request body failed.
//!
//! A request whose body fails on the way to the endpoint (the client of a proxy aborted its
//! upload, sent a malformed chunk, or stalled past a timeout) says nothing about the
//! endpoint. HTTP clients still report it as the request's error: hyper's is *error from
//! user's Body stream*, with the body's error as its [`source`](Error::source). Counted as
//! a failure, such errors let any client eject healthy endpoints, one after the other, by
//! aborting uploads.
//!
//! Wrap the request body so that its errors are a [`ClientBodyError`] (with feature `http`,
//! [`http::ClientBody`](crate::http::ClientBody) does it for any `http_body::Body`). The
//! balancer looks for one in the [`source`](Error::source) chain of every error its
//! classifier judges a failure, whatever the classifier, and records
//! [`Outcome::Ignored`](super::Outcome::Ignored) instead: neither a failure nor a success
//! of the endpoint. [`ClientBodyError::find`] finds it for the caller too, to answer the
//! client (a proxy: 400 for a malformed body, nothing for an aborted one).

use std::error::Error;
use std::fmt;

use crate::error::BoxError;

/// The request body failed: an error of the caller's, not of the endpoint. See the
/// [module docs](self).
///
/// ```
/// use std::io;
/// use tower_lb::classify::ClientBodyError;
///
/// let aborted = io::Error::from(io::ErrorKind::UnexpectedEof);
/// // As an HTTP client reports it: its own error, the body's as the source.
/// let reported = io::Error::new(io::ErrorKind::Other, ClientBodyError::new(aborted));
/// let found = ClientBodyError::find(&reported).unwrap();
/// assert!(found.get_ref().is::<io::Error>());
/// assert!(ClientBodyError::find(&io::Error::from(io::ErrorKind::TimedOut)).is_none());
/// ```
#[derive(Debug)]
pub struct ClientBodyError {
    source: BoxError,
}

impl ClientBodyError {
    /// Marks `source`, an error of the request body, as the caller's.
    pub fn new(source: impl Into<BoxError>) -> Self {
        ClientBodyError {
            source: source.into(),
        }
    }

    /// The body's error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The body's error, owned.
    pub fn into_inner(self) -> BoxError {
        self.source
    }

    /// The first `ClientBodyError` in `error` and its [`source`](Error::source) chain
    /// (also inside `std::io::Error`s that wrap one), if any.
    pub fn find<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a ClientBodyError> {
        // A bound on the chain's length, in case an error's `source` points back at itself.
        let mut next = Some(error);
        for _ in 0..32 {
            let error = next?;
            if let Some(found) = error.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            if let Some(inner) = error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                if let Some(found) = inner.downcast_ref::<ClientBodyError>() {
                    return Some(found);
                }
            }
            next = error.source();
        }
        None
    }
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body failed (an error of the client, not of the endpoint)")
    }
}

impl Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that hides its cause behind `source`, as client libraries do.
    #[derive(Debug)]
    struct Wrapper(BoxError);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error from user's Body stream")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn found_at_any_depth_and_only_there() {
        let direct = ClientBodyError::new("reset");
        assert!(ClientBodyError::find(&direct).is_some());
        let deep = Wrapper(Box::new(Wrapper(Box::new(ClientBodyError::new("reset")))));
        assert_eq!(
            ClientBodyError::find(&deep).map(|e| e.get_ref().to_string()),
            Some("reset".to_owned())
        );
        // The endpoint's errors are not the client's, even when they wrap a body's error
        // that is not marked.
        let unmarked = Wrapper(Box::new(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof,
        )));
        assert!(ClientBodyError::find(&unmarked).is_none());
        assert_eq!(
            ClientBodyError::new("x").into_inner().to_string(),
            "x".to_owned()
        );
    }
}
