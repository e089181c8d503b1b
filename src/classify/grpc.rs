//! gRPC status codes, and the classification of gRPC responses by their `grpc-status`.
//!
//! gRPC answers almost every call with HTTP 200: the call's status is the `grpc-status`
//! field, either in the response head (a *trailers-only* response: an error before any
//! message, such as a tonic handler returning `Err(Status)`) or in the trailers after the
//! messages (every successful call, and streams that fail part way). See the [parent
//! module](super#grpc) for how the balancer waits for trailers.
//!
//! # Which codes are failures
//!
//! A failure here means "this backend is unhealthy or overloaded": the signal outlier
//! detection and peak-EWMA's failure penalty act on. The default set,
//! [`GrpcCodes::DEFAULT_FAILURES`], follows the conventions of Envoy and gRPC:
//!
//! | code | failure | why |
//! |---|---|---|
//! | `UNKNOWN` (2) | yes | Envoy maps it to HTTP 500 for outlier detection (`Grpc::Utility::grpcToHttpStatus`); gRPC servers send it when a handler panics or throws |
//! | `DEADLINE_EXCEEDED` (4) | yes | HTTP 504 in Envoy's mapping; one of Envoy's gRPC retry conditions |
//! | `RESOURCE_EXHAUSTED` (8) | yes | HTTP 429 in Envoy's mapping (overload); a retry condition |
//! | `INTERNAL` (13) | yes | HTTP 500; a retry condition |
//! | `UNAVAILABLE` (14) | yes | HTTP 503; a retry condition, and gRPC's canonical "try another backend" |
//! | `DATA_LOSS` (15) | yes | HTTP 500 in Envoy's mapping |
//! | `CANCELLED` (1) | no | usually the caller's own cancellation; Envoy retries it (`retry_on: cancelled`) but maps it to 499, a client error |
//! | `UNIMPLEMENTED` (12) | no | the method is missing (a deployment or caller mistake, never retried by gRPC); Envoy maps it to 501, but a backend that lacks one method is not unhealthy |
//! | `OK` and the other answers (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `UNAUTHENTICATED`) | no | the application's answer to this request (4xx in Envoy's mapping) |
//!
//! Sources: Envoy's `source/common/grpc/status.cc` (`grpcToHttpStatus`, which follows
//! Google's API design guide, <https://cloud.google.com/apis/design/errors>) and its
//! `x-envoy-retry-grpc-on` conditions (`cancelled`, `deadline-exceeded`, `internal`,
//! `resource-exhausted`, `unavailable`); gRPC's status code list,
//! <https://grpc.github.io/grpc/core/md_doc_statuscodes.html>.
//!
//! # Reading `grpc-status`
//!
//! The value is read as tonic reads it (`tonic::Code::from_bytes`): `0` to `16` in decimal,
//! without sign, spaces or leading zeros. Anything else (another number, garbage, an empty
//! value) is `UNKNOWN`, as gRPC's specification asks of unknown codes. A gRPC stream that
//! ends without `grpc-status` in its trailers (or without trailers) is `UNKNOWN` too: gRPC
//! over HTTP/2 requires the status in the trailers (tonic itself lets such a stream pass
//! as OK; the balancer follows the specification, so a backend that cuts its streams short
//! is noticed).
//!
//! # Which responses are gRPC
//!
//! A response is read as gRPC when its HTTP status is 200 and its `content-type` is
//! `application/grpc`, optionally followed by `+subtype` (`application/grpc+proto`) or
//! parameters (`;`), compared without regard to ASCII case. gRPC-Web
//! (`application/grpc-web`) is not: it carries its trailers inside the body, where the
//! balancer does not look. Any other response, including a gRPC one with an HTTP status
//! other than 200 (a proxy's 503, say), is judged by the HTTP rule: 5xx and 429 are
//! failures ([`status_outcome`]).
//!
//! # Example
//!
//! ```
//! use tower_lb::Balance;
//! use tower_lb::classify::{GrpcClassifier, GrpcCode, GrpcCodes};
//!
//! // Time-outs are the callers' own deadlines here: not a sign of a broken backend.
//! let classifier = GrpcClassifier::new()
//!     .with_failures(GrpcCodes::DEFAULT_FAILURES.without(GrpcCode::DeadlineExceeded));
//! let builder = Balance::builder().classify(classifier);
//! # drop(builder);
//! ```

use std::fmt;

use super::{status_outcome, Classify, Outcome};

