//! Deciding whether a request succeeded or failed.
//!
//! The balancer classifies every completed request with a [`Classify`] implementation. The
//! result feeds each endpoint's failure count and, for latency-aware strategies, the latency
//! estimate: a failure counts as a slow response, never as a fast success.
//!
//! | classifier | failure when |
//! |---|---|
//! | [`DefaultClassifier`] | the service returned `Err` (unless the caller's request body caused it: [see below](#errors-of-the-callers-request-body)); an `http::Response` with status 5xx or 429; a gRPC response whose `grpc-status` is `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE` or `DATA_LOSS`, or that ends without one |
//! | [`GrpcClassifier`] | as the default, with the gRPC codes you choose |
//! | [`ErrorsAsFailures`] | the service returned `Err` (any response type) |
//! | [`classify_fn`]`(f)`, for any `Fn(&Result<Res, E>) -> Outcome` | the closure says so |
//!
//! [`DefaultClassifier`] understands `http::Response<B>` only, which covers hyper, reqwest,
//! axum and tonic (gRPC) services. For services with other response types, choose
//! [`ErrorsAsFailures`] or a closure in [`classify_fn`] with [`Builder::classify`](crate::Builder::classify).
//!
//! # gRPC
//!
//! gRPC answers with HTTP 200 and puts the call's status in `grpc-status`, so the HTTP rule
//! alone would count every failing call as a success. The default classifier reads
//! responses whose `content-type` is `application/grpc` by their gRPC status instead (the
//! rules, and the conventions they follow, are in the [`grpc`] module docs). Where that
//! status is decides when the verdict is known:
//!
//! - **In the response head** (a *trailers-only* response): the call failed before any
//!   message. tonic sends every `Err(Status)` that a unary handler returns this way, and so
//!   do servers that reject a call (unknown method, overload). Judged at once, with any
//!   [completion policy](crate::completion).
//! - **In the trailers**, after the messages: every successful call, and a stream that fails
//!   part way. The head's verdict is then [`Outcome::Trailers`]: decided by the trailers.
//!   - With [`OnBodyEnd`](crate::http::OnBodyEnd) (feature `http`) the response body
//!     records the verdict when its trailers arrive; a body that ends without trailers is
//!     `UNKNOWN`, and a body that fails is a failure. **Use `OnBodyEnd` for gRPC.**
//!   - With [`OnResponse`](crate::completion::OnResponse), the default, the request is over
//!     when the head arrives, before the trailers: such a response counts as a success. A
//!     streaming call that fails after its first message is then not seen as a failure;
//!     calls that fail before any message are.
//!
//! The latency sample is always the head's (the time to the first response, as for any
//! HTTP response); when the trailers report a failure, the failure penalty of peak-EWMA is
//! added then. A body dropped before its trailers counts as cancelled.
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use tower_lb::Balance;
//! use tower_lb::http::OnBodyEnd;
//!
//! // gRPC statuses in the trailers are judged too; the default classifier reads them.
//! let builder = Balance::builder().track_completion(OnBodyEnd);
//! # drop(builder);
//! # }
//! ```
//!
//! # Errors of the caller's request body
//!
//! A request can fail because of what the caller sent: the client of a proxy aborts its
//! upload, sends a malformed chunk, or stalls past a timeout. HTTP clients report that as
//! the request's error, and counted against the endpoint it would let any client eject
//! healthy endpoints by aborting uploads. Wrap request bodies in
//! [`http::ClientBody`](crate::http::ClientBody) (or mark their errors with
//! [`ClientBodyError`] yourself): when the classifier judges an `Err` a failure and a
//! `ClientBodyError` is in its [`source`](std::error::Error::source) chain, the balancer
//! records [`Outcome::Ignored`] instead, whichever classifier it uses (as it looks for
//! [unreachable](crate::health::unreachable) endpoints in the same errors). Such a request
//! counts neither as a failure nor as a success: no failure in a row, no success on
//! probation, no latency sample, no failure penalty; it is counted in
//! [`EndpointStats::ignored`](crate::EndpointStats::ignored). See the [`client`] module.
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_lb::http::ClientBody;
//!
//! // The body a proxy forwards: its errors are the client's, never the endpoint's.
//! let request = http::Request::new(ClientBody::new(Full::new(Bytes::from("upload"))));
//! # drop(request);
//! # }
//! ```

pub mod client;
pub mod grpc;

pub use client::ClientBodyError;
pub use grpc::{grpc_status, is_grpc, GrpcClassifier, GrpcCode, GrpcCodes};

