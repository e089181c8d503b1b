//! Health at the defaults, in the seed's shape: three instances of a service, two of them
//! broken, and the balancer built with `Balance::builder()` and nothing else (the default
//! classifier, least request, outlier detection on by default). Then the same rules over a
//! fleet of 100.
//!
//! Real hyper servers on 127.0.0.1 for the seed's case; simulated instances under tokio's
//! paused clock for every mix of faults (refused connections, 500s, requests that never
//! answer) and for the fleet. `cargo test --test health_defaults -- --nocapture` prints
//! the figures.

mod common;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{endpoints, Captured, Server};
use http_body_util::Empty;
use tower::{Service, ServiceExt};
use tower_lb::endpoint::EndpointState;
use tower_lb::error::BoxError;
use tower_lb::health::{ActiveChecks, HealthReason, Initial, Probe, ProbeFailure, ProbeTarget};
use tower_lb::health::{OutlierDetection, SlowStart, TcpProbe};
use tower_lb::{discover, Balance};

// ------------------------------------------------------------------------------------------
// The seed's case with real servers
// ------------------------------------------------------------------------------------------

/// Sends `total` requests made by `request` through `balance`, from `tasks` tasks at once;
/// returns how many failed (an error, or a 5xx answer).
async fn failures<S, R, B>(balance: &S, tasks: usize, total: usize, request: fn() -> R) -> usize
where
    S: Service<R, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Send,
    S::Future: Send,
    R: Send + 'static,
    B: Send + 'static,
{
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let balance = balance.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..total / tasks {
                    match balance.clone().oneshot(request()).await {
                        Ok(response) if !response.status().is_server_error() => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for handle in handles {
        failed += handle.await.unwrap();
    }
    failed
}

/// Sends `total` GETs from `tasks` tasks to real servers; returns how many failed.
async fn send_all<S>(balance: &S, tasks: usize, total: usize) -> usize
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: Send,
    S::Future: Send,
{
    failures(balance, tasks, total, || {
        http::Request::get("/").body(Empty::new()).unwrap()
    })
    .await
}

/// Three servers: one well, one answering 500 to everything, one refusing connections.
async fn seed_servers() -> (Server, Server, Server, tokio::net::TcpSocket) {
    let ok = Server::start(200).await;
    let bad = Server::start(500).await;
    let mut gone = Server::start(200).await;
    let tombstone = gone.stop().await;
    (ok, bad, gone, tombstone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_one_500_one_refusing_the_defaults_keep_traffic_on_the_healthy_one() {
    let (ok, bad, gone, _tombstone) = seed_servers().await;
    let balance = Balance::builder()
        .build(discover::static_list(endpoints(&[&ok, &bad, &gone])))
        .unwrap();
    let state = |server: &Server| {
        let stats = balance.endpoints();
        stats.iter().find(|e| e.key == server.addr).unwrap().state
    };
    // Detection: until both broken servers are out, at most 5 failures each (their
    // consecutive-failure count), plus the requests the 4 senders already had in flight.
    let mut detection_failures = 0;
    let mut detection_requests = 0;
    while state(&bad) != EndpointState::Ejected || state(&gone) != EndpointState::Ejected {
        detection_failures += send_all(&balance, 4, 40).await;
        detection_requests += 40;
        assert!(
            detection_requests <= 20_000,
            "not detected in 20 000 requests"
        );
    }
    let failed = send_all(&balance, 4, 2_000).await;
    eprintln!(
        "seed case (500 + refused, defaults): detection {detection_failures} failed of \
         {detection_requests}; then {failed} failed of 2000 ({:.2} %)",
        failed as f64 / 20.0
    );
    assert!(detection_failures <= 2 * (5 + 3), "{detection_failures}");
    assert!(failed <= 20, "{failed} of 2000 failed after detection");
    let health = balance.health_stats();
    assert!(health.panic, "1 of 3 healthy is below the threshold");
    assert_eq!(health.admitted_unhealthy, 0, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_health_settings_with_the_default_classifier_do_the_same() {
    let (ok, bad, gone, _tombstone) = seed_servers().await;
    let balance = Balance::builder()
        .active_checks(
            TcpProbe::new(),
            ActiveChecks::new().initial(Initial::Unhealthy),
        )
        .outlier_detection(OutlierDetection::new())
        .slow_start(SlowStart::new(Duration::from_secs(30)))
        .build(discover::static_list(endpoints(&[&ok, &bad, &gone])))
        .unwrap();
    let mut events = balance.health_events();
    // The first probes: the refusing server is unhealthy, and unreachable.
    let mut answered = 0;
    while answered < 3 {
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut events),
        )
        .await
        .expect("first probe answers")
        .expect("events");
        if matches!(
            event.reason,
            HealthReason::ProbeSucceeded | HealthReason::ProbeFailed(_)
        ) {
            answered += 1;
        }
    }
    let bad_state = || {
        let stats = balance.endpoints();
        stats.iter().find(|e| e.key == bad.addr).unwrap().state
    };
    // The 500 server fails at most its 5 in a row, plus what was in flight; the refusing
    // one is out from its first probe (and stays out in panic mode: it is unreachable).
    let (mut detection, mut requests) = (0, 0);
    while bad_state() != EndpointState::Ejected {
        detection += send_all(&balance, 4, 40).await;
        requests += 40;
        assert!(requests <= 20_000, "not detected in 20 000 requests");
    }
    let failed = send_all(&balance, 4, 2_000).await;
    eprintln!(
        "seed case with the README's health settings: detection {detection} failed of \
         {requests}, then {failed} of 2000"
    );
    assert!(detection <= 5 + 3, "{detection}");
    assert_eq!(bad.hits(), detection);
    assert!(failed <= 20, "{failed} of 2000 failed after detection");
}

// ------------------------------------------------------------------------------------------
// Every mix of two faults among three instances (paused clock)
// ------------------------------------------------------------------------------------------

/// What a simulated instance does with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Answers 200 after 5 ms.
    None,
    /// Fails at once with `ConnectionRefused`, as a client does when nothing listens.
    Refuses,
    /// Answers 500 after 1 ms.
    Answers500,
    /// Never answers (the request timeout, inside the balancer, ends it).
    Hangs,
}

/// A simulated instance of a service whose fault can change.
#[derive(Clone)]
struct Instance {
    /// The fault it was made with, for the tests to tell the broken ones.
    fault: Fault,
    now: Arc<Mutex<Fault>>,
    latency: Duration,
    hits: Arc<AtomicUsize>,
}

impl Instance {
    fn new(fault: Fault) -> Self {
        Instance {
            fault,
            now: Arc::new(Mutex::new(fault)),
            latency: Duration::from_millis(5),
            hits: Arc::default(),
        }
    }

    /// Healthy answers take `latency` (5 ms by default).
    fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn fault(&self) -> Fault {
        *self.now.lock().unwrap()
    }

    fn set(&self, fault: Fault) {
        *self.now.lock().unwrap() = fault;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl Service<()> for Instance {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BoxFut<http::Response<()>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let fault = self.fault();
        let latency = self.latency;
        Box::pin(async move {
            let status = match fault {
                Fault::None => {
                    tokio::time::sleep(latency).await;
                    200
                }
                Fault::Refuses => {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused).into())
                }
                Fault::Answers500 => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    500
                }
                Fault::Hangs => std::future::pending().await,
            };
            Ok(http::Response::builder().status(status).body(()).unwrap())
        })
    }
}

/// The endpoint service: an instance behind a request timeout of 1 s, inside the balancer
/// (so a timed-out request is a failure the balancer sees).
type Endpoint = tower::timeout::Timeout<Instance>;

fn endpoint(instance: &Instance) -> Endpoint {
    tower::timeout::Timeout::new(instance.clone(), Duration::from_secs(1))
}

/// Sends `total` requests from `tasks` tasks to simulated instances; returns how many
/// failed.
async fn drive<S>(balance: &S, tasks: usize, total: usize) -> usize
where
    S: Service<(), Response = http::Response<()>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    failures(balance, tasks, total, || ()).await
}

