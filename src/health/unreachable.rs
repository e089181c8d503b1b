//! Which errors prove that an endpoint cannot be reached.
//!
//! A request that fails with *connection refused* never reached a process: nothing listens
//! on the endpoint's port. *Host unreachable* and *network unreachable* say the same of the
//! machine or the route to it. Such a failure is proof that the next request sent there
//! fails too, which other failures are not: a 500 or a timeout can come from an overload
//! that moves with the traffic. The balancer uses the difference twice (see
//! [panic mode](super#panic-mode) and the [ejection cap](super::outlier)): an unreachable
//! endpoint is ejected whatever the cap, and panic mode does not send it traffic while
//! another endpoint can take it.
//!
//! The balancer applies [`is_unreachable`] to every error that its classifier judges a
//! failure: the `Err` of an endpoint's call, and the error of a failed readiness check. It
//! finds the `std::io::Error` however deeply the client wrapped it (hyper, hyper-util's
//! legacy client and tonic keep it in their error's [`source`](std::error::Error::source)
//! chain), and the TCP probe's connect errors. Timeouts, resets and errors after the
//! connection was made are ordinary failures.

use std::error::Error;
use std::io;

/// Whether `error`, or an error in its [`source`](Error::source) chain, is an I/O error
/// saying the endpoint could not be reached: connection refused, host unreachable, network
/// unreachable, or address not available.
///
/// ```
/// use std::io;
/// use tower_lb::health::unreachable::is_unreachable;
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// assert!(is_unreachable(&refused));
/// // Wrapped, as HTTP clients wrap it.
/// let wrapped = io::Error::new(io::ErrorKind::Other, refused);
/// assert!(is_unreachable(&wrapped));
/// assert!(!is_unreachable(&io::Error::from(io::ErrorKind::TimedOut)));
/// ```
pub fn is_unreachable(error: &(dyn Error + 'static)) -> bool {
    // A bound on the chain's length, in case an error's `source` points back at itself.
    let mut next = Some(error);
    for _ in 0..32 {
        let Some(error) = next else {
            return false;
        };
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if unreachable_kind(io.kind()) {
                return true;
            }
            // An io::Error can wrap a custom error that holds the real cause.
            if let Some(inner) = io.get_ref() {
                if is_unreachable(inner) {
                    return true;
                }
            }
        }
        next = error.source();
    }
    false
}

/// The I/O error kinds that mean the endpoint could not be reached.
pub(crate) fn unreachable_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error that hides its cause behind `source`, as client libraries do.
    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request failed")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    /// An error whose source is itself (a broken error type must not hang the check).
    #[derive(Debug)]
    struct Loop;

    impl fmt::Display for Loop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("loop")
        }
    }

    impl Error for Loop {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self)
        }
    }

    #[test]
    fn finds_the_io_error_anywhere_in_the_chain() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::AddrNotAvailable,
        ] {
            let deep = Wrapper(Box::new(Wrapper(Box::new(io::Error::from(kind)))));
            assert!(is_unreachable(&deep), "{kind:?}");
        }
        let custom = io::Error::other(Wrapper(Box::new(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        ))));
        assert!(is_unreachable(&custom));
    }

    #[test]
    fn other_failures_are_not_proof() {
        for kind in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            assert!(
                !is_unreachable(&Wrapper(Box::new(io::Error::from(kind)))),
                "{kind:?}"
            );
        }
        assert!(!is_unreachable(&Wrapper("a 500".into())));
        assert!(!is_unreachable(&Loop));
    }
}