/// The verdict on one completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The request succeeded.
    Success,
    /// The request failed; it counts against the endpoint.
    Failure,
    /// Decided by the `grpc-status` of the response's trailers: a failure when its code is
    /// in the set (a missing status is `UNKNOWN`). What the classifiers in this module
    /// return for a gRPC response whose head carries no status.
    ///
    /// With [`OnBodyEnd`](crate::http::OnBodyEnd) the verdict is recorded when the body
    /// ends; with [`OnResponse`](crate::completion::OnResponse) it is a success. A result
    /// that is an `Err` has no trailers: it is judged as a body that ended without them. See
    /// the [module docs](self#grpc).
    Trailers(GrpcCodes),
    /// The result says nothing about the endpoint: neither a success nor a failure. No
    /// failure in a row is counted or reset, no success on probation, no latency sample;
    /// the request counts in [`EndpointStats::ignored`](crate::EndpointStats::ignored),
    /// not in `completed`. The balancer records it for an `Err` judged a failure that the
    /// caller's own request body caused (see the
    /// [module docs](self#errors-of-the-callers-request-body)); a classifier of your own
    /// can return it too (say, for a status that means the client went away).
    Ignored,
}

/// Decides whether a result of an endpoint's service is a failure.
///
/// A classifier must fit the endpoint service's results. The default one reads
/// `http::Response`s; with a service that answers anything else the balancer is not a
/// `Service`, and the compiler says which classifier to choose instead:
///
/// ```compile_fail,E0277
/// use tower::ServiceExt;
/// use tower_lb::{discover, Balance};
///
/// # async fn demo() {
/// let strings = tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>("hi") });
/// let mut balance = Balance::builder() // DefaultClassifier
///     .build(discover::static_list([("a", strings)]))
///     .unwrap();
/// // error[E0277]: `DefaultClassifier` cannot classify results of type
/// //               `Result<&str, std::io::Error>`
/// //   note: DefaultClassifier only understands http::Response; for other response types
/// //         use `.classify(tower_lb::classify::ErrorsAsFailures)` on the builder
/// ServiceExt::<()>::ready(&mut balance).await;
/// # }
/// ```
///
/// (With method syntax, `balance.ready()`, rustc reports E0599, "the method `ready` exists
/// for struct `Balance<..>`, but its trait bounds were not satisfied", without the hint:
/// it does not know the request type there.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify results of type `Result<{Res}, {E}>`",
    note = "DefaultClassifier only understands http::Response; for other response types use \
            `.classify(tower_lb::classify::ErrorsAsFailures)` on the builder"
)]
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;

    /// The server's load report in a response's head (feature `orca`), if it carries one.
    ///
    /// Called only when the balancer reads reports (see [`orca`](crate::orca)). The default
    /// finds none; [`DefaultClassifier`] and [`GrpcClassifier`] read an `http::Response`'s
    /// headers with [`LoadReport::from_headers`](crate::orca::LoadReport::from_headers). A
    /// closure classifier finds none: wrap it in
    /// [`ReadReports`](crate::orca::ReadReports) to read HTTP reports.
    #[cfg(feature = "orca")]
    fn load_report(
        &self,
        response: &Res,
    ) -> Option<Result<crate::orca::LoadReport, crate::orca::OrcaError>> {
        let _ = response;
        None
    }
}

