//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! The balancer records counters, gauges and a latency histogram per balancer and per
//! endpoint; the application chooses where they go by installing a recorder, for example
//! [metrics-exporter-prometheus](https://docs.rs/metrics-exporter-prometheus) for a
//! Prometheus scrape endpoint. Without a recorder nothing is recorded and nothing is paid
//! on the hot path.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tower_lb::{discover, strategy::RoundRobin, Balance};
//! # let backend = tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
//! // Install the recorder first (here: none, so this balancer records nothing), then
//! // name the balancer: its name is the `balancer` label of every series.
//! let balance = Balance::builder()
//!     .name("api")
//!     .strategy(RoundRobin::new())
//!     .classify(tower_lb::classify::ErrorsAsFailures)
//!     .build(discover::static_list([("10.0.0.1:80", backend)]))
//!     .unwrap();
//! # drop(balance);
//! # }
//! ```
//!
//! # Names
//!
//! The names follow the spirit of Envoy's cluster statistics (`upstream_rq_total`,
//! `upstream_rq_active`, `membership_healthy`, `lb_healthy_panic`,
//! `outlier_detection.ejections_active`) and of gRPC's A78 metrics, written the Prometheus
//! way: `snake_case`, a `tower_lb_` prefix, `_total` on counters, base units (seconds).
//!
//! Every series has the label `balancer`, the balancer's [name](crate::Builder::name)
//! (`"default"` when it has none). Per-endpoint series also have `endpoint`, the endpoint's
//! name: its [`Metadata::name`](crate::Metadata::name), or else its key's `Debug` form
//! without quotes (`10.0.0.1:80`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tower_lb_requests_total` | counter | balancer, endpoint | requests sent to the endpoint (counted when sent) |
//! | `tower_lb_requests_failed_total` | counter | balancer, endpoint, reason | failures: `reason="classified"` the classifier judged the response or error a failure; `"unreachable"` an error that says the endpoint could not be reached (connection refused, ...); `"readiness"` the endpoint's service failed `poll_ready` |
//! | `tower_lb_requests_cancelled_total` | counter | balancer, endpoint | requests whose response future was dropped before their outcome |
//! | `tower_lb_rq_active` | gauge | balancer, endpoint | requests in flight (see [`completion`](crate::completion) for when a request ends) |
//! | `tower_lb_request_duration_seconds` | histogram | balancer, endpoint | from the call to the outcome (the response head; errors included, cancellations not) |
//! | `tower_lb_endpoint_healthy` | gauge | balancer, endpoint | 1 while the endpoint takes new requests (active, or on probation), 0 while it is unhealthy, ejected, draining, at weight 0, or removed |
//! | `tower_lb_endpoint_weight` | gauge | balancer, endpoint | the effective weight, in discovery's units: its weight times its slow-start or probation factor (a new endpoint of weight 1 in slow start shows 0.1 and rises to 1); 0 when it takes no requests |
//! | `tower_lb_ejections_total` | counter | balancer, endpoint | times outlier detection ejected the endpoint |
//! | `tower_lb_endpoints` | gauge | balancer | endpoints in the set (Envoy `membership_total`) |
//! | `tower_lb_endpoints_healthy` | gauge | balancer | endpoints that pass their health checks and are not ejected (Envoy `membership_healthy`) |
//! | `tower_lb_ejections_active` | gauge | balancer | endpoints ejected now (Envoy `outlier_detection.ejections_active`) |
//! | `tower_lb_panic_mode` | gauge | balancer | 1 while the balancer is in [panic mode](crate::health#panic-mode) (Envoy `lb_healthy_panic`) |
//! | `tower_lb_discovery_updates_total` | counter | balancer | changes applied from discovery (one per insert, remove or reset) |
//! | `tower_lb_discovery_errors_total` | counter | balancer | errors the discovery source returned (the last set is kept) |
//! | `tower_lb_table_rebuilds_total` | counter | balancer | snapshots published with a strategy table built for them |
//! | `tower_lb_wrr_endpoint_weight` | gauge | balancer, endpoint | with [`WeightedRoundRobin`](crate::strategy) (feature `orca`): the weight its load reports give the endpoint (`qps / utilization`, gRPC A78's `grpc.lb.wrr.endpoint_weights`), 0 while it has none usable; set at each schedule rebuild, only by that strategy |
//! | `tower_lb_prequal_fallbacks_total` | counter | balancer | with [`Prequal`](crate::strategy) (feature `prequal`): picks made by its fallback, power of two choices on requests in flight, because no probe in the pool was usable; registered at the first fallback |
//! | `tower_lb_subset_members` | gauge | balancer | with a [subset](crate::discover::subset) adapter named by [`Subset::metrics`](crate::discover::subset::Subset::metrics): members of the current subset |
//! | `tower_lb_subset_backends` | gauge | balancer | the same adapter: backends in the full set it chooses from |
//! | `tower_lb_subset_joined_total` | counter | balancer | the same adapter: backends that joined the subset, the first subset included |
//! | `tower_lb_subset_left_total` | counter | balancer | the same adapter: backends that left the subset |
//! | `tower_lb_fail_fast_total` | counter | balancer, reason | requests refused because no endpoint was eligible within the fail-fast timeout; `reason` is [`UnavailableReason`](crate::error::UnavailableReason) in snake case (`no_endpoints`, `all_zero_weight`, `none_ready`, `all_unhealthy`) |
//!
//! # Cost
//!
//! Handles are registered once: the balancer's when it is built, an endpoint's when it is
//! first inserted; they live with the endpoint, so nothing is ever looked up by name.
//!
//! - The counters every request moves (requests sent, in flight, cancelled) are the
//!   endpoint's own atomics, which the balancer keeps anyway; its background task copies
//!   them into the metrics every [`SYNC`] (one second), so a request pays nothing for them.
//!   Scrapes (every 15 s or more) never see the difference.
//! - A request's latency is counted in a log-linear bucket inside the endpoint (8 buckets
//!   per doubling: within 6.25 % of the true value; one atomic add) and handed to the
//!   recorder's histogram at the next sync. Measuring it takes two clock reads per request,
//!   none more when the strategy reads the clock anyway (peak-EWMA).
//! - Failures and fail-fast refusals update their counter when they happen (off the
//!   success path).
//!
//! Without a recorder (or with a zero-sized one such as `metrics::NoopRecorder`) no handle
//! is registered, and a request pays a branch on an absent pointer. The figures are in the
//! README (`cargo bench --features metrics --bench metrics`).
//!
//! Install the recorder before building the balancer: handles are bound to the recorder
//! present when they are registered.
//!
//! # Bounded cardinality
//!
//! Labels are the balancer's name, the endpoint's name and the fixed `reason` sets above:
//! the number of series is bounded by the endpoints a balancer has ever seen. When an
//! endpoint is removed, its health and weight gauges go to 0 at once, `tower_lb_rq_active`
//! when its last request in flight ends, and its series then stop changing. The facade
//! cannot delete a series; a recorder configured with an idle timeout drops the ones that
//! stop changing (without one, they stay, unchanged). With metrics-exporter-prometheus,
//! `PrometheusBuilder::idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(300)))`
//! removes a removed endpoint's series five minutes after its last update. The balancer
//! writes every series of the endpoints still in the set every [`SYNC`], so live endpoints
//! never look idle, with one exception: the latency histogram has no sample to write while
//! the endpoint gets no request, so a recorder may drop it; the balancer looks the
//! histogram up again at each sync that has samples, so it comes back with the next
//! request. The series that may rest for long (the histogram, Prequal's fallbacks, weighted
//! round robin's weights) are looked up at each write for the same reason, and a subset
//! adapter writes its series every [`SYNC`]. An endpoint that comes back under the same
//! name continues its series.
//!
//! Labels are fixed when the endpoint is first inserted: an update that changes its
//! metadata name keeps the old label.

