//! What the balancer records through the `metrics` facade (feature `metrics`): exact counts
//! after driving requests, failures, cancellations, ejections, discovery changes and
//! fail-fast refusals, and how a removed endpoint's series end.
//!
//! One recorder is installed for the whole test binary (a registry of atomics, read without
//! resetting anything), and each test names its balancer after itself, so that tests
//! running in parallel read only their own series.

#![cfg(feature = "metrics")]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{hold, send, settle, Backend};
use futures::channel::mpsc;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::{self, Change};
use tower_lb::error::BoxError;
use tower_lb::health::OutlierDetection;
use tower_lb::metrics as names;
use tower_lb::strategy::RoundRobin;
use tower_lb::Builder;

/// A recorder whose values the tests read in place.
struct TestRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// The registry of the binary's recorder, installed at the first call.
fn registry() -> &'static Registry<Key, AtomicStorage> {
    static REGISTRY: OnceLock<Arc<Registry<Key, AtomicStorage>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::atomic());
        metrics::set_global_recorder(TestRecorder(registry.clone()))
            .expect("no other recorder in this binary");
        registry
    })
}

/// The key of `name` for balancer `balancer` with these further labels.
fn key(name: &'static str, balancer: &str, labels: &[(&'static str, &str)]) -> Key {
    let mut all = vec![metrics::Label::new(
        names::LABEL_BALANCER,
        balancer.to_owned(),
    )];
    all.extend(
        labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, (*v).to_owned())),
    );
    Key::from_parts(name, all)
}

fn counter(name: &'static str, balancer: &str, labels: &[(&'static str, &str)]) -> Option<u64> {
    registry()
        .get_counter(&key(name, balancer, labels))
        .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
}

fn gauge(name: &'static str, balancer: &str, labels: &[(&'static str, &str)]) -> Option<f64> {
    registry()
        .get_gauge(&key(name, balancer, labels))
        .map(|g| f64::from_bits(g.load(std::sync::atomic::Ordering::SeqCst)))
}

/// The samples of a histogram (drained: each sample is returned once).
fn samples(name: &'static str, balancer: &str, labels: &[(&'static str, &str)]) -> Vec<f64> {
    let mut out = Vec::new();
    if let Some(h) = registry().get_histogram(&key(name, balancer, labels)) {
        h.clear_with(|values| out.extend_from_slice(values));
    }
    out
}

/// Checks recorded latencies against the true ones: as many, each within the 6.25 % of
/// its bucket's midpoint.
fn assert_latencies(recorded: &[f64], expected: &[f64]) {
    assert_eq!(recorded.len(), expected.len(), "{recorded:?}");
    for (r, e) in recorded.iter().zip(expected) {
        assert!((r - e).abs() <= e / 16.0, "{r} s recorded for {e} s");
    }
}

/// Waits (tokio's clock) for the balancer's next copy of its request counters.
async fn synced() {
    tokio::time::sleep(names::SYNC).await;
    settle().await;
}

fn endpoint(name: &str) -> [(&'static str, &str); 1] {
    [(names::LABEL_ENDPOINT, name)]
}

fn failed<'a>(name: &'a str, reason: &'a str) -> [(&'static str, &'a str); 2] {
    [(names::LABEL_ENDPOINT, name), (names::LABEL_REASON, reason)]
}