/// `Err`, HTTP responses with status 5xx or 429, and gRPC responses with a failing
/// `grpc-status` are failures.
///
/// A response with HTTP status 200 and `content-type: application/grpc` is judged by its
/// gRPC status with [`GrpcCodes::DEFAULT_FAILURES`] (in its head, or else in its trailers:
/// see the [module docs](self#grpc)); any other response by its HTTP status
/// ([`status_outcome`]). A plain HTTP response costs at most one header lookup.
/// [`GrpcClassifier`] chooses other gRPC codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<B, E> Classify<http::Response<B>, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => grpc::response_outcome(response, GrpcCodes::DEFAULT_FAILURES),
            Err(_) => Outcome::Failure,
        }
    }

    #[cfg(feature = "orca")]
    #[inline]
    fn load_report(
        &self,
        response: &http::Response<B>,
    ) -> Option<Result<crate::orca::LoadReport, crate::orca::OrcaError>> {
        crate::orca::LoadReport::from_headers(response.headers())
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

/// A [`Classify`] from a closure that judges each result.
///
/// ```
/// use tower_lb::classify::{classify_fn, Outcome};
/// use tower_lb::Balance;
///
/// // A service that answers `Ok(code)`: codes 500 and above are failures.
/// let by_code = classify_fn(|result: &Result<u16, std::io::Error>| match result {
///     Ok(code) if *code < 500 => Outcome::Success,
///     _ => Outcome::Failure,
/// });
/// let builder = Balance::builder().classify(by_code);
/// # drop(builder);
/// ```
///
/// A closure is wrapped rather than taken as it is so that a classifier that does not fit
/// the service's results (the default classifier and a service that does not answer
/// `http::Response`, say) is reported by the compiler as such, with the fix, instead of
/// as "expected a closure".
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

/// A closure used as a [`Classify`]; made by [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(F);

impl<F> std::fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(&Result<Res, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        (self.0)(result)
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

    /// A gRPC response: HTTP `status`, `content-type: application/grpc` and, if given, a
    /// `grpc-status` in the head (a trailers-only response).
    fn grpc(status: u16, grpc_status: Option<&str>) -> Result<http::Response<()>, ()> {
        let mut response = http::Response::builder()
            .status(status)
            .header("content-type", "application/grpc");
        if let Some(code) = grpc_status {
            response = response.header("grpc-status", code);
        }
        Ok(response.body(()).unwrap())
    }

    #[test]
    fn every_grpc_code_in_the_head() {
        use GrpcCode::*;
        let failing = [
            Unknown,
            DeadlineExceeded,
            ResourceExhausted,
            Internal,
            Unavailable,
            DataLoss,
        ];
        for code in GrpcCode::ALL {
            let expected = if failing.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let text = code.as_i32().to_string();
            assert_eq!(
                DefaultClassifier.classify(&grpc(200, Some(&text))),
                expected,
                "{code}"
            );
            assert_eq!(
                GrpcClassifier::new().classify(&grpc(200, Some(&text))),
                expected,
                "{code}"
            );
        }
        // The ones the issue names.
        for (code, outcome) in [
            ("14", Outcome::Failure),
            ("3", Outcome::Success),
            ("5", Outcome::Success),
            ("1", Outcome::Success),
            ("12", Outcome::Success),
            ("0", Outcome::Success),
        ] {
            assert_eq!(
                DefaultClassifier.classify(&grpc(200, Some(code))),
                outcome,
                "{code}"
            );
        }
    }

    #[test]
    fn a_garbage_grpc_status_in_the_head_is_unknown() {
        for garbage in ["", "17", "014", "-1", "UNAVAILABLE", "1 4"] {
            assert_eq!(
                DefaultClassifier.classify(&grpc(200, Some(garbage))),
                Outcome::Failure,
                "{garbage:?}"
            );
            let lenient =
                GrpcClassifier::new().with_failures(GrpcCodes::NONE.with(GrpcCode::Unavailable));
            assert_eq!(
                lenient.classify(&grpc(200, Some(garbage))),
                Outcome::Success,
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn without_a_status_in_the_head_the_trailers_decide() {
        assert_eq!(
            DefaultClassifier.classify(&grpc(200, None)),
            Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES)
        );
        let mine = GrpcCodes::NONE.with(GrpcCode::NotFound);
        assert_eq!(
            GrpcClassifier::new()
                .with_failures(mine)
                .classify(&grpc(200, None)),
            Outcome::Trailers(mine)
        );
    }

    #[test]
    fn grpc_responses_with_another_http_status_follow_the_http_rule() {
        for (status, outcome) in [
            (503, Outcome::Failure),
            (502, Outcome::Failure),
            (500, Outcome::Failure),
            (429, Outcome::Failure),
            (404, Outcome::Success),
            (400, Outcome::Success),
            (204, Outcome::Success),
        ] {
            // Whatever grpc-status says, and whether or not there is one.
            for code in [None, Some("0"), Some("14")] {
                assert_eq!(
                    DefaultClassifier.classify(&grpc(status, code)),
                    outcome,
                    "{status} {code:?}"
                );
            }
        }
    }

    #[test]
    fn plain_http_ignores_grpc_status() {
        // No gRPC content type: a stray grpc-status header changes nothing.
        for (content_type, status) in [
            (None, 200),
            (Some("text/plain"), 200),
            (Some("application/grpc-web"), 200),
            (Some("application/json"), 503),
        ] {
            let mut response = http::Response::builder()
                .status(status)
                .header("grpc-status", "14");
            if let Some(value) = content_type {
                response = response.header("content-type", value);
            }
            let result: Result<_, ()> = Ok(response.body(()).unwrap());
            assert_eq!(
                DefaultClassifier.classify(&result),
                status_outcome(http::StatusCode::from_u16(status).unwrap()),
                "{content_type:?} {status}"
            );
        }
        let err: Result<http::Response<()>, ()> = Err(());
        assert_eq!(GrpcClassifier::new().classify(&err), Outcome::Failure);
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
        let odd = classify_fn(|r: &Result<u8, ()>| match r {
            Ok(n) if n % 2 == 1 => Outcome::Failure,
            _ => Outcome::Success,
        });
        assert_eq!(odd.classify(&Ok(3)), Outcome::Failure);
        assert_eq!(odd.classify(&Ok(4)), Outcome::Success);
    }
}
