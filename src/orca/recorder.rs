//! What handlers and the application tell the report layer: gRPC's `CallMetricRecorder`
//! and `ServerMetricRecorder`, for tower.

use std::sync::{Arc, Mutex, MutexGuard};

use super::report::LoadReport;

/// The metrics of one call, set by its handler; [`OrcaLayer`](super::OrcaLayer) puts one in
/// every request's extensions and writes what it holds into that response's report.
///
/// Modelled on gRPC's `CallMetricRecorder` (gRFC A51): a value set here wins over the
/// server-wide value of [`ServerMetricRecorder`] and over what the layer measures. Values that
/// a report cannot hold (NaN, infinite, negative) are ignored, as gRPC ignores them.
///
/// ```
/// use tower_lb::orca::CallMetricRecorder;
///
/// async fn handler(request: http::Request<()>) -> http::Response<()> {
///     if let Some(recorder) = request.extensions().get::<CallMetricRecorder>() {
///         recorder
///             .set_application_utilization(0.42)
///             .set_named_metric("queue", 7.0);
///     }
///     http::Response::new(())
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallMetricRecorder {
    inner: Arc<Mutex<LoadReport>>,
}

/// Server-wide metrics, set by the application whenever it likes (a queue length, its own
/// utilization); every report of the [`OrcaLayer`](super::OrcaLayer) that owns it carries
/// them, unless the call set its own. gRPC's `ServerMetricRecorder`.
#[derive(Debug, Clone, Default)]
pub struct ServerMetricRecorder {
    inner: Arc<Mutex<LoadReport>>,
}

fn lock(m: &Mutex<LoadReport>) -> MutexGuard<'_, LoadReport> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn valid(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

macro_rules! setters {
    ($ty:ident) => {
        impl $ty {
            /// An empty recorder.
            pub fn new() -> Self {
                Self::default()
            }

            /// Sets `application_utilization` (may exceed 1).
            pub fn set_application_utilization(&self, value: f64) -> &Self {
                self.scalar(value, |r| &mut r.application_utilization)
            }

            /// Sets `cpu_utilization`, overriding the layer's sample.
            pub fn set_cpu_utilization(&self, value: f64) -> &Self {
                self.scalar(value, |r| &mut r.cpu_utilization)
            }

            /// Sets `mem_utilization`.
            pub fn set_mem_utilization(&self, value: f64) -> &Self {
                self.scalar(value, |r| &mut r.mem_utilization)
            }

            /// Sets `rps_fractional`, overriding the layer's measure.
            pub fn set_rps_fractional(&self, value: f64) -> &Self {
                self.scalar(value, |r| &mut r.rps_fractional)
            }

            /// Sets `eps`, overriding the layer's measure.
            pub fn set_eps(&self, value: f64) -> &Self {
                self.scalar(value, |r| &mut r.eps)
            }

            /// Sets `named_metrics[name]`.
            pub fn set_named_metric(&self, name: impl Into<String>, value: f64) -> &Self {
                if valid(value) {
                    lock(&self.inner).named_metrics.insert(name.into(), value);
                }
                self
            }

            /// Sets `utilization[name]`.
            pub fn set_utilization(&self, name: impl Into<String>, value: f64) -> &Self {
                if valid(value) {
                    lock(&self.inner).utilization.insert(name.into(), value);
                }
                self
            }

            /// Sets `request_cost[name]`.
            pub fn set_request_cost(&self, name: impl Into<String>, value: f64) -> &Self {
                if valid(value) {
                    lock(&self.inner).request_cost.insert(name.into(), value);
                }
                self
            }

            /// What was recorded so far.
            pub fn snapshot(&self) -> LoadReport {
                lock(&self.inner).clone()
            }

            fn scalar(&self, value: f64, field: fn(&mut LoadReport) -> &mut f64) -> &Self {
                if valid(value) {
                    *field(&mut lock(&self.inner)) = value;
                }
                self
            }
        }
    };
}

setters!(CallMetricRecorder);
setters!(ServerMetricRecorder);

impl CallMetricRecorder {
    /// Fills `report` with what the call recorded: its non-zero scalars replace the
    /// report's, its map entries are added (replacing entries of the same name).
    pub(crate) fn merge_into(&self, report: &mut LoadReport) {
        merge(&lock(&self.inner), report);
    }
}

impl ServerMetricRecorder {
    /// As [`CallMetricRecorder::merge_into`].
    pub(crate) fn merge_into(&self, report: &mut LoadReport) {
        merge(&lock(&self.inner), report);
    }
}

fn merge(from: &LoadReport, into: &mut LoadReport) {
    for (src, dst) in [
        (from.cpu_utilization, &mut into.cpu_utilization),
        (from.mem_utilization, &mut into.mem_utilization),
        (
            from.application_utilization,
            &mut into.application_utilization,
        ),
        (from.rps_fractional, &mut into.rps_fractional),
        (from.eps, &mut into.eps),
    ] {
        if src != 0.0 {
            *dst = src;
        }
    }
    for (src, dst) in [
        (&from.named_metrics, &mut into.named_metrics),
        (&from.utilization, &mut into.utilization),
        (&from.request_cost, &mut into.request_cost),
    ] {
        for (k, v) in src {
            dst.insert(k.clone(), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_wins_over_the_server_and_bad_values_are_ignored() {
        let server = ServerMetricRecorder::new();
        server
            .set_application_utilization(0.3)
            .set_named_metric("q", 1.0);
        let call = CallMetricRecorder::new();
        call.set_application_utilization(0.9)
            .set_named_metric("q", 5.0)
            .set_mem_utilization(f64::NAN)
            .set_eps(-1.0);
        let mut report = LoadReport {
            cpu_utilization: 0.5,
            ..LoadReport::default()
        };
        server.merge_into(&mut report);
        call.merge_into(&mut report);
        assert_eq!(report.cpu_utilization, 0.5);
        assert_eq!(report.application_utilization, 0.9);
        assert_eq!(report.named_metrics["q"], 5.0);
        assert_eq!((report.mem_utilization, report.eps), (0.0, 0.0));
    }
}