mod balancer;
mod driver;
mod endpoint;
mod latency;
mod subset;

pub(crate) use balancer::BalancerMetrics;
pub(crate) use driver::DriverMetrics;
pub(crate) use endpoint::{EndpointMetrics, Failure};
pub(crate) use subset::SubsetMetrics;

use std::time::Duration;

/// Requests sent to an endpoint (counter).
pub const REQUESTS_TOTAL: &str = "tower_lb_requests_total";
/// Failed requests and readiness checks by `reason` (counter).
pub const REQUESTS_FAILED_TOTAL: &str = "tower_lb_requests_failed_total";
/// Requests cancelled before their outcome (counter).
pub const REQUESTS_CANCELLED_TOTAL: &str = "tower_lb_requests_cancelled_total";
/// Requests in flight (gauge).
pub const RQ_ACTIVE: &str = "tower_lb_rq_active";
/// Request latency in seconds (histogram).
pub const REQUEST_DURATION_SECONDS: &str = "tower_lb_request_duration_seconds";
/// 1 while an endpoint takes new requests (gauge).
pub const ENDPOINT_HEALTHY: &str = "tower_lb_endpoint_healthy";
/// An endpoint's effective weight (gauge).
pub const ENDPOINT_WEIGHT: &str = "tower_lb_endpoint_weight";
/// Ejections of an endpoint (counter).
pub const EJECTIONS_TOTAL: &str = "tower_lb_ejections_total";
/// Endpoints in the set (gauge).
pub const ENDPOINTS: &str = "tower_lb_endpoints";
/// Endpoints that pass their health checks and are not ejected (gauge).
pub const ENDPOINTS_HEALTHY: &str = "tower_lb_endpoints_healthy";
/// Endpoints ejected now (gauge).
pub const EJECTIONS_ACTIVE: &str = "tower_lb_ejections_active";
/// 1 while the balancer is in panic mode (gauge).
pub const PANIC_MODE: &str = "tower_lb_panic_mode";
/// Discovery changes applied (counter).
pub const DISCOVERY_UPDATES_TOTAL: &str = "tower_lb_discovery_updates_total";
/// Discovery errors (counter).
pub const DISCOVERY_ERRORS_TOTAL: &str = "tower_lb_discovery_errors_total";
/// Snapshots published with a new strategy table (counter).
pub const TABLE_REBUILDS_TOTAL: &str = "tower_lb_table_rebuilds_total";
/// Requests refused by fail-fast, by `reason` (counter).
pub const FAIL_FAST_TOTAL: &str = "tower_lb_fail_fast_total";
/// Weighted round robin's weight of an endpoint, from its load reports (gauge; feature
/// `orca`).
pub const WRR_ENDPOINT_WEIGHT: &str = "tower_lb_wrr_endpoint_weight";
/// Prequal's picks by its fallback, power of two choices, because no probe was usable
/// (counter; feature `prequal`).
pub const PREQUAL_FALLBACKS_TOTAL: &str = "tower_lb_prequal_fallbacks_total";
/// Members of a [subset](crate::discover::subset) adapter's current subset (gauge).
pub const SUBSET_MEMBERS: &str = "tower_lb_subset_members";
/// Backends in the full set a subset adapter chooses from (gauge).
pub const SUBSET_BACKENDS: &str = "tower_lb_subset_backends";
/// Backends that joined a subset adapter's subset, the first subset included (counter).
pub const SUBSET_JOINED_TOTAL: &str = "tower_lb_subset_joined_total";
/// Backends that left a subset adapter's subset (counter).
pub const SUBSET_LEFT_TOTAL: &str = "tower_lb_subset_left_total";

