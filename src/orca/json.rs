//! The `JSON ` form of `endpoint-load-metrics`: proto3's JSON mapping of `OrcaLoadReport`.
//!
//! The rules are in the docs of [`LoadReport::parse_json`].

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use super::error::{OrcaError, ValueProblem};
use super::report::{check_value, LoadReport};

/// The prefix of the form.
pub(crate) const PREFIX: &str = "JSON ";

impl LoadReport {
    /// Parses the `JSON ` form, with or without its prefix.
    ///
    /// proto3 JSON names each field by its lowerCamelCase name (`cpuUtilization`), and parsers
    /// also accept the proto field name (`cpu_utilization`), as Envoy's examples write it. A
    /// double may be a JSON number or a string (`"0.5"`, `"NaN"`, `"Infinity"`); a uint64 (`rps`)
    /// a number or a decimal string; `null` is the field's default. Maps are objects of numbers.
    ///
    /// Like Envoy (which parses with protobuf's JSON parser and fails on unknown fields), a field
    /// `OrcaLoadReport` does not have is an error ([`OrcaError::UnknownField`]). Values must be
    /// finite and not negative. The encoder writes proto field names, omits zero scalars and
    /// empty maps (proto3 JSON's defaults), and writes non-finite values as proto3's strings.
    pub fn parse_json(value: &str) -> Result<LoadReport, OrcaError> {
        let json = value.strip_prefix(PREFIX).unwrap_or(value);
        let object: Map<String, Value> =
            serde_json::from_str(json).map_err(|e| OrcaError::Json(e.to_string()))?;
        let mut report = LoadReport::default();
        for (field, value) in &object {
            match field.as_str() {
                "cpu_utilization" | "cpuUtilization" => {
                    report.cpu_utilization = double(field, value)?
                }
                "mem_utilization" | "memUtilization" => {
                    report.mem_utilization = double(field, value)?
                }
                "application_utilization" | "applicationUtilization" => {
                    report.application_utilization = double(field, value)?
                }
                "rps_fractional" | "rpsFractional" => report.rps_fractional = double(field, value)?,
                "eps" => report.eps = double(field, value)?,
                "rps" => report.rps = uint64(field, value)?,
                "request_cost" | "requestCost" => report.request_cost = map(field, value)?,
                "utilization" => report.utilization = map(field, value)?,
                "named_metrics" | "namedMetrics" => report.named_metrics = map(field, value)?,
                _ => return Err(OrcaError::UnknownField(field.clone())),
            }
        }
        Ok(report)
    }

    /// Writes the `JSON ` form, prefix included: proto field names, zero scalars and empty
    /// maps left out, non-finite values as proto3's strings (see [`parse_json`](Self::parse_json)).
    pub fn to_json(&self) -> String {
        let mut object = Map::new();
        let mut scalar = |name: &str, value: f64| {
            if value != 0.0 {
                object.insert(name.to_owned(), number(value));
            }
        };
        scalar("cpu_utilization", self.cpu_utilization);
        scalar("mem_utilization", self.mem_utilization);
        scalar("rps_fractional", self.rps_fractional);
        scalar("eps", self.eps);
        scalar("application_utilization", self.application_utilization);
        if self.rps != 0 {
            object.insert("rps".to_owned(), Value::from(self.rps));
        }
        for (name, map) in [
            ("request_cost", &self.request_cost),
            ("utilization", &self.utilization),
            ("named_metrics", &self.named_metrics),
        ] {
            if !map.is_empty() {
                let inner = map.iter().map(|(k, &v)| (k.clone(), number(v))).collect();
                object.insert(name.to_owned(), Value::Object(inner));
            }
        }
        format!("{PREFIX}{}", Value::Object(object))
    }
}

/// A double as proto3 JSON writes it: a number, or a string when it is not finite.
fn number(value: f64) -> Value {
    match Number::from_f64(value) {
        Some(n) => Value::Number(n),
        None if value.is_nan() => Value::from("NaN"),
        None if value > 0.0 => Value::from("Infinity"),
        None => Value::from("-Infinity"),
    }
}

