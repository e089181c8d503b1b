//! Where reports travel: the header names, the choice of form, and reading a header map.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::error::OrcaError;
use super::report::LoadReport;
use super::{bin, json, text, MAX_HEADER_LEN};

/// `endpoint-load-metrics`: the HTTP header, with a `TEXT `, `JSON ` or `BIN ` prefix.
pub const ENDPOINT_LOAD_METRICS: HeaderName = HeaderName::from_static("endpoint-load-metrics");
/// `endpoint-load-metrics-bin`: gRPC metadata (trailers), base64 protobuf.
pub const ENDPOINT_LOAD_METRICS_BIN: HeaderName =
    HeaderName::from_static("endpoint-load-metrics-bin");
/// `x-endpoint-load-metrics-bin`: the legacy name of `endpoint-load-metrics-bin`.
pub const X_ENDPOINT_LOAD_METRICS_BIN: HeaderName =
    HeaderName::from_static("x-endpoint-load-metrics-bin");

/// How a report is written into headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HeaderForm {
    /// `endpoint-load-metrics: TEXT name=value, ...` (the default: readable, and the
    /// cheapest to write and parse here; binary for reports whose metric names TEXT cannot
    /// carry).
    #[default]
    Text,
    /// `endpoint-load-metrics: JSON {...}`.
    Json,
    /// `endpoint-load-metrics: BIN <base64 protobuf>`.
    Bin,
    /// `endpoint-load-metrics-bin: <base64 protobuf>`: gRPC's metadata, what gRPC clients
    /// read from trailers.
    GrpcBin,
}

impl LoadReport {
    /// Reads the report of a response's headers or trailers: `None` when none of the
    /// report headers is present, else the report or why it was rejected.
    ///
    /// Reads `endpoint-load-metrics` (prefix `TEXT `, `JSON ` or `BIN `; see
    /// [`parse_text`](Self::parse_text), [`parse_json`](Self::parse_json),
    /// [`parse_bin`](Self::parse_bin)), `endpoint-load-metrics-bin` and
    /// `x-endpoint-load-metrics-bin` (base64 protobuf). More than one report value among
    /// them is [`OrcaError::TwoReports`] (Envoy takes the `-bin` header then; a server that
    /// sends two reports is broken, and neither is trusted here); a value over
    /// [`MAX_HEADER_LEN`] is [`OrcaError::TooLarge`].
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_lb::orca::LoadReport;
    ///
    /// let mut headers = HeaderMap::new();
    /// assert!(LoadReport::from_headers(&headers).is_none());
    /// headers.insert("endpoint-load-metrics", "TEXT cpu_utilization=0.5".parse().unwrap());
    /// let report = LoadReport::from_headers(&headers).unwrap().unwrap();
    /// assert_eq!(report.cpu_utilization, 0.5);
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Option<Result<LoadReport, OrcaError>> {
        // Most responses carry no report: three lookups that find nothing.
        let mut found: Option<(&HeaderValue, bool)> = None;
        for (name, binary) in [
            (&ENDPOINT_LOAD_METRICS, false),
            (&ENDPOINT_LOAD_METRICS_BIN, true),
            (&X_ENDPOINT_LOAD_METRICS_BIN, true),
        ] {
            for value in headers.get_all(name) {
                if found.is_some() {
                    return Some(Err(OrcaError::TwoReports));
                }
                found = Some((value, binary));
            }
        }
        let (value, binary) = found?;
        Some(parse_value(value.as_bytes(), binary))
    }

    /// Writes the report into `headers` in `form`, replacing any report header there.
    /// [`HeaderForm::Text`] falls back to `BIN ` when a metric name cannot be written as
    /// text (see [`to_text`](Self::to_text)); JSON falls back likewise for names that are
    /// not visible ASCII.
    pub fn write_headers(&self, headers: &mut HeaderMap, form: HeaderForm) {
        headers.remove(&ENDPOINT_LOAD_METRICS);
        headers.remove(&ENDPOINT_LOAD_METRICS_BIN);
        headers.remove(&X_ENDPOINT_LOAD_METRICS_BIN);
        let (name, value) = self.header(form);
        headers.insert(name, value);
    }

    /// The header that carries the report in `form` (with the fallbacks of
    /// [`write_headers`](Self::write_headers)).
    pub fn header(&self, form: HeaderForm) -> (HeaderName, HeaderValue) {
        let bin_prefixed = || format!("{}{}", bin::PREFIX, self.to_bin());
        let value = match form {
            HeaderForm::GrpcBin => return (ENDPOINT_LOAD_METRICS_BIN, value_of(self.to_bin())),
            HeaderForm::Bin => bin_prefixed(),
            HeaderForm::Text => self.to_text().unwrap_or_else(|_| bin_prefixed()),
            HeaderForm::Json => {
                let json = self.to_json();
                if HeaderValue::from_str(&json).is_ok() {
                    json
                } else {
                    bin_prefixed()
                }
            }
        };
        (ENDPOINT_LOAD_METRICS, value_of(value))
    }
}