#[tokio::test(start_paused = true)]
async fn requests_failures_and_latency_are_counted_per_endpoint() {
    registry();
    let b = "requests";
    let mut balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .outlier_detection(None)
        .build(discover::static_list([
            ("a", Backend::new("a").delay(Duration::from_millis(5))),
            (
                "b",
                Backend::new("b").delay(Duration::from_millis(20)).failing(),
            ),
        ]))
        .unwrap();
    for _ in 0..6 {
        let _ = send(&mut balance).await;
    }
    synced().await;
    let c = |name, labels: &[_]| counter(name, b, labels);
    assert_eq!(c(names::REQUESTS_TOTAL, &endpoint("a")), Some(3));
    assert_eq!(c(names::REQUESTS_TOTAL, &endpoint("b")), Some(3));
    assert_eq!(
        c(names::REQUESTS_FAILED_TOTAL, &failed("a", "classified")),
        Some(0)
    );
    assert_eq!(
        c(names::REQUESTS_FAILED_TOTAL, &failed("b", "classified")),
        Some(3)
    );
    assert_eq!(
        c(names::REQUESTS_FAILED_TOTAL, &failed("b", "unreachable")),
        Some(0)
    );
    assert_eq!(c(names::REQUESTS_CANCELLED_TOTAL, &endpoint("b")), Some(0));
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(0.0));
    // Latency on tokio's paused clock: the backends' delays, errors included, as the
    // midpoints of their buckets.
    assert_latencies(
        &samples(names::REQUEST_DURATION_SECONDS, b, &endpoint("a")),
        &[0.005; 3],
    );
    assert_latencies(
        &samples(names::REQUEST_DURATION_SECONDS, b, &endpoint("b")),
        &[0.02; 3],
    );
    // Balancer-wide: two endpoints, both healthy, one table.
    assert_eq!(gauge(names::ENDPOINTS, b, &[]), Some(2.0));
    assert_eq!(gauge(names::ENDPOINTS_HEALTHY, b, &[]), Some(2.0));
    assert_eq!(gauge(names::PANIC_MODE, b, &[]), Some(0.0));
    assert_eq!(gauge(names::ENDPOINT_WEIGHT, b, &endpoint("a")), Some(1.0));
    assert_eq!(gauge(names::ENDPOINT_HEALTHY, b, &endpoint("a")), Some(1.0));
    // A static list is one change: a reset with both endpoints.
    assert_eq!(counter(names::DISCOVERY_UPDATES_TOTAL, b, &[]), Some(1));
    assert_eq!(counter(names::TABLE_REBUILDS_TOTAL, b, &[]), Some(1));
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_and_cancellations() {
    registry();
    let b = "in_flight";
    let mut balance = Builder::new()
        .name(b)
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "a",
            Backend::new("a").delay(Duration::from_secs(1)),
        )]))
        .unwrap();
    let held = hold(&mut balance, 3).await;
    synced().await;
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(3.0));
    assert_eq!(counter(names::REQUESTS_TOTAL, b, &endpoint("a")), Some(3));
    let mut held = held.into_iter();
    // One completes, two are dropped before their answer.
    held.next().unwrap().await.unwrap();
    drop(held);
    synced().await;
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(0.0));
    assert_eq!(
        counter(names::REQUESTS_CANCELLED_TOTAL, b, &endpoint("a")),
        Some(2)
    );
    // Cancelled requests have no latency sample. The completed one was called, waited a
    // second unpolled (the sync above), then took its backend's second.
    assert_latencies(
        &samples(names::REQUEST_DURATION_SECONDS, b, &endpoint("a")),
        &[2.0],
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_failures_have_their_own_reason() {
    registry();
    let b = "readiness";
    let mut balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .outlier_detection(None)
        .build(discover::static_list([
            ("a", Backend::new("a")),
            ("broken", Backend::new("broken").ready_error()),
        ]))
        .unwrap();
    for _ in 0..4 {
        assert_eq!(send(&mut balance).await.unwrap(), "a");
    }
    let readiness = counter(
        names::REQUESTS_FAILED_TOTAL,
        b,
        &failed("broken", "readiness"),
    )
    .unwrap();
    assert!(readiness >= 1, "readiness failures: {readiness}");
    assert_eq!(
        balance.endpoints()[1].readiness_failures,
        readiness,
        "the metric counts what the stats count"
    );
    assert_eq!(
        counter(names::REQUESTS_TOTAL, b, &endpoint("broken")),
        Some(0)
    );
    assert_eq!(
        counter(
            names::REQUESTS_FAILED_TOTAL,
            b,
            &failed("broken", "classified")
        ),
        Some(0)
    );
}

#[tokio::test(start_paused = true)]
async fn ejections_and_panic_mode() {
    registry();
    let b = "ejections";
    let mut balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(Some(2))
                .max_ejection_percent(100),
        )
        .build(discover::static_list([
            ("ok", Backend::new("ok")),
            ("bad1", Backend::new("bad1").failing()),
            ("bad2", Backend::new("bad2").failing()),
        ]))
        .unwrap();
    // Round robin: two failures each for bad1 and bad2 within six requests.
    for _ in 0..6 {
        let _ = send(&mut balance).await;
        settle().await;
    }
    settle().await;
    assert_eq!(
        counter(names::EJECTIONS_TOTAL, b, &endpoint("bad1")),
        Some(1)
    );
    assert_eq!(
        counter(names::EJECTIONS_TOTAL, b, &endpoint("bad2")),
        Some(1)
    );
    assert_eq!(counter(names::EJECTIONS_TOTAL, b, &endpoint("ok")), Some(0));
    assert_eq!(gauge(names::EJECTIONS_ACTIVE, b, &[]), Some(2.0));
    assert_eq!(gauge(names::ENDPOINTS_HEALTHY, b, &[]), Some(1.0));
    assert_eq!(
        gauge(names::ENDPOINT_HEALTHY, b, &endpoint("bad1")),
        Some(0.0)
    );
    assert_eq!(
        gauge(names::ENDPOINT_WEIGHT, b, &endpoint("bad1")),
        Some(0.0)
    );
    assert_eq!(
        gauge(names::ENDPOINT_HEALTHY, b, &endpoint("ok")),
        Some(1.0)
    );
    // One of three healthy is below the 50 % threshold.
    assert_eq!(gauge(names::PANIC_MODE, b, &[]), Some(1.0));
    assert!(
        balance.health_stats().panic,
        "the gauge says what the stats say"
    );
}