/// The label with the balancer's name.
pub const LABEL_BALANCER: &str = "balancer";
/// The label with the endpoint's name.
pub const LABEL_ENDPOINT: &str = "endpoint";
/// The label with a failure's or a refusal's reason.
pub const LABEL_REASON: &str = "reason";

/// How often the balancer copies the counters requests keep anyway (requests sent, in
/// flight, cancelled) into its metrics, and writes every live series again, so that a
/// recorder's idle timeout (longer than this) only ever drops removed endpoints' series.
pub const SYNC: Duration = Duration::from_secs(1);

/// Whether a recorder is installed (for this thread, or globally). A zero-sized recorder
/// (the facade's no-op one, which is what the facade uses when none is installed) holds
/// nothing to record into and counts as none.
pub(crate) fn recorder_installed() -> bool {
    ::metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Describes every metric, the first time a balancer or an adapter registers its series.
fn describe_once() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(describe);
}

/// Describes every metric once per recorder (units and help text for exporters).
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS_TOTAL, "Requests sent to the endpoint.");
    describe_counter!(
        REQUESTS_FAILED_TOTAL,
        "Failed requests (classified, unreachable) and failed readiness checks."
    );
    describe_counter!(
        REQUESTS_CANCELLED_TOTAL,
        "Requests dropped before their outcome."
    );
    describe_gauge!(RQ_ACTIVE, "Requests in flight.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from the call to the outcome of a request."
    );
    describe_gauge!(ENDPOINT_HEALTHY, "1 while the endpoint takes new requests.");
    describe_gauge!(ENDPOINT_WEIGHT, "The endpoint's effective weight.");
    describe_counter!(EJECTIONS_TOTAL, "Ejections by outlier detection.");
    describe_gauge!(ENDPOINTS, "Endpoints in the set.");
    describe_gauge!(ENDPOINTS_HEALTHY, "Endpoints healthy and not ejected.");
    describe_gauge!(EJECTIONS_ACTIVE, "Endpoints ejected now.");
    describe_gauge!(PANIC_MODE, "1 while the balancer is in panic mode.");
    describe_counter!(DISCOVERY_UPDATES_TOTAL, "Discovery changes applied.");
    describe_counter!(DISCOVERY_ERRORS_TOTAL, "Discovery errors.");
    describe_counter!(TABLE_REBUILDS_TOTAL, "Strategy tables built.");
    describe_counter!(
        FAIL_FAST_TOTAL,
        "Requests refused: no endpoint eligible within the fail-fast timeout."
    );
    #[cfg(feature = "prequal")]
    describe_counter!(
        PREQUAL_FALLBACKS_TOTAL,
        "Prequal's picks by its fallback: no probe in the pool was usable."
    );
    describe_gauge!(SUBSET_MEMBERS, "Members of the current subset.");
    describe_gauge!(SUBSET_BACKENDS, "Backends the subset is chosen from.");
    describe_counter!(SUBSET_JOINED_TOTAL, "Backends that joined the subset.");
    describe_counter!(SUBSET_LEFT_TOTAL, "Backends that left the subset.");
    #[cfg(feature = "orca")]
    describe_gauge!(
        WRR_ENDPOINT_WEIGHT,
        "Weighted round robin's weight of the endpoint, from its load reports."
    );
}
