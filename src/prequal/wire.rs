//! The probe wire format: the path a probe asks, the two headers that answer it, and their
//! parser.
//!
//! The names are those of envoy-prequal and the `prequal-server` crate, so that this crate's
//! clients can probe their servers and theirs can probe this crate's:
//!
//! - a probe is `GET /prequal/probe` ([`PROBE_PATH`]);
//! - the answer carries `x-prequal-rif` ([`RIF_HEADER`]), the server's requests in flight, a
//!   decimal integer, and `x-prequal-latency-us` ([`LATENCY_HEADER`]), its latency estimate
//!   at that RIF in whole microseconds, a decimal integer. The body is empty.
//!
//! The same two headers may ride on ordinary responses (see
//! [`PrequalLayer::report_on_responses`](super::PrequalLayer::report_on_responses)).

use std::fmt;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The path probes ask by default: `/prequal/probe`.
pub const PROBE_PATH: &str = "/prequal/probe";

/// The header that carries the server's requests in flight: `x-prequal-rif`.
pub const RIF_HEADER: HeaderName = HeaderName::from_static(RIF_HEADER_NAME);

/// The header that carries the server's latency estimate in microseconds:
/// `x-prequal-latency-us`.
pub const LATENCY_HEADER: HeaderName = HeaderName::from_static(LATENCY_HEADER_NAME);

const RIF_HEADER_NAME: &str = "x-prequal-rif";
const LATENCY_HEADER_NAME: &str = "x-prequal-latency-us";

/// The largest RIF an answer may carry (2^32 - 1, the range of `prequal-server`'s `u32`); a
/// larger one is [`AnswerError::OutOfRange`].
pub const MAX_RIF: u64 = u32::MAX as u64;

/// The largest latency an answer may carry: one hour, in microseconds. A larger one is
/// [`AnswerError::OutOfRange`]: no request waits that long, and the bound keeps sums of
/// latencies far from overflow.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What a server says of its load in one probe answer (or on one response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProbeAnswer {
    /// Requests in flight at the server when it answered.
    pub rif: u64,
    /// The server's latency estimate at that RIF, in microseconds (0: no estimate yet).
    pub latency_us: u64,
}

impl ProbeAnswer {
    /// An answer with this RIF and latency estimate, both within what a reader accepts:
    /// the RIF at most [`MAX_RIF`], the latency cut to whole microseconds and at most
    /// [`MAX_LATENCY_US`] (a server whose oldest request has waited longer than an hour
    /// still answers, with the largest latency, instead of an answer clients reject).
    pub fn new(rif: u64, latency: Duration) -> Self {
        ProbeAnswer {
            rif: rif.min(MAX_RIF),
            latency_us: u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .min(MAX_LATENCY_US),
        }
    }

    /// The latency estimate as a `Duration`.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us)
    }

    /// Reads an answer from response headers.
    ///
    /// Both headers must be present, once each, and hold a decimal integer without sign,
    /// spaces or other characters, at most [`MAX_RIF`] and [`MAX_LATENCY_US`]; anything
    /// else is an [`AnswerError`] that names the header. It never panics.
    ///
    /// ```
    /// use tower_lb::prequal::{AnswerError, ProbeAnswer};
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-prequal-rif", "3".parse().unwrap());
    /// headers.insert("x-prequal-latency-us", "1500".parse().unwrap());
    /// assert_eq!(ProbeAnswer::from_headers(&headers), Ok(ProbeAnswer { rif: 3, latency_us: 1500 }));
    ///
    /// headers.insert("x-prequal-rif", "-1".parse().unwrap());
    /// assert!(matches!(ProbeAnswer::from_headers(&headers), Err(AnswerError::NotANumber { .. })));
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, AnswerError> {
        Ok(ProbeAnswer {
            rif: read(headers, RIF_HEADER_NAME, MAX_RIF)?,
            latency_us: read(headers, LATENCY_HEADER_NAME, MAX_LATENCY_US)?,
        })
    }

    /// Whether the headers carry an answer at all (either header present).
    pub fn is_in(headers: &HeaderMap) -> bool {
        headers.contains_key(RIF_HEADER) || headers.contains_key(LATENCY_HEADER)
    }

    /// Writes the answer into `headers`, replacing any earlier values.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RIF_HEADER, HeaderValue::from(self.rif));
        headers.insert(LATENCY_HEADER, HeaderValue::from(self.latency_us));
    }
}

/// Reads one header as a bounded decimal integer.
fn read(headers: &HeaderMap, header: &'static str, max: u64) -> Result<u64, AnswerError> {
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Err(AnswerError::Missing { header });
    };
    if values.next().is_some() {
        return Err(AnswerError::Repeated { header });
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(AnswerError::NotANumber {
            header,
            value: String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned(),
        });
    }
    // At most 20 ASCII digits: parses unless above u64::MAX, which is out of range too.
    let parsed = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    match parsed {
        Some(v) if v <= max => Ok(v),
        _ => Err(AnswerError::OutOfRange { header, max }),
    }
}