#[tokio::test(start_paused = true)]
async fn discovery_changes_errors_and_removed_endpoints() {
    registry();
    let b = "discovery";
    let (tx, rx) = mpsc::unbounded::<Result<Change<&'static str, Backend>, BoxError>>();
    let mut balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    tx.unbounded_send(Ok(Change::insert(
        "a",
        Backend::new("a").delay(Duration::from_secs(1)),
    )))
    .unwrap();
    tx.unbounded_send(Ok(Change::insert("b", Backend::new("b"))))
        .unwrap();
    settle().await;
    assert_eq!(gauge(names::ENDPOINTS, b, &[]), Some(2.0));
    assert_eq!(counter(names::TABLE_REBUILDS_TOTAL, b, &[]), Some(1));

    // A request in flight on `a` when `a` is removed finishes there.
    let mut held = hold(&mut balance, 1).await;
    synced().await;
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(1.0));
    tx.unbounded_send(Ok(Change::Remove("a"))).unwrap();
    tx.unbounded_send(Err("the registry is down".into()))
        .unwrap();
    settle().await;
    assert_eq!(counter(names::DISCOVERY_UPDATES_TOTAL, b, &[]), Some(3));
    assert_eq!(counter(names::DISCOVERY_ERRORS_TOTAL, b, &[]), Some(1));
    assert_eq!(counter(names::TABLE_REBUILDS_TOTAL, b, &[]), Some(2));
    assert_eq!(gauge(names::ENDPOINTS, b, &[]), Some(1.0));
    // The removed endpoint's gauges go to 0, except its request in flight...
    assert_eq!(gauge(names::ENDPOINT_HEALTHY, b, &endpoint("a")), Some(0.0));
    assert_eq!(gauge(names::ENDPOINT_WEIGHT, b, &endpoint("a")), Some(0.0));
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(1.0));
    // ...which still counts when it ends.
    held.pop().unwrap().await.unwrap();
    synced().await;
    assert_eq!(gauge(names::RQ_ACTIVE, b, &endpoint("a")), Some(0.0));
    assert_eq!(counter(names::REQUESTS_TOTAL, b, &endpoint("a")), Some(1));

    // Back under the same name, the endpoint continues its series.
    tx.unbounded_send(Ok(Change::insert("a", Backend::new("a"))))
        .unwrap();
    settle().await;
    assert_eq!(gauge(names::ENDPOINT_HEALTHY, b, &endpoint("a")), Some(1.0));
    let mut to_a = 0;
    for _ in 0..4 {
        to_a += u64::from(send(&mut balance).await.unwrap() == "a");
    }
    assert_eq!(to_a, 2, "round robin over a and b");
    synced().await;
    assert_eq!(
        counter(names::REQUESTS_TOTAL, b, &endpoint("a")),
        Some(1 + 2)
    );
}