/// A header value from text this module wrote (visible ASCII by construction; base64 if not).
fn value_of(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Parses one report header's value.
fn parse_value(value: &[u8], binary: bool) -> Result<LoadReport, OrcaError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(OrcaError::TooLarge { len: value.len() });
    }
    if binary {
        return LoadReport::parse_bin(value);
    }
    if value.is_empty() {
        return Err(OrcaError::Empty);
    }
    if value.starts_with(bin::PREFIX.as_bytes()) {
        return LoadReport::parse_bin(value);
    }
    let text = std::str::from_utf8(value).map_err(|_| OrcaError::NotText)?;
    if text.starts_with(text::PREFIX) {
        LoadReport::parse_text(text)
    } else if text.starts_with(json::PREFIX) {
        LoadReport::parse_json(text)
    } else {
        let word = text.split(' ').next().unwrap_or_default();
        let word: String = word.chars().take(16).collect();
        Err(OrcaError::UnknownFormat(word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        LoadReport {
            cpu_utilization: 0.7,
            rps_fractional: 10.0,
            eps: 1.0,
            ..LoadReport::default()
        }
        .with_named_metric("q", 4.0)
    }

    #[test]
    fn every_form_reads_back() {
        for form in [
            HeaderForm::Text,
            HeaderForm::Json,
            HeaderForm::Bin,
            HeaderForm::GrpcBin,
        ] {
            let mut headers = HeaderMap::new();
            report().write_headers(&mut headers, form);
            assert_eq!(
                LoadReport::from_headers(&headers),
                Some(Ok(report())),
                "{form:?}"
            );
        }
        let mut legacy = HeaderMap::new();
        legacy.insert(
            X_ENDPOINT_LOAD_METRICS_BIN,
            HeaderValue::try_from(report().to_bin()).unwrap(),
        );
        assert_eq!(LoadReport::from_headers(&legacy), Some(Ok(report())));
    }

    #[test]
    fn two_reports_an_unknown_prefix_and_a_huge_header_are_rejected() {
        let mut two = HeaderMap::new();
        report().write_headers(&mut two, HeaderForm::Text);
        two.insert(
            ENDPOINT_LOAD_METRICS_BIN,
            HeaderValue::try_from(report().to_bin()).unwrap(),
        );
        assert_eq!(
            LoadReport::from_headers(&two),
            Some(Err(OrcaError::TwoReports))
        );
        let mut twice = HeaderMap::new();
        twice.append(
            ENDPOINT_LOAD_METRICS,
            HeaderValue::from_static("TEXT eps=1"),
        );
        twice.append(
            ENDPOINT_LOAD_METRICS,
            HeaderValue::from_static("TEXT eps=2"),
        );
        assert_eq!(
            LoadReport::from_headers(&twice),
            Some(Err(OrcaError::TwoReports))
        );

        let mut odd = HeaderMap::new();
        odd.insert(
            ENDPOINT_LOAD_METRICS,
            HeaderValue::from_static("BAD random"),
        );
        assert_eq!(
            LoadReport::from_headers(&odd),
            Some(Err(OrcaError::UnknownFormat("BAD".into())))
        );
        odd.insert(ENDPOINT_LOAD_METRICS, HeaderValue::from_static(""));
        assert_eq!(LoadReport::from_headers(&odd), Some(Err(OrcaError::Empty)));

        let huge = format!(
            "TEXT cpu_utilization=0.1, eps=1{}",
            " ".repeat(MAX_HEADER_LEN)
        );
        odd.insert(ENDPOINT_LOAD_METRICS, HeaderValue::try_from(huge).unwrap());
        assert!(matches!(
            LoadReport::from_headers(&odd),
            Some(Err(OrcaError::TooLarge { .. }))
        ));
    }

    #[test]
    fn text_falls_back_to_bin_for_names_it_cannot_carry() {
        let odd = report().with_named_metric("a,b", 1.0);
        let (name, value) = odd.header(HeaderForm::Text);
        assert_eq!(name, ENDPOINT_LOAD_METRICS);
        assert!(value.as_bytes().starts_with(b"BIN "));
        let mut headers = HeaderMap::new();
        headers.insert(name, value);
        assert_eq!(LoadReport::from_headers(&headers), Some(Ok(odd)));
    }
}
