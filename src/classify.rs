//! Deciding whether a request succeeded or failed.
//!
//! The balancer classifies every completed request with a [`Classify`] implementation. The
//! result feeds each endpoint's failure count and, for latency-aware strategies, the latency
//! estimate: a failure counts as a slow response, never as a fast success.
//!
//! | classifier | failure when |
//! |---|---|
//! | [`DefaultClassifier`] | the service returned `Err`, or an `http::Response` with status 5xx or 429 |
//! | [`ErrorsAsFailures`] | the service returned `Err` (any response type) |
//! | any `Fn(&Result<Res, E>) -> Outcome` | the closure says so |
//!
//! [`DefaultClassifier`] understands `http::Response<B>` only, which covers hyper, reqwest,
//! tonic and axum services. For services with other response types, choose
//! [`ErrorsAsFailures`] or a closure with [`Builder::classify`](crate::Builder::classify).

/// The verdict on one completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The request succeeded.
    Success,
    /// The request failed; it counts against the endpoint.
    Failure,
}

/// Decides whether a result of an endpoint's service is a failure.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify results of type `Result<{Res}, {E}>`",
    note = "DefaultClassifier only understands http::Response; for other response types use \
            `.classify(tower_lb::classify::ErrorsAsFailures)` on the builder"
)]
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

/// `Err`, and HTTP responses with status 5xx or 429, are failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<B, E> Classify<http::Response<B>, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => status_outcome(response.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// The default verdict for an HTTP status: 5xx and 429 (Too Many Requests) are failures.
#[inline]
pub fn status_outcome(status: http::StatusCode) -> Outcome {
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// Only `Err` is a failure; every response is a success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> Result<http::Response<()>, ()> {
        Ok(http::Response::builder().status(status).body(()).unwrap())
    }

    #[test]
    fn default_classifier_on_http() {
        for (status, outcome) in [
            (200, Outcome::Success),
            (302, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Failure),
            (500, Outcome::Failure),
            (503, Outcome::Failure),
        ] {
            assert_eq!(
                DefaultClassifier.classify(&response(status)),
                outcome,
                "{status}"
            );
        }
        let err: Result<http::Response<()>, ()> = Err(());
        assert_eq!(DefaultClassifier.classify(&err), Outcome::Failure);
    }

    #[test]
    fn errors_only_and_closures() {
        assert_eq!(
            ErrorsAsFailures.classify(&Ok::<u8, ()>(1)),
            Outcome::Success
        );
        assert_eq!(
            ErrorsAsFailures.classify(&Err::<u8, ()>(())),
            Outcome::Failure
        );
        let odd = |r: &Result<u8, ()>| match r {
            Ok(n) if n % 2 == 1 => Outcome::Failure,
            _ => Outcome::Success,
        };
        assert_eq!(odd.classify(&Ok(3)), Outcome::Failure);
        assert_eq!(odd.classify(&Ok(4)), Outcome::Success);
    }
}
