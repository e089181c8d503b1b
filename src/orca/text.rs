//! The `TEXT ` form of `endpoint-load-metrics`: a comma-separated list of `name=value`.
//!
//! The rules are in the docs of [`LoadReport::parse_text`].

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::error::{OrcaError, ValueProblem};
use super::report::{check_value, LoadReport};

/// The prefix of the form.
pub(crate) const PREFIX: &str = "TEXT ";

const CPU: u8 = 1;
const MEM: u8 = 2;
const APP: u8 = 4;
const RPS_FRACTIONAL: u8 = 8;
const EPS: u8 = 16;
const RPS: u8 = 32;

impl LoadReport {
    /// Parses the `TEXT ` form, with or without its prefix.
    ///
    /// The ORCA design (and Envoy's documentation) write entries as `name=value`, for example
    /// `TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10.0, eps=1,
    /// named_metrics.custom_metric_util=0.4`. Envoy's parser (`source/common/orca/orca_parser.cc`)
    /// splits each entry at its first `:` instead. This parser takes whichever of `=` and `:`
    /// comes first, so it reads both; the encoder writes `=`.
    ///
    /// Rules, as Envoy applies them unless said otherwise:
    /// - entries are separated by commas; whitespace around entries, names and values is ignored;
    ///   an empty entry (a trailing comma) is skipped (Envoy rejects it);
    /// - names: `cpu_utilization`, `mem_utilization`, `application_utilization`,
    ///   `rps_fractional`, `eps`, and `named_metrics.<name>`; this parser also takes
    ///   `utilization.<name>`, `request_cost.<name>` and the deprecated integer `rps`, which
    ///   Envoy rejects as unsupported;
    /// - any other name is an error ([`OrcaError::UnknownField`]), and so is an empty name, an
    ///   entry without a value, a value that is not a number, NaN or infinite, and a metric
    ///   named twice; a negative value is an error too (Envoy accepts it).
    pub fn parse_text(value: &str) -> Result<LoadReport, OrcaError> {
        let list = value.strip_prefix(PREFIX).unwrap_or(value);
        let mut report = LoadReport::default();
        let mut seen = 0u8;
        for entry in list.split(',') {
            // Byte-wise: every delimiter is ASCII, so the slices stay on char boundaries.
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(at) = entry.bytes().position(|b| b == b'=' || b == b':') else {
                return Err(OrcaError::MissingValue(entry.to_owned()));
            };
            let name = entry[..at].trim_ascii_end();
            let raw = entry[at + 1..].trim_ascii_start();
            if name.is_empty() {
                return Err(OrcaError::EmptyName);
            }
            if raw.is_empty() {
                return Err(OrcaError::MissingValue(name.to_owned()));
            }
            let scalar = |bit: u8, seen: &mut u8, field: &mut f64| {
                if *seen & bit != 0 {
                    return Err(OrcaError::Duplicate(name.to_owned()));
                }
                *seen |= bit;
                *field = number(name, raw)?;
                Ok(())
            };
            match name {
                "cpu_utilization" => scalar(CPU, &mut seen, &mut report.cpu_utilization)?,
                "mem_utilization" => scalar(MEM, &mut seen, &mut report.mem_utilization)?,
                "application_utilization" => {
                    scalar(APP, &mut seen, &mut report.application_utilization)?
                }
                "rps_fractional" => scalar(RPS_FRACTIONAL, &mut seen, &mut report.rps_fractional)?,
                "eps" => scalar(EPS, &mut seen, &mut report.eps)?,
                "rps" => {
                    if seen & RPS != 0 {
                        return Err(OrcaError::Duplicate(name.to_owned()));
                    }
                    seen |= RPS;
                    report.rps = raw.parse().map_err(|_| {
                        let problem = if raw.starts_with('-') {
                            ValueProblem::Negative
                        } else {
                            ValueProblem::NotANumber
                        };
                        OrcaError::bad(name, problem)
                    })?;
                }
                _ => {
                    let (map, key) = if let Some(key) = name.strip_prefix("named_metrics.") {
                        (&mut report.named_metrics, key)
                    } else if let Some(key) = name.strip_prefix("utilization.") {
                        (&mut report.utilization, key)
                    } else if let Some(key) = name.strip_prefix("request_cost.") {
                        (&mut report.request_cost, key)
                    } else {
                        return Err(OrcaError::UnknownField(name.to_owned()));
                    };
                    insert(map, name, key, raw)?;
                }
            }
        }
        Ok(report)
    }

    /// Writes the `TEXT ` form, prefix included: the non-zero scalar fields in field order,
    /// then the maps (`request_cost.`, `utilization.`, `named_metrics.`), each in name
    /// order. Numbers are written so that they read back exactly.
    ///
    /// Fails with [`OrcaError::NotText`] when a map key cannot be carried: it is empty, or
    /// holds a byte outside visible ASCII, or one of `,` `=` `:`. (The [binary
    /// form](Self::to_bin) carries any report.)
    pub fn to_text(&self) -> Result<String, OrcaError> {
        let mut out = String::with_capacity(96);
        out.push_str(PREFIX);
        let mut first = true;
        let mut entry = |out: &mut String, prefix: &str, name: &str, value: &dyn Fmt| {
            if !first {
                out.push_str(", ");
            }
            first = false;
            out.push_str(prefix);
            out.push_str(name);
            out.push('=');
            value.write(out);
        };
        for (name, value) in [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
        ] {
            if value != 0.0 {
                entry(&mut out, "", name, &value);
            }
        }
        if self.rps != 0 {
            entry(&mut out, "", "rps", &self.rps);
        }
        for (name, value) in [
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
            ("application_utilization", self.application_utilization),
        ] {
            if value != 0.0 {
                entry(&mut out, "", name, &value);
            }
        }
        for (map, prefix) in [
            (&self.request_cost, "request_cost."),
            (&self.utilization, "utilization."),
            (&self.named_metrics, "named_metrics."),
        ] {
            for (name, value) in map {
                if !text_safe(name) {
                    return Err(OrcaError::NotText);
                }
                entry(&mut out, prefix, name, value);
            }
        }
        Ok(out)
    }
}