/// A gRPC status code, as carried by `grpc-status`.
///
/// The discriminants are the codes' numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// 2: an unknown error; also what a missing or unreadable `grpc-status` means.
    Unknown = 2,
    /// 3: the client specified an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired before the operation completed.
    DeadlineExceeded = 4,
    /// 5: a requested entity was not found.
    NotFound = 5,
    /// 6: the entity the client tried to create already exists.
    AlreadyExists = 6,
    /// 7: the caller may not execute this operation.
    PermissionDenied = 7,
    /// 8: a resource (a quota, the server's capacity) is exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in the state the operation requires.
    FailedPrecondition = 9,
    /// 10: the operation was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// 11: the operation went past the valid range.
    OutOfRange = 11,
    /// 12: the operation is not implemented or not supported by this server.
    Unimplemented = 12,
    /// 13: an internal error of the server.
    Internal = 13,
    /// 14: the service is currently unavailable.
    Unavailable = 14,
    /// 15: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// 16: the request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in the order of their numbers.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code with this number, or `None` outside `0..=16`.
    pub const fn from_i32(code: i32) -> Option<GrpcCode> {
        if code >= 0 && code < GrpcCode::ALL.len() as i32 {
            Some(GrpcCode::ALL[code as usize])
        } else {
            None
        }
    }

    /// Reads a `grpc-status` value: `0` to `16` in decimal, without sign, spaces or leading
    /// zeros (as tonic reads it). Anything else is [`Unknown`](GrpcCode::Unknown).
    pub const fn from_bytes(value: &[u8]) -> GrpcCode {
        let code = match value {
            [d @ b'0'..=b'9'] => (*d - b'0') as i32,
            [b'1', d @ b'0'..=b'6'] => 10 + (*d - b'0') as i32,
            _ => return GrpcCode::Unknown,
        };
        match GrpcCode::from_i32(code) {
            Some(code) => code,
            None => GrpcCode::Unknown,
        }
    }

    /// The code's number.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code's name in gRPC's documentation, such as `"UNAVAILABLE"`.
    pub const fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`GrpcCode`]s: the codes a classifier counts as failures.
///
/// A bit set in one `u32`: copying, testing and building one costs next to nothing, and
/// every operation is `const`.
///
/// ```
/// use tower_lb::classify::{GrpcCode, GrpcCodes};
///
/// let codes = GrpcCodes::NONE.with(GrpcCode::Unavailable).with(GrpcCode::Internal);
/// assert!(codes.contains(GrpcCode::Unavailable));
/// assert!(!codes.contains(GrpcCode::NotFound));
/// assert_eq!(codes, [GrpcCode::Internal, GrpcCode::Unavailable].into_iter().collect());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// No code.
    pub const NONE: GrpcCodes = GrpcCodes(0);

    /// The codes that the default classifier counts as failures: `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`.
    /// See the [module docs](self#which-codes-are-failures) for why.
    pub const DEFAULT_FAILURES: GrpcCodes = GrpcCodes::NONE
        .with(GrpcCode::Unknown)
        .with(GrpcCode::DeadlineExceeded)
        .with(GrpcCode::ResourceExhausted)
        .with(GrpcCode::Internal)
        .with(GrpcCode::Unavailable)
        .with(GrpcCode::DataLoss);

    /// This set and `code`.
    #[must_use]
    pub const fn with(self, code: GrpcCode) -> GrpcCodes {
        GrpcCodes(self.0 | (1 << code as u32))
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: GrpcCode) -> GrpcCodes {
        GrpcCodes(self.0 & !(1 << code as u32))
    }

    /// Whether `code` is in the set.
    #[inline]
    pub const fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code as u32) != 0
    }

    /// Whether the set holds no code.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in the set, in the order of their numbers.
    pub fn iter(self) -> impl Iterator<Item = GrpcCode> {
        GrpcCode::ALL
            .into_iter()
            .filter(move |&code| self.contains(code))
    }
}

impl FromIterator<GrpcCode> for GrpcCodes {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(codes: I) -> Self {
        codes.into_iter().fold(GrpcCodes::NONE, GrpcCodes::with)
    }
}

impl fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Classifies gRPC responses by their `grpc-status`, with the failure codes you choose;
/// other results as [`DefaultClassifier`](super::DefaultClassifier) does.
///
/// `GrpcClassifier::new()` judges exactly as the default classifier. See the [module
/// docs](self) for the rules, and the [parent module](super#grpc) for statuses that arrive
/// in trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcClassifier {
    failures: GrpcCodes,
}

impl GrpcClassifier {
    /// Counts [`GrpcCodes::DEFAULT_FAILURES`] as failures.
    pub const fn new() -> Self {
        GrpcClassifier {
            failures: GrpcCodes::DEFAULT_FAILURES,
        }
    }

    /// Counts the codes in `failures` as failures, and no other.
    #[must_use]
    pub const fn with_failures(mut self, failures: GrpcCodes) -> Self {
        self.failures = failures;
        self
    }

    /// The codes counted as failures.
    pub const fn failures(&self) -> GrpcCodes {
        self.failures
    }
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        GrpcClassifier::new()
    }
}

impl<B, E> Classify<http::Response<B>, E> for GrpcClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => response_outcome(response, self.failures),
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

/// The verdict on one HTTP response, gRPC-aware, with `failures` as the failing gRPC codes.
///
/// A response that is not a 200 costs no header lookup; a plain HTTP 200, one (its
/// `content-type`).
#[inline]
pub(crate) fn response_outcome<B>(response: &http::Response<B>, failures: GrpcCodes) -> Outcome {
    let status = response.status();
    if status != http::StatusCode::OK || !is_grpc(response.headers()) {
        return status_outcome(status);
    }
    match grpc_status(response.headers()) {
        Some(code) => code_outcome(code, failures),
        None => Outcome::Trailers(failures),
    }
}

