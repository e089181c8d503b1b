//! The binary form: base64 of the protobuf encoding of `OrcaLoadReport`.
//!
//! It travels as the `BIN ` form of `endpoint-load-metrics`, and as the gRPC metadata
//! `endpoint-load-metrics-bin` (legacy name `x-endpoint-load-metrics-bin`), which gRPC
//! servers send in their trailers (gRFC A51). gRPC requires readers of `-bin` metadata to
//! take base64 with or without padding, so this reader does, for every binary form; the
//! encoder writes it padded, which every reader takes (Envoy's base64 decoder expects
//! padding).
//!
//! As Envoy does, an empty value, base64 that does not decode, and bytes that are not an
//! `OrcaLoadReport` are errors; unknown protobuf fields are skipped (protobuf's rule). Values
//! must also be finite and not negative, which Envoy does not check.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost::Message as _;

use super::error::OrcaError;
use super::report::LoadReport;

/// The prefix of the form in `endpoint-load-metrics`.
pub(crate) const PREFIX: &str = "BIN ";

/// Standard base64, padded when written, padding optional when read.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl LoadReport {
    /// Parses the binary form: base64 (padded or not) of the protobuf message, with or
    /// without the `BIN ` prefix: the value of `endpoint-load-metrics-bin` (gRPC's
    /// metadata, in trailers), or of `endpoint-load-metrics` after `BIN `.
    ///
    /// gRPC requires readers of `-bin` metadata to take base64 with or without padding, so
    /// this reader does, for every binary form. As Envoy does, an empty value, base64 that
    /// does not decode, and bytes that are not an `OrcaLoadReport` are errors; unknown
    /// protobuf fields are skipped (protobuf's rule). Values must also be finite and not
    /// negative ([`validate`](Self::validate)), which Envoy does not check.
    pub fn parse_bin(value: &[u8]) -> Result<LoadReport, OrcaError> {
        let b64 = value.strip_prefix(PREFIX.as_bytes()).unwrap_or(value);
        let b64 = b64.trim_ascii();
        if b64.is_empty() {
            return Err(OrcaError::Empty);
        }
        if b64.len() > super::MAX_HEADER_LEN {
            return Err(OrcaError::TooLarge { len: value.len() });
        }
        // At most 3/4 of the input: a stack buffer for any report that fits the size limit.
        let mut buf = [0u8; super::MAX_HEADER_LEN / 4 * 3 + 3];
        let len = BASE64
            .decode_slice(b64, &mut buf)
            .map_err(|_| OrcaError::Base64)?;
        LoadReport::from_protobuf(&buf[..len])
    }

    /// Decodes the protobuf message itself (no base64) and [validates](Self::validate) it.
    pub fn from_protobuf(bytes: &[u8]) -> Result<LoadReport, OrcaError> {
        let report = LoadReport::decode(bytes).map_err(|e| OrcaError::Protobuf(e.to_string()))?;
        report.validate()?;
        Ok(report)
    }

    /// The protobuf encoding (no base64).
    pub fn to_protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Writes the binary form: padded base64 of the protobuf message, without a prefix
    /// (the value of `endpoint-load-metrics-bin`; prepend `BIN ` for
    /// `endpoint-load-metrics`).
    pub fn to_bin(&self) -> String {
        BASE64.encode(self.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orca::report::envoy_example;

    #[test]
    fn the_wire_bytes_are_protobufs() {
        // cpu_utilization = 0.5: field 1, wire type 1 (64-bit), then the little-endian double.
        let report = LoadReport {
            cpu_utilization: 0.5,
            ..LoadReport::default()
        };
        let mut expected = vec![0x09];
        expected.extend_from_slice(&0.5f64.to_le_bytes());
        assert_eq!(report.to_protobuf(), expected);
        // named_metrics {"a": 1.0}: field 8, length-delimited entry of key (1) and value (2).
        let named = LoadReport::default().with_named_metric("a", 1.0);
        let mut expected = vec![0x42, 12, 0x0a, 1, b'a', 0x11];
        expected.extend_from_slice(&1.0f64.to_le_bytes());
        assert_eq!(named.to_protobuf(), expected);
    }

    #[test]
    fn padded_and_unpadded_base64_read_the_same() {
        let report = envoy_example();
        let padded = report.to_bin();
        assert!(padded.ends_with('='), "{padded}");
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(LoadReport::parse_bin(padded.as_bytes()), Ok(report.clone()));
        assert_eq!(
            LoadReport::parse_bin(unpadded.as_bytes()),
            Ok(report.clone())
        );
        let prefixed = format!("BIN {padded}");
        assert_eq!(LoadReport::parse_bin(prefixed.as_bytes()), Ok(report));
    }

    #[test]
    fn rejections() {
        assert_eq!(LoadReport::parse_bin(b""), Err(OrcaError::Empty));
        assert_eq!(
            LoadReport::parse_bin(b"not-a-valid-binary-proto"),
            Err(OrcaError::Base64)
        );
        // Half of a valid message (Envoy's test): a truncated field.
        let bytes = envoy_example().to_protobuf();
        let half = BASE64.encode(&bytes[..bytes.len() / 2]);
        assert!(matches!(
            LoadReport::parse_bin(half.as_bytes()),
            Err(OrcaError::Protobuf(_))
        ));
        // A NaN on the wire.
        let nan = LoadReport {
            eps: f64::NAN,
            ..LoadReport::default()
        };
        assert!(matches!(
            LoadReport::parse_bin(nan.to_bin().as_bytes()),
            Err(OrcaError::BadValue { .. })
        ));
    }
}
