//! The load report itself: `xds.data.orca.v3.OrcaLoadReport`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{OrcaError, ValueProblem};

/// One ORCA load report: the fields of `xds.data.orca.v3.OrcaLoadReport` (the xDS data
/// plane API, `xds/data/orca/v3/orca_load_report.proto`), with the same field numbers, so
/// that [`prost`] reads and writes the same bytes as gRPC and Envoy.
///
/// Every number is a utilization, a rate or a cost: finite and never negative. The parsers
/// reject anything else ([`validate`](Self::validate)). Utilizations are fractions of
/// capacity; `cpu_utilization` and `application_utilization` may exceed 1 (a process may use
/// more than its share, or an application may count its own way).
///
/// ```
/// use tower_lb::orca::LoadReport;
///
/// let report = LoadReport {
///     cpu_utilization: 0.25,
///     rps_fractional: 120.0,
///     ..LoadReport::default()
/// }
/// .with_named_metric("queue", 3.0);
/// let text = report.to_text().unwrap();
/// assert_eq!(text, "TEXT cpu_utilization=0.25, rps_fractional=120.0, named_metrics.queue=3.0");
/// assert_eq!(LoadReport::parse_text(&text).unwrap(), report);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LoadReport {
    /// Field 1: CPU utilization, the CPU time the server used divided by the CPU time its
    /// cores could give it (may exceed 1).
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Field 2: memory utilization, a fraction of the server's memory limit.
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Field 3: requests per second, as an integer. Deprecated in the proto in favour of
    /// `rps_fractional`; read and written for old servers, never used for weights.
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Field 4: the cost of the request this report came with, per resource
    /// (per-request reports only).
    #[prost(btree_map = "string, double", tag = "4")]
    pub request_cost: BTreeMap<String, f64>,
    /// Field 5: utilization of other resources, by name, each a fraction of capacity.
    #[prost(btree_map = "string, double", tag = "5")]
    pub utilization: BTreeMap<String, f64>,
    /// Field 6: requests per second the server is handling.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Field 7: errors per second the server is answering.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Field 8: the application's own metrics, by name.
    #[prost(btree_map = "string, double", tag = "8")]
    pub named_metrics: BTreeMap<String, f64>,
    /// Field 9: the application's own utilization figure; preferred to `cpu_utilization`
    /// by weighted round robin when above 0 (gRFC A114). May exceed 1.
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

impl LoadReport {
    /// The report with `metric` set in `named_metrics`.
    pub fn with_named_metric(mut self, metric: impl Into<String>, value: f64) -> Self {
        self.named_metrics.insert(metric.into(), value);
        self
    }

    /// The report with `resource` set in `utilization`.
    pub fn with_utilization(mut self, resource: impl Into<String>, value: f64) -> Self {
        self.utilization.insert(resource.into(), value);
        self
    }

    /// The report with `resource` set in `request_cost`.
    pub fn with_request_cost(mut self, resource: impl Into<String>, value: f64) -> Self {
        self.request_cost.insert(resource.into(), value);
        self
    }

    /// Checks that every number is finite and not negative: what every parser of this
    /// module requires of a report it returns.
    pub fn validate(&self) -> Result<(), OrcaError> {
        let scalars = [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
            ("application_utilization", self.application_utilization),
        ];
        for (name, value) in scalars {
            check_value(value).map_err(|p| OrcaError::bad(name, p))?;
        }
        for (map, prefix) in [
            (&self.request_cost, "request_cost."),
            (&self.utilization, "utilization."),
            (&self.named_metrics, "named_metrics."),
        ] {
            for (name, &value) in map {
                if let Err(p) = check_value(value) {
                    return Err(OrcaError::bad(&format!("{prefix}{name}"), p));
                }
            }
        }
        Ok(())
    }

    /// The utilization weighted round robin divides by: `application_utilization` if above
    /// 0 (gRFC A114); else the largest of the metrics named in `metrics` that the report
    /// holds, if above 0 (Envoy's `metric_names_for_computing_utilization`:
    /// `named_metrics.<name>` or `utilization.<name>`, a bare name being a named metric);
    /// else `cpu_utilization`.
    pub fn utilization_for_weight(&self, metrics: &[String]) -> f64 {
        if self.application_utilization > 0.0 {
            return self.application_utilization;
        }
        let named = metrics
            .iter()
            .filter_map(|m| {
                if let Some(name) = m.strip_prefix("utilization.") {
                    self.utilization.get(name)
                } else {
                    let name = m.strip_prefix("named_metrics.").unwrap_or(m);
                    self.named_metrics.get(name)
                }
            })
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        if named > 0.0 {
            named
        } else {
            self.cpu_utilization
        }
    }
}

/// A value as a report may hold it: finite and not negative.
#[inline]
pub(crate) fn check_value(value: f64) -> Result<f64, ValueProblem> {
    if value.is_nan() {
        Err(ValueProblem::NaN)
    } else if value.is_infinite() {
        Err(ValueProblem::Infinite)
    } else if value < 0.0 {
        Err(ValueProblem::Negative)
    } else {
        Ok(value)
    }
}

/// The latest report of an endpoint and when it arrived, as
/// [`Load::latest_report`](crate::endpoint::Load::latest_report) returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedReport {
    /// The report.
    pub report: LoadReport,
    /// When the balancer read it, on tokio's clock (which tests can pause).
    pub received_at: Instant,
}

impl ReceivedReport {
    /// A report received now.
    pub fn now(report: LoadReport) -> Arc<Self> {
        Arc::new(ReceivedReport {
            report,
            received_at: Instant::now(),
        })
    }

    /// How long ago it arrived.
    pub fn age(&self) -> Duration {
        Instant::now().saturating_duration_since(self.received_at)
    }
}

/// Envoy's example report (its `orca_parser_test.cc`), for the tests of every form.
#[cfg(test)]
pub(crate) fn envoy_example() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.7,
        application_utilization: 0.8,
        mem_utilization: 0.9,
        eps: 2.0,
        rps_fractional: 1000.0,
        ..LoadReport::default()
    }
    .with_named_metric("foo", 123.0)
    .with_named_metric("bar", 0.2)
}