/// Why a probe answer (or the headers of a response) could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerError {
    /// The header is not in the answer.
    Missing {
        /// The header's name.
        header: &'static str,
    },
    /// The header is in the answer more than once.
    Repeated {
        /// The header's name.
        header: &'static str,
    },
    /// The value is not a decimal integer without sign (empty, negative, fractional,
    /// spaces, letters, non-ASCII bytes).
    NotANumber {
        /// The header's name.
        header: &'static str,
        /// The value (at most its first 64 bytes, lossily decoded).
        value: String,
    },
    /// The value is a number above the bound.
    OutOfRange {
        /// The header's name.
        header: &'static str,
        /// The largest value accepted.
        max: u64,
    },
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::Missing { header } => write!(f, "the probe answer has no {header} header"),
            AnswerError::Repeated { header } => {
                write!(f, "the probe answer has the {header} header more than once")
            }
            AnswerError::NotANumber { header, value } => write!(
                f,
                "the probe answer's {header} is {value:?}, not a decimal integer without sign"
            ),
            AnswerError::OutOfRange { header, max } => {
                write!(f, "the probe answer's {header} is above {max}")
            }
        }
    }
}

impl std::error::Error for AnswerError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(rif: &[&[u8]], latency: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in rif {
            h.append(RIF_HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        for v in latency {
            h.append(LATENCY_HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn answers_stay_within_what_readers_accept() {
        let answer = ProbeAnswer::new(u64::MAX, Duration::from_secs(10 * 3600));
        assert_eq!((answer.rif, answer.latency_us), (MAX_RIF, MAX_LATENCY_US));
        let mut h = HeaderMap::new();
        answer.write_headers(&mut h);
        assert_eq!(ProbeAnswer::from_headers(&h).unwrap(), answer);
    }

    #[test]
    fn reads_and_writes_both_headers() {
        let answer = ProbeAnswer::new(7, Duration::from_micros(2500));
        let mut h = HeaderMap::new();
        answer.write_headers(&mut h);
        assert_eq!(h[RIF_HEADER], "7");
        assert_eq!(h[LATENCY_HEADER], "2500");
        assert_eq!(ProbeAnswer::from_headers(&h), Ok(answer));
        assert_eq!(answer.latency(), Duration::from_micros(2500));
    }

    #[test]
    fn each_bad_answer_has_its_error() {
        let rif = RIF_HEADER_NAME;
        let lat = LATENCY_HEADER_NAME;
        let cases: Vec<(HeaderMap, AnswerError)> = vec![
            (headers(&[], &[b"1"]), AnswerError::Missing { header: rif }),
            (headers(&[b"1"], &[]), AnswerError::Missing { header: lat }),
            (
                headers(&[b"1", b"2"], &[b"1"]),
                AnswerError::Repeated { header: rif },
            ),
            (
                headers(&[b"-1"], &[b"1"]),
                AnswerError::NotANumber {
                    header: rif,
                    value: "-1".into(),
                },
            ),
            (
                headers(&[b"1"], &[b"1.5"]),
                AnswerError::NotANumber {
                    header: lat,
                    value: "1.5".into(),
                },
            ),
            (
                headers(&[b" 1"], &[b"1"]),
                AnswerError::NotANumber {
                    header: rif,
                    value: " 1".into(),
                },
            ),
            (
                headers(&[b""], &[b"1"]),
                AnswerError::NotANumber {
                    header: rif,
                    value: "".into(),
                },
            ),
            (
                headers(&[b"4294967296"], &[b"1"]),
                AnswerError::OutOfRange {
                    header: rif,
                    max: MAX_RIF,
                },
            ),
            (
                headers(&[b"1"], &[b"99999999999999999999"]),
                AnswerError::OutOfRange {
                    header: lat,
                    max: MAX_LATENCY_US,
                },
            ),
            (
                headers(&[b"1"], &[b"123456789012345678901234"]),
                AnswerError::NotANumber {
                    header: lat,
                    value: "123456789012345678901234".into(),
                },
            ),
        ];
        for (h, expected) in cases {
            assert_eq!(ProbeAnswer::from_headers(&h), Err(expected), "{h:?}");
        }
        // The largest values are accepted.
        let h = headers(&[b"4294967295"], &[b"3600000000"]);
        assert_eq!(
            ProbeAnswer::from_headers(&h),
            Ok(ProbeAnswer {
                rif: MAX_RIF,
                latency_us: MAX_LATENCY_US
            })
        );
    }
}