/// `Failure` when `code` is in `failures`.
#[inline]
pub(crate) fn code_outcome(code: GrpcCode, failures: GrpcCodes) -> Outcome {
    if failures.contains(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The verdict on the end of a gRPC response: its trailers, or `None` when the body ended
/// without any. A missing or unreadable `grpc-status` is `UNKNOWN`.
#[inline]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn trailers_outcome(trailers: Option<&http::HeaderMap>, failures: GrpcCodes) -> Outcome {
    let code = trailers.and_then(grpc_status).unwrap_or(GrpcCode::Unknown);
    code_outcome(code, failures)
}

/// Whether headers describe a gRPC response: `content-type` is `application/grpc`, alone or
/// followed by `+` or `;`, in any ASCII case. `application/grpc-web` is not.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in headers or trailers: `None` when there is none, and
/// [`GrpcCode::Unknown`] when its value is not a code (see [`GrpcCode::from_bytes`]).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<GrpcCode> {
    headers
        .get("grpc-status")
        .map(|value| GrpcCode::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for &(name, value) in pairs {
            map.append(name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn codes_read_as_tonic_reads_them() {
        for code in GrpcCode::ALL {
            let text = code.as_i32().to_string();
            assert_eq!(GrpcCode::from_bytes(text.as_bytes()), code, "{text}");
            assert_eq!(GrpcCode::from_i32(code.as_i32()), Some(code));
        }
        for garbage in [
            &b""[..],
            b"17",
            b"99",
            b"014",
            b"00",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"x",
            b"1x",
            b"100",
            b"\xff",
            b"4294967310",
        ] {
            assert_eq!(
                GrpcCode::from_bytes(garbage),
                GrpcCode::Unknown,
                "{garbage:?}"
            );
        }
        assert_eq!(GrpcCode::from_i32(-1), None);
        assert_eq!(GrpcCode::from_i32(17), None);
        assert_eq!(GrpcCode::from_i32(i32::MAX), None);
        assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
    }

    #[test]
    fn default_failures_are_the_documented_codes() {
        let failing: Vec<GrpcCode> = GrpcCodes::DEFAULT_FAILURES.iter().collect();
        assert_eq!(
            failing,
            [
                GrpcCode::Unknown,
                GrpcCode::DeadlineExceeded,
                GrpcCode::ResourceExhausted,
                GrpcCode::Internal,
                GrpcCode::Unavailable,
                GrpcCode::DataLoss,
            ]
        );
        assert_eq!(
            format!(
                "{:?}",
                GrpcCodes::NONE.with(GrpcCode::Ok).with(GrpcCode::DataLoss)
            ),
            "{Ok, DataLoss}"
        );
    }

    #[test]
    fn code_sets() {
        let all: GrpcCodes = GrpcCode::ALL.into_iter().collect();
        assert!(GrpcCode::ALL.iter().all(|&c| all.contains(c)));
        let none = GrpcCode::ALL.into_iter().fold(all, GrpcCodes::without);
        assert!(none.is_empty());
        assert_eq!(none, GrpcCodes::NONE);
        let one = GrpcCodes::NONE
            .with(GrpcCode::Aborted)
            .with(GrpcCode::Aborted);
        assert_eq!(one.iter().collect::<Vec<_>>(), [GrpcCode::Aborted]);
        assert!(!one.without(GrpcCode::Aborted).contains(GrpcCode::Aborted));
    }

    #[test]
    fn content_types() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc+json", true),
            ("application/grpc;charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/grp", false),
            ("text/html", false),
        ] {
            assert_eq!(
                is_grpc(&headers(&[("content-type", value)])),
                grpc,
                "{value}"
            );
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
    }

    #[test]
    fn trailers_decide_by_their_status() {
        let failures = GrpcCodes::DEFAULT_FAILURES;
        for code in GrpcCode::ALL {
            let text = code.as_i32().to_string();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", text.parse().unwrap());
            trailers.insert("grpc-message", "why".parse().unwrap());
            assert_eq!(
                trailers_outcome(Some(&trailers), failures),
                code_outcome(code, failures),
                "{code}"
            );
        }
        // No trailers, trailers without a status, or a garbage status: UNKNOWN.
        let unknown = |failures| code_outcome(GrpcCode::Unknown, failures);
        for trailers in [
            None,
            Some(headers(&[("grpc-message", "x")])),
            Some(headers(&[("grpc-status", "fourteen")])),
        ] {
            assert_eq!(
                trailers_outcome(trailers.as_ref(), failures),
                Outcome::Failure
            );
            let lenient = failures.without(GrpcCode::Unknown);
            assert_eq!(
                trailers_outcome(trailers.as_ref(), lenient),
                unknown(lenient)
            );
            assert_eq!(unknown(lenient), Outcome::Success);
        }
    }
}
