//! What can be wrong with a load report.

use std::fmt;

/// Why a load report was rejected.
///
/// A rejected report is ignored: the endpoint keeps its previous report, and the error is
/// counted in its [`EndpointStats::load_report_errors`](crate::EndpointStats::load_report_errors).
/// Parsing never panics, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrcaError {
    /// More than one report in one header map: two values of a report header, or two of the
    /// report headers (`endpoint-load-metrics`, `endpoint-load-metrics-bin`,
    /// `x-endpoint-load-metrics-bin`). Which one the server meant cannot be told.
    TwoReports,
    /// The header value is longer than [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN) bytes.
    TooLarge {
        /// The length of the value, in bytes.
        len: usize,
    },
    /// The header value is empty (or only its prefix).
    Empty,
    /// `endpoint-load-metrics` starts with none of `TEXT `, `JSON ` and `BIN `; the
    /// first word is given (at most 16 bytes, lossily decoded).
    UnknownFormat(String),
    /// The header value is not text (bytes outside visible ASCII where text is expected).
    NotText,
    /// The base64 of a binary form does not decode.
    Base64,
    /// The decoded bytes are not an `OrcaLoadReport` protobuf message.
    Protobuf(String),
    /// The `JSON ` form is not valid JSON, or not an object, or a field has the wrong type.
    Json(String),
    /// A field that `OrcaLoadReport` does not have: an unknown JSON field, or a `TEXT` key
    /// that is not a metric name.
    UnknownField(String),
    /// A `TEXT` entry without a name (`=0.5`, `named_metrics.=1`).
    EmptyName,
    /// A `TEXT` entry without a value (`cpu_utilization`, `cpu_utilization=`).
    MissingValue(String),
    /// The same metric twice in one `TEXT` report.
    Duplicate(String),
    /// A metric whose value is not a non-negative finite number.
    BadValue {
        /// The metric, as the report names it (`cpu_utilization`, `named_metrics.queue`).
        metric: String,
        /// What is wrong with it.
        problem: ValueProblem,
    },
}

/// What is wrong with a metric's value (see [`OrcaError::BadValue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueProblem {
    /// Not a number at all (`0.5x`, `"high"`).
    NotANumber,
    /// NaN.
    NaN,
    /// Positive or negative infinity.
    Infinite,
    /// Below zero: utilizations, rates and costs are never negative.
    Negative,
}

impl OrcaError {
    pub(crate) fn bad(metric: &str, problem: ValueProblem) -> Self {
        OrcaError::BadValue {
            metric: metric.to_owned(),
            problem,
        }
    }
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueProblem::NotANumber => "is not a number",
            ValueProblem::NaN => "is NaN",
            ValueProblem::Infinite => "is infinite",
            ValueProblem::Negative => "is negative",
        })
    }
}

impl fmt::Display for OrcaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrcaError::TwoReports => {
                f.write_str("ORCA: more than one load report header in one response")
            }
            OrcaError::TooLarge { len } => write!(
                f,
                "ORCA: load report header of {len} bytes is over the limit of {} bytes",
                super::MAX_HEADER_LEN
            ),
            OrcaError::Empty => f.write_str("ORCA: empty load report header"),
            OrcaError::UnknownFormat(prefix) => write!(
                f,
                "ORCA: endpoint-load-metrics starts with {prefix:?}, not TEXT, JSON or BIN"
            ),
            OrcaError::NotText => f.write_str("ORCA: load report header is not visible ASCII"),
            OrcaError::Base64 => f.write_str("ORCA: binary load report is not valid base64"),
            OrcaError::Protobuf(e) => {
                write!(f, "ORCA: binary load report is not an OrcaLoadReport: {e}")
            }
            OrcaError::Json(e) => write!(f, "ORCA: JSON load report: {e}"),
            OrcaError::UnknownField(name) => {
                write!(f, "ORCA: {name:?} is not a field of OrcaLoadReport")
            }
            OrcaError::EmptyName => f.write_str("ORCA: TEXT load report entry without a name"),
            OrcaError::MissingValue(name) => {
                write!(f, "ORCA: TEXT load report entry {name:?} has no value")
            }
            OrcaError::Duplicate(name) => {
                write!(f, "ORCA: metric {name:?} appears twice in one load report")
            }
            OrcaError::BadValue { metric, problem } => {
                write!(f, "ORCA: the value of {metric:?} {problem}")
            }
        }
    }
}

impl std::error::Error for OrcaError {}