fn states<S, P: tower_lb::strategy::Strategy, C, T, H>(
    balance: &Balance<usize, S, P, C, T, H>,
) -> Vec<EndpointState> {
    balance.endpoints().iter().map(|e| e.state).collect()
}

/// Builds the defaults over `instances` and sends requests until every broken one is
/// ejected (returning the failures and requests of that detection), then `after` more
/// (returning their failures).
async fn detect_then_measure(instances: &[Instance], after: usize) -> (usize, usize, usize) {
    let balance = Balance::builder()
        .build(discover::static_list(
            instances
                .iter()
                .map(endpoint)
                .enumerate()
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let broken: Vec<usize> = (0..instances.len())
        .filter(|&i| instances[i].fault != Fault::None)
        .collect();
    let (mut failures, mut requests) = (0, 0);
    while broken
        .iter()
        .any(|&i| states(&balance)[i] != EndpointState::Ejected)
    {
        failures += drive(&balance, 4, 40).await;
        requests += 40;
        assert!(requests <= 40_000, "not detected: {:?}", states(&balance));
    }
    let failed = drive(&balance, 4, after).await;
    (failures, requests, failed)
}

#[tokio::test(start_paused = true)]
async fn any_two_of_three_broken_in_any_mix_fail_at_most_their_detection() {
    use Fault::*;
    let faults = [Refuses, Answers500, Hangs];
    for (i, &first) in faults.iter().enumerate() {
        for &second in &faults[i..] {
            let instances = [
                Instance::new(None),
                Instance::new(first),
                Instance::new(second),
            ];
            let (detection, requests, failed) = detect_then_measure(&instances, 4_000).await;
            eprintln!(
                "{first:?} + {second:?}: detection {detection} failed of {requests}, then \
                 {failed} of 4000"
            );
            // Each broken instance fails at most its 5 in a row, plus the requests the
            // other 3 senders had in flight on it.
            assert!(
                detection <= 2 * (5 + 3),
                "{first:?} + {second:?}: {detection}"
            );
            assert!(
                failed <= 40,
                "{first:?} + {second:?}: {failed} of 4000 after detection"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn over_ten_minutes_the_two_broken_instances_cost_under_one_percent() {
    // Ejections end (30 s, then 60 s, ... up to 300 s); each return on probation costs one
    // failed request before the next ejection.
    let instances = [
        Instance::new(Fault::None).latency(Duration::from_millis(50)),
        Instance::new(Fault::Answers500),
        Instance::new(Fault::Refuses),
    ];
    let balance = Balance::builder()
        .build(discover::static_list(
            instances
                .iter()
                .map(endpoint)
                .enumerate()
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let start = tokio::time::Instant::now();
    let (mut sent, mut failed) = (0, 0);
    while start.elapsed() < Duration::from_secs(600) {
        failed += drive(&balance, 4, 400).await;
        sent += 400;
    }
    eprintln!("10 minutes: {failed} failed of {sent}");
    assert!(failed * 100 <= sent, "{failed} of {sent}");
}

// ------------------------------------------------------------------------------------------
// Recovery (paused clock)
// ------------------------------------------------------------------------------------------

/// A probe that is refused a connection while its instance refuses requests.
#[derive(Clone)]
struct Reachable(Vec<Instance>);

impl Probe for Reachable {
    type Future = std::future::Ready<Result<(), ProbeFailure>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        let index: usize = target.name().parse().expect("endpoints are named by index");
        std::future::ready(if self.0[index].fault() == Fault::Refuses {
            Err(ProbeFailure::Connect(
                io::ErrorKind::ConnectionRefused.into(),
            ))
        } else {
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_takes_traffic_within_one_probe_interval_plus_probation() {
    let instances = [
        Instance::new(Fault::None),
        Instance::new(Fault::None),
        Instance::new(Fault::None),
    ];
    let balance = Balance::builder()
        .active_checks(Reachable(instances.to_vec()), ActiveChecks::new())
        .build(discover::static_list(
            instances
                .iter()
                .map(endpoint)
                .enumerate()
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let mut events = balance.health_events();
    drive(&balance, 4, 400).await;
    // Instance 2 stops: its requests are refused until it is ejected, and its probes fail.
    instances[2].set(Fault::Refuses);
    while states(&balance)[2] != EndpointState::Ejected {
        drive(&balance, 4, 40).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // It restarts.
    instances[2].set(Fault::None);
    let restarted = tokio::time::Instant::now();
    let hits = instances[2].hits();
    // Traffic, one request at a time as a light load sends it, until it reaches instance 2.
    while instances[2].hits() == hits {
        drive(&balance, 1, 1).await;
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "never came back"
        );
    }
    let back_after = restarted.elapsed();
    let mut reasons = Vec::new();
    while let Some(Some(event)) =
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut events))
    {
        if event.key == 2 {
            reasons.push(event.reason.to_string());
        }
    }
    eprintln!("restarted instance served again after {back_after:?}: {reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r == "probe succeeded after failing during the ejection"),
        "{reasons:?}"
    );
    // One probe interval (2 s, + 10 % jitter) and the probation interval (10 s), at most:
    // under a light load, a tenth of the weight draws no request until probation ends.
    assert!(
        back_after <= Duration::from_millis(2_200 + 10_000 + 50),
        "{back_after:?}"
    );
    drive(&balance, 4, 400).await;
    assert_eq!(states(&balance)[2], EndpointState::Active);
}

// ------------------------------------------------------------------------------------------
// A fleet of 100 (paused clock)
// ------------------------------------------------------------------------------------------

fn fleet(faults: impl Fn(usize) -> Fault) -> Vec<Instance> {
    (0..100).map(|i| Instance::new(faults(i))).collect()
}

#[tokio::test(start_paused = true)]
async fn a_hundred_instances_two_broken_are_both_ejected() {
    let instances = fleet(|i| match i {
        17 => Fault::Refuses,
        71 => Fault::Answers500,
        _ => Fault::None,
    });
    let (detection, requests, failed) = detect_then_measure(&instances, 4_000).await;
    eprintln!(
        "100 instances, 2 broken: detection {detection} of {requests}, then {failed} of 4000"
    );
    assert!(detection <= 2 * (5 + 3), "{detection}");
    assert_eq!(failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_instances_sixty_refusing_are_all_ejected_beyond_the_cap() {
    let instances = fleet(|i| if i < 60 { Fault::Refuses } else { Fault::None });
    let (detection, requests, failed) = detect_then_measure(&instances, 4_000).await;
    eprintln!(
        "100 instances, 60 refusing: detection {detection} of {requests}, then {failed} of 4000"
    );
    assert!(detection <= 60 * (5 + 3), "{detection}");
    assert_eq!(failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_instances_sixty_answering_500_eject_at_most_half() {
    // Answered failures can come from an overload that every instance shares: outlier
    // detection takes out at most half of the fleet for them.
    let instances = fleet(|i| {
        if i < 60 {
            Fault::Answers500
        } else {
            Fault::None
        }
    });
    let balance = Balance::builder()
        .build(discover::static_list(
            instances
                .iter()
                .map(endpoint)
                .enumerate()
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let (mut sent, mut most) = (0, 0);
    while most < 50 {
        drive(&balance, 4, 400).await;
        sent += 400;
        let health = balance.health_stats();
        assert!(health.ejected <= 50, "{health:?}");
        assert!(!health.panic, "{health:?}");
        most = most.max(health.ejected);
        assert!(sent <= 400_000, "{health:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Panic mode is logged
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn panic_mode_is_logged_as_a_warning_when_it_starts() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let instances = [
        Instance::new(Fault::None),
        Instance::new(Fault::Answers500),
        Instance::new(Fault::Refuses),
    ];
    detect_then_measure(&instances, 40).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("panic mode:"))
        .unwrap_or_else(|| panic!("no panic-mode warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("1 of 3 endpoints healthy, below the 50 % threshold"),
        "{line}"
    );
}