/// A double field: a number or a string, finite and not negative; `null` is 0.
fn double(field: &str, value: &Value) -> Result<f64, OrcaError> {
    let parsed = match value {
        Value::Null => 0.0,
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| OrcaError::bad(field, ValueProblem::NotANumber))?,
        Value::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            // proto3 JSON allows a decimal number in a string, not Rust's "inf" or "nan".
            s if s
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                s.parse()
                    .map_err(|_| OrcaError::bad(field, ValueProblem::NotANumber))?
            }
            _ => return Err(OrcaError::bad(field, ValueProblem::NotANumber)),
        },
        _ => return Err(OrcaError::Json(format!("{field:?} must be a number"))),
    };
    check_value(parsed).map_err(|p| OrcaError::bad(field, p))
}

/// A uint64 field: a non-negative integer, as a number or a decimal string.
fn uint64(field: &str, value: &Value) -> Result<u64, OrcaError> {
    let problem = |s: &str| {
        if s.starts_with('-') {
            ValueProblem::Negative
        } else {
            ValueProblem::NotANumber
        }
    };
    match value {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| OrcaError::bad(field, problem(&n.to_string()))),
        Value::String(s) => s.parse().map_err(|_| OrcaError::bad(field, problem(s))),
        _ => Err(OrcaError::Json(format!("{field:?} must be an integer"))),
    }
}

/// A map field: an object whose values are doubles.
fn map(field: &str, value: &Value) -> Result<BTreeMap<String, f64>, OrcaError> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(entries) => entries
            .iter()
            .map(|(k, v)| Ok((k.clone(), double(&format!("{field}.{k}"), v)?)))
            .collect(),
        _ => Err(OrcaError::Json(format!("{field:?} must be an object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envoys_example_and_camel_case() {
        let envoy = "JSON {\"cpu_utilization\": 0.7, \"application_utilization\": 0.8, \
                     \"mem_utilization\": 0.9, \"rps_fractional\": 1000, \"eps\": 2, \
                     \"named_metrics\": {\"foo\": 123,\"bar\": 0.2}}";
        let report = LoadReport::parse_json(envoy).unwrap();
        assert_eq!(report.cpu_utilization, 0.7);
        assert_eq!(report.rps_fractional, 1000.0);
        assert_eq!(report.named_metrics["bar"], 0.2);
        let camel = LoadReport::parse_json(
            "JSON {\"cpuUtilization\": \"0.7\", \"applicationUtilization\": 0.8, \
             \"memUtilization\": 0.9, \"rpsFractional\": 1000, \"eps\": 2, \
             \"namedMetrics\": {\"foo\": 123,\"bar\": 0.2}}",
        )
        .unwrap();
        assert_eq!(camel, report);
        assert_eq!(LoadReport::parse_json(&report.to_json()), Ok(report));
    }

    #[test]
    fn rejections() {
        let bad = |s: &str| LoadReport::parse_json(s).unwrap_err();
        assert!(matches!(
            bad("JSON not-a-valid-json-string"),
            OrcaError::Json(_)
        ));
        assert!(matches!(
            bad("JSON {\"cpu_utilization\": 0.7"),
            OrcaError::Json(_)
        ));
        assert!(matches!(bad("JSON [1]"), OrcaError::Json(_)));
        assert_eq!(
            bad("JSON {\"cpu_utilization\": 0.7, \"unknown_field\": 2}"),
            OrcaError::UnknownField("unknown_field".into())
        );
        assert_eq!(
            bad("JSON {\"eps\": \"NaN\"}"),
            OrcaError::bad("eps", ValueProblem::NaN)
        );
        assert_eq!(
            bad("JSON {\"eps\": \"-Infinity\"}"),
            OrcaError::bad("eps", ValueProblem::Infinite)
        );
        assert_eq!(
            bad("JSON {\"named_metrics\": {\"q\": -1}}"),
            OrcaError::bad("named_metrics.q", ValueProblem::Negative)
        );
        assert_eq!(
            bad("JSON {\"rps\": -3}"),
            OrcaError::bad("rps", ValueProblem::Negative)
        );
        assert!(matches!(bad("JSON {\"eps\": true}"), OrcaError::Json(_)));
    }
}