/// Whether a map key can be written in the `TEXT` form.
pub(crate) fn text_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'=' | b':'))
}

/// A number as [`LoadReport::to_text`] writes it.
trait Fmt {
    fn write(&self, out: &mut String);
}

impl Fmt for f64 {
    fn write(&self, out: &mut String) {
        // The shortest text that reads back as the same f64, with an exponent for very
        // large and very small values (so no value is hundreds of digits long). NaN and
        // infinities (not in a valid report) come out as "NaN", "inf", "-inf", which the
        // parser rejects by name.
        out.push_str(zmij::Buffer::new().format(*self));
    }
}

impl Fmt for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// Parses a metric's value: a finite number, not negative.
fn number(name: &str, raw: &str) -> Result<f64, OrcaError> {
    let value: f64 = raw
        .parse()
        .map_err(|_| OrcaError::bad(name, ValueProblem::NotANumber))?;
    check_value(value).map_err(|p| OrcaError::bad(name, p))
}

fn insert(
    map: &mut BTreeMap<String, f64>,
    name: &str,
    key: &str,
    raw: &str,
) -> Result<(), OrcaError> {
    if key.is_empty() {
        return Err(OrcaError::EmptyName);
    }
    let value = number(name, raw)?;
    match map.entry(key.to_owned()) {
        Entry::Occupied(_) => Err(OrcaError::Duplicate(name.to_owned())),
        Entry::Vacant(v) => {
            v.insert(value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orca::report::envoy_example;

    #[test]
    fn reads_envoys_colon_form_and_the_designs_equals_form() {
        let colon = "TEXT cpu_utilization:0.7,application_utilization:0.8,mem_utilization:0.9,\
                     rps_fractional:1000,eps:2,named_metrics.foo:123,named_metrics.bar:0.2";
        assert_eq!(LoadReport::parse_text(colon), Ok(envoy_example()));
        let equals = "TEXT cpu_utilization=0.7, application_utilization=0.8, \
                      mem_utilization=0.9, rps_fractional=1000, eps=2, \
                      named_metrics.foo=123, named_metrics.bar=0.2";
        assert_eq!(LoadReport::parse_text(equals), Ok(envoy_example()));
    }

    #[test]
    fn maps_and_the_deprecated_rps() {
        let report =
            LoadReport::parse_text("TEXT utilization.disk=0.5, request_cost.db=12, rps=7,")
                .unwrap();
        assert_eq!(report.utilization["disk"], 0.5);
        assert_eq!(report.request_cost["db"], 12.0);
        assert_eq!(report.rps, 7);
    }

    #[test]
    fn envoys_rejections() {
        use OrcaError::*;
        let bad = |s: &str| LoadReport::parse_text(s).unwrap_err();
        assert_eq!(
            bad("TEXT cpu_utilization:\"0.7\""),
            OrcaError::bad("cpu_utilization", ValueProblem::NotANumber)
        );
        assert_eq!(
            bad("TEXT cpu_utilization:NaN"),
            OrcaError::bad("cpu_utilization", ValueProblem::NaN)
        );
        assert_eq!(
            bad("TEXT cpu_utilization:inf"),
            OrcaError::bad("cpu_utilization", ValueProblem::Infinite)
        );
        assert_eq!(
            bad("TEXT eps=-1"),
            OrcaError::bad("eps", ValueProblem::Negative)
        );
        assert_eq!(
            bad("TEXT cpu_utilization:0.7,cpu_utilization:0.8"),
            Duplicate("cpu_utilization".into())
        );
        assert_eq!(
            bad("TEXT named_metrics.d:1,named_metrics.d:0.2"),
            Duplicate("named_metrics.d".into())
        );
        assert_eq!(
            bad("TEXT cpu_utilization:0.7,unsupported_metric:0.8"),
            UnknownField("unsupported_metric".into())
        );
        assert_eq!(bad("TEXT named_metrics.:123"), EmptyName);
        assert_eq!(
            bad("TEXT not-a-list-of-key-value-pairs"),
            MissingValue("not-a-list-of-key-value-pairs".into())
        );
        assert_eq!(bad("TEXT eps="), MissingValue("eps".into()));
    }

    #[test]
    fn the_encoder_round_trips_and_refuses_names_it_cannot_carry() {
        let report = envoy_example().with_utilization("disk", 1e-9);
        let text = report.to_text().unwrap();
        assert_eq!(LoadReport::parse_text(&text), Ok(report));
        let odd = LoadReport::default().with_named_metric("a,b", 1.0);
        assert_eq!(odd.to_text(), Err(OrcaError::NotText));
        assert_eq!(LoadReport::default().to_text().unwrap(), "TEXT ");
    }
}