#[tokio::test(start_paused = true)]
async fn live_series_are_written_again_and_removed_ones_are_not() {
    registry();
    let b = "refresh";
    let (tx, rx) = mpsc::unbounded::<Result<Change<&'static str, Backend>, BoxError>>();
    let _balance = Builder::new()
        .name(b)
        .classify(ErrorsAsFailures)
        .outlier_detection(None)
        .build(rx)
        .unwrap();
    tx.unbounded_send(Ok(Change::insert("live", Backend::new("live"))))
        .unwrap();
    tx.unbounded_send(Ok(Change::insert("gone", Backend::new("gone"))))
        .unwrap();
    settle().await;
    tx.unbounded_send(Ok(Change::Remove("gone"))).unwrap();
    settle().await;
    // Overwrite both endpoints' gauges; the refresh writes back the live one's only.
    let set = |name, value: f64| {
        registry()
            .get_gauge(&key(names::ENDPOINT_HEALTHY, b, &endpoint(name)))
            .unwrap()
            .store(value.to_bits(), std::sync::atomic::Ordering::SeqCst)
    };
    set("live", 42.0);
    set("gone", 42.0);
    tokio::time::sleep(names::SYNC - Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(
        gauge(names::ENDPOINT_HEALTHY, b, &endpoint("live")),
        Some(42.0)
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    settle().await;
    assert_eq!(
        gauge(names::ENDPOINT_HEALTHY, b, &endpoint("live")),
        Some(1.0)
    );
    assert_eq!(
        gauge(names::ENDPOINT_HEALTHY, b, &endpoint("gone")),
        Some(42.0)
    );
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refusals_by_reason() {
    registry();
    let b = "fail_fast";
    let mut balance = Builder::new()
        .name(b)
        .classify(ErrorsAsFailures)
        .fail_fast(Duration::from_millis(10))
        .build(discover::static_list(Vec::<(&str, Backend)>::new()))
        .unwrap();
    for _ in 0..2 {
        assert!(send(&mut balance).await.is_err());
    }
    let reason = |r| counter(names::FAIL_FAST_TOTAL, b, &[(names::LABEL_REASON, r)]);
    assert_eq!(reason("no_endpoints"), Some(2));
    assert_eq!(reason("all_unhealthy"), Some(0));
}

#[cfg(feature = "orca")]
#[tokio::test(start_paused = true)]
async fn weighted_round_robin_publishes_its_weights() {
    use tower::{Service, ServiceExt};
    use tower_lb::strategy::WeightedRoundRobin;
    registry();
    let b = "wrr";
    // Each endpoint reports 100 requests per second at its utilization: weights
    // 100 / 0.1 = 1000 and 100 / 0.5 = 200 (gRFC A58).
    let reporting = |utilization: &'static str| {
        tower::service_fn(move |_: ()| async move {
            let value = format!("TEXT rps_fractional=100,application_utilization={utilization}");
            let response = http::Response::builder()
                .header("endpoint-load-metrics", value)
                .body(())
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        })
    };
    let mut balance = Builder::new()
        .name(b)
        .strategy(WeightedRoundRobin::new().blackout_period(Duration::ZERO))
        .build(discover::static_list([
            ("a", reporting("0.1")),
            ("b", reporting("0.5")),
        ]))
        .unwrap();
    let weight = |name| gauge(names::WRR_ENDPOINT_WEIGHT, b, &endpoint(name));
    // Built before any report: no usable weight yet.
    assert_eq!((weight("a"), weight("b")), (Some(0.0), Some(0.0)));
    for _ in 0..4 {
        balance.ready().await.unwrap().call(()).await.unwrap();
    }
    // The schedule is rebuilt from the reports every second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    settle().await;
    assert_eq!((weight("a"), weight("b")), (Some(1000.0), Some(200.0)));
    // Another balancer's strategy sets no such series.
    assert_eq!(
        gauge(names::WRR_ENDPOINT_WEIGHT, "requests", &endpoint("a")),
        None
    );
}

#[cfg(feature = "prequal")]
#[tokio::test(start_paused = true)]
async fn prequal_counts_its_fallback_picks() {
    use std::future::{pending, Pending};
    use tower::{Service, ServiceExt};
    use tower_lb::health::ProbeTarget;
    use tower_lb::prequal::{ProbeAnswer, ProbeError, ProbeTransport};
    use tower_lb::strategy::Prequal;

    /// Probes that never answer: every pick is the fallback's.
    struct Silent;
    impl ProbeTransport for Silent {
        type Future = Pending<Result<ProbeAnswer, ProbeError>>;
        fn probe(&self, _: &ProbeTarget) -> Self::Future {
            pending()
        }
    }

    registry();
    let b = "prequal";
    let ok = || tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    let prequal = Prequal::new(Silent).with_seed(1);
    let monitor = prequal.monitor();
    let mut balance = Builder::new()
        .name(b)
        .strategy(prequal)
        .classify(ErrorsAsFailures)
        .build(discover::static_list([("a", ok()), ("b", ok())]))
        .unwrap();
    assert_eq!(counter(names::PREQUAL_FALLBACKS_TOTAL, b, &[]), None);
    for _ in 0..5 {
        balance.ready().await.unwrap().call(()).await.unwrap();
    }
    assert_eq!(monitor.stats().fallbacks, 5);
    // One series for the balancer, whichever endpoints the fallback chose.
    assert_eq!(counter(names::PREQUAL_FALLBACKS_TOTAL, b, &[]), Some(5));
    assert_eq!(
        counter(names::PREQUAL_FALLBACKS_TOTAL, b, &endpoint("a")),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_named_subset_adapter_records_its_subset() {
    use tower_lb::discover::subset::{self, Random};

    use tower::ServiceExt;

    registry();
    let b = "subset";
    let (tx, rx) = mpsc::unbounded::<Result<Change<String, Backend>, BoxError>>();
    let (source, handle) = subset::subset(rx, Random::with_seed(3, 42).unwrap());
    let mut balance = Builder::new()
        .name(b)
        .classify(ErrorsAsFailures)
        .build(source.metrics(b))
        .unwrap();
    let insert = |name: String| {
        tx.unbounded_send(Ok(Change::insert(name, Backend::new("backend"))))
            .unwrap()
    };
    for i in 0..10 {
        insert(format!("backend-{i}"));
    }
    settle().await;
    assert_eq!(gauge(names::SUBSET_MEMBERS, b, &[]), Some(3.0));
    assert_eq!(gauge(names::SUBSET_BACKENDS, b, &[]), Some(10.0));
    let stats = handle.stats();
    assert_eq!(
        counter(names::SUBSET_JOINED_TOTAL, b, &[]),
        Some(stats.joined)
    );
    assert_eq!(counter(names::SUBSET_LEFT_TOTAL, b, &[]), Some(stats.left));
    assert!(stats.joined >= 3, "{stats:?}");
    // A member leaves the full set: another backend takes its place.
    let gone = stats.members[0].key.clone();
    tx.unbounded_send(Ok(Change::Remove(gone))).unwrap();
    settle().await;
    let after = handle.stats();
    assert_eq!(after.left, stats.left + 1);
    assert_eq!(gauge(names::SUBSET_MEMBERS, b, &[]), Some(3.0));
    assert_eq!(gauge(names::SUBSET_BACKENDS, b, &[]), Some(9.0));
    assert_eq!(counter(names::SUBSET_LEFT_TOTAL, b, &[]), Some(after.left));
    assert_eq!(
        counter(names::SUBSET_JOINED_TOTAL, b, &[]),
        Some(after.joined)
    );
    balance.ready().await.unwrap();
}

/// A recorder's idle timeout drops series that stopped changing (metrics-exporter-
/// prometheus's `idle_timeout` deletes them from its registry, as done here by hand).
/// Series that may rest for long come back at their next write instead of going to
/// storage the recorder no longer reads: the latency histogram with the next request, a
/// subset adapter's gauges within a second.
#[tokio::test(start_paused = true)]
async fn series_dropped_by_an_idle_timeout_come_back() {
    use tower::ServiceExt;
    use tower_lb::discover::subset::{self, Random};

    registry();
    let b = "idle";
    let mut balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "a",
            Backend::new("a").delay(Duration::from_millis(5)),
        )]))
        .unwrap();
    send(&mut balance).await.unwrap();
    synced().await;
    let latency = key(names::REQUEST_DURATION_SECONDS, b, &endpoint("a"));
    assert!(registry().delete_histogram(&latency), "recorded");
    send(&mut balance).await.unwrap();
    synced().await;
    assert_latencies(
        &samples(names::REQUEST_DURATION_SECONDS, b, &endpoint("a")),
        &[0.005],
    );

    let s = "idle-subset";
    let (tx, rx) = mpsc::unbounded::<Result<Change<String, Backend>, BoxError>>();
    let (source, _handle) = subset::subset(rx, Random::with_seed(2, 1).unwrap());
    let mut subsetted = Builder::new()
        .name(s)
        .classify(ErrorsAsFailures)
        .build(source.metrics(s))
        .unwrap();
    for i in 0..5 {
        tx.unbounded_send(Ok(Change::insert(format!("b{i}"), Backend::new("b"))))
            .unwrap();
    }
    subsetted.ready().await.unwrap();
    settle().await;
    assert_eq!(gauge(names::SUBSET_MEMBERS, s, &[]), Some(2.0));
    assert!(registry().delete_gauge(&key(names::SUBSET_MEMBERS, s, &[])));
    assert!(registry().delete_counter(&key(names::SUBSET_JOINED_TOTAL, s, &[])));
    assert_eq!(gauge(names::SUBSET_MEMBERS, s, &[]), None);
    synced().await;
    assert_eq!(gauge(names::SUBSET_MEMBERS, s, &[]), Some(2.0));
    assert_eq!(counter(names::SUBSET_JOINED_TOTAL, s, &[]), Some(2));
}

/// The weight gauge is in discovery's units: while a new endpoint ramps up (slow start),
/// it shows its fraction of its weight, and the others their whole weight, not the scaled
/// integers the strategy is given.
#[tokio::test(start_paused = true)]
async fn weights_are_published_in_discoverys_units_while_an_endpoint_ramps() {
    use tower_lb::health::SlowStart;

    registry();
    let b = "ramp";
    let (tx, rx) = mpsc::unbounded::<Result<Change<&'static str, Backend>, BoxError>>();
    let _balance = Builder::new()
        .name(b)
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .slow_start(SlowStart::new(Duration::from_secs(10)))
        .build(rx)
        .unwrap();
    tx.unbounded_send(Ok(Change::insert("a", Backend::new("a"))))
        .unwrap();
    settle().await;
    let weight = |name| gauge(names::ENDPOINT_WEIGHT, b, &endpoint(name));
    assert_eq!(weight("a"), Some(1.0));
    tx.unbounded_send(Ok(Change::Insert(
        tower_lb::Endpoint::new("b", Backend::new("b")).with_weight(3),
    )))
    .unwrap();
    settle().await;
    // b starts at a tenth of its weight 3; a keeps 1.
    assert_eq!(weight("a"), Some(1.0));
    let start = weight("b").unwrap();
    assert!((start - 0.3).abs() < 0.011, "b starts at {start}");
    // Half way through the window: about half of 3.
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    let half = weight("b").unwrap();
    assert!((half - 1.5).abs() < 0.2, "b at 5 s: {half}");
    // After the window: its whole weight.
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!((weight("a"), weight("b")), (Some(1.0), Some(3.0)));
}
