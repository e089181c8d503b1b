//! Health through the balancer: active probes, passive outlier detection, panic mode, slow
//! start, draining and health events.
//!
//! Two kinds of tests:
//!
//! - **Real hyper servers on 127.0.0.1** that answer 500 or 503, hang past the timeout,
//!   refuse connections, then recover. They run on the real clock (tokio's paused clock
//!   does not drive real sockets) with short intervals, and wait for conditions by polling
//!   them ([`common::eventually`]), never by sleeping and hoping. Their timeouts and
//!   ejections are long enough for a loaded machine, and what they assert of time is only
//!   what a timer guarantees: never before it is due.
//! - **In-memory endpoints and a scripted in-memory probe under tokio's paused clock**, for
//!   everything that is about time: ejection lengths, probation, rise and fall, the outlier
//!   interval, the slow-start ramp. These assert exact counts and exact times.
//!
//! `cargo test --all-features --test health` (the HTTP probe tests need feature `http`).

mod common;

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceExt};
use tower_lb::balance::HealthEvents;
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::error::{BoxError, BuildError, Unavailable, UnavailableReason};
use tower_lb::health::outlier::FailurePercentage;
use tower_lb::health::{
    ActiveChecks, HealthEvent, HealthReason, Initial, OutlierDetection, Probe, ProbeFailure,
    ProbeTarget, SlowStart,
};
use tower_lb::strategy::{LeastRequest, RoundRobin, Strategy};
use tower_lb::{Balance, Builder};

use common::{
    endpoints, eventually, hold, picks, send, settle, stats_of, Backend, CallLog, Gate, Server,
    ToEndpoint, HANG, PATIENCE,
};

// ------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------

/// The events ready now, without waiting.
fn drain<K>(events: &mut HealthEvents<K>) -> Vec<HealthEvent<K>> {
    let mut out = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        out.push(event);
    }
    out
}

/// A probe failure in a few words, for exact comparisons.
fn failure_kind(failure: &ProbeFailure) -> String {
    match failure {
        ProbeFailure::Timeout(t) => format!("timeout {t:?}"),
        ProbeFailure::Connect(e) => format!("connect {:?}", e.kind()),
        ProbeFailure::Status(s) => format!("status {}", s.as_u16()),
        ProbeFailure::Unhealthy(why) => format!("unhealthy: {why}"),
        other => format!("other: {other}"),
    }
}

/// `key: from -> to (reason)`, with the key's `Debug` form without quotes.
fn summary<K: Debug>(event: &HealthEvent<K>) -> String {
    let reason = match &event.reason {
        HealthReason::ProbeSucceeded => "probe ok".to_string(),
        HealthReason::ProbeFailed(f) => format!("probe failed: {}", failure_kind(f)),
        HealthReason::ConsecutiveFailures(n) => format!("{n} in a row"),
        HealthReason::SuccessRate { .. } => "success rate".into(),
        HealthReason::FailurePercentage { .. } => "failure percentage".into(),
        HealthReason::EjectionEnded => "ejection ended".into(),
        HealthReason::ProbationPassed => "probation passed".into(),
        HealthReason::ProbationElapsed => "probation elapsed".into(),
        HealthReason::DrainStarted => "drain started".into(),
        HealthReason::DrainStopped => "drain stopped".into(),
        other => format!("other: {other}"),
    };
    let key = format!("{:?}", event.key);
    format!(
        "{}: {} -> {} ({reason})",
        key.trim_matches('"'),
        event.from,
        event.to
    )
}

fn summaries<K: Debug>(events: &[HealthEvent<K>]) -> Vec<String> {
    events.iter().map(summary).collect()
}

/// The summaries of the events ready now must be `expected`, in order.
#[track_caller]
fn expect_events<K: Debug>(events: &mut HealthEvents<K>, expected: &[impl AsRef<str>]) {
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    assert_eq!(summaries(&drain(events)), expected);
}

/// The balancer-wide health picture: (candidates, healthy, ejected, panic).
fn picture<K, S, P: Strategy, C, T, H>(
    balance: &Balance<K, S, P, C, T, H>,
) -> (usize, usize, usize, bool) {
    let stats = balance.health_stats();
    (stats.candidates, stats.healthy, stats.ejected, stats.panic)
}

/// The summaries of the events ready now, sorted (events of different endpoints that
/// happen at the same instant come in no particular order).
fn sorted_events<K: Debug>(events: &mut HealthEvents<K>) -> Vec<String> {
    let mut out = summaries(&drain(events));
    out.sort();
    out
}

/// Advances the paused clock by `d` in steps of at most 100 ms, letting the balancer's
/// driver run after each step, as it would on the real clock.
async fn advance(d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        let s = left.min(step);
        tokio::time::advance(s).await;
        settle().await;
        left -= s;
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ------------------------------------------------------------------------------------------
// In-memory endpoints and probe (paused clock)
// ------------------------------------------------------------------------------------------

/// An in-memory endpoint answering `()` with its name, or failing: by a script of
/// outcomes first, then by a failure percentage spread evenly over its calls.
#[derive(Clone)]
struct Node {
    name: &'static str,
    fail_percent: Arc<AtomicU32>,
    /// `true` = fail.
    script: Arc<Mutex<VecDeque<bool>>>,
    calls: Arc<AtomicUsize>,
    log: CallLog,
}

impl Node {
    fn new(name: &'static str, log: &CallLog) -> Self {
        Node {
            name,
            fail_percent: Arc::default(),
            script: Arc::default(),
            calls: Arc::default(),
            log: log.clone(),
        }
    }

    /// From now on, `percent` % of calls fail, evenly spread (0 = always succeed, 100 =
    /// always fail).
    fn fail_percent(&self, percent: u32) {
        self.fail_percent.store(percent, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<()> for Node {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        let i = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
        self.log.push(self.name);
        let scripted = self.script.lock().unwrap().pop_front();
        let fail = scripted.unwrap_or_else(|| {
            // Call i fails when the running count of failures, i × p / 100, steps up.
            let p = u64::from(self.fail_percent.load(Ordering::SeqCst));
            (i + 1) * p / 100 > i * p / 100
        });
        std::future::ready(if fail {
            Err(format!("{} failed", self.name).into())
        } else {
            Ok(self.name)
        })
    }
}

type Nodes = Balance<&'static str, Node, RoundRobin, ErrorsAsFailures>;
type NodeBuilder = Builder<RoundRobin, ErrorsAsFailures>;

/// The builder every in-memory balancer starts from: round robin, errors are failures.
fn node_builder() -> NodeBuilder {
    Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
}

/// A round-robin balancer over in-memory nodes named `names`, configured by `configure`.
fn build_nodes(
    names: &[&'static str],
    log: &CallLog,
    configure: impl FnOnce(NodeBuilder) -> NodeBuilder,
) -> (Nodes, HashMap<&'static str, Node>) {
    let nodes: Vec<Node> = names.iter().map(|n| Node::new(n, log)).collect();
    let list: Vec<(&'static str, Node)> = nodes.iter().map(|n| (n.name, n.clone())).collect();
    let balance = configure(node_builder())
        .build(discover::static_list(list))
        .unwrap();
    (balance, nodes.into_iter().map(|n| (n.name, n)).collect())
}

/// A balancer over in-memory nodes, with its call log and a subscription to its events.
type Setup = (
    CallLog,
    Nodes,
    HashMap<&'static str, Node>,
    HealthEvents<&'static str>,
);

/// [`build_nodes`] with a new log, subscribed to health events at once.
fn setup(names: &[&'static str], configure: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Setup {
    let log = CallLog::new();
    let (balance, nodes) = build_nodes(names, &log, configure);
    let events = balance.health_events();
    (log, balance, nodes, events)
}

/// Configures outlier detection alone.
fn outliers(settings: OutlierDetection) -> impl FnOnce(NodeBuilder) -> NodeBuilder {
    move |b| b.outlier_detection(settings)
}

/// Makes every call of `node` fail, sends requests until it has failed `calls` more times
/// (no other request fails), then lets the driver run.
async fn fail_calls(balance: &mut Nodes, node: &Node, calls: usize) {
    node.fail_percent(100);
    assert_eq!(send_until_calls(balance, node, calls).await, calls);
    settle().await;
}

/// For `d`, in steps of 100 ms (the driver running after each): two picks per step, none
/// of them `name`.
async fn no_traffic_for(balance: &mut Nodes, log: &CallLog, name: &str, d: Duration) {
    for _ in 0..d.as_millis() / 100 {
        advance(ms(100)).await;
        let sent = picks(balance, log, 2).await;
        assert_eq!(count(&sent, name), 0, "{sent:?}");
    }
}

/// Sends requests one at a time until `node` has received `calls` more of them; returns
/// how many of all the requests sent failed. Panics after 1000 requests.
async fn send_until_calls(balance: &mut Nodes, node: &Node, calls: usize) -> usize {
    let target = node.calls() + calls;
    let mut failed = 0;
    for _ in 0..1000 {
        if node.calls() >= target {
            return failed;
        }
        failed += usize::from(send(balance).await.is_err());
    }
    panic!("{} never received {calls} calls", node.name);
}

/// The error of `poll_ready`, which must be [`Unavailable`].
async fn unavailable<B: Service<(), Error = BoxError>>(balance: &mut B) -> Unavailable {
    let err = balance.ready().await.map(|_| ()).expect_err("no endpoint");
    err.downcast_ref::<Unavailable>()
        .expect("Unavailable")
        .clone()
}

/// Counts of each name among `names`.
fn count(names: &[&'static str], name: &str) -> usize {
    names.iter().filter(|n| **n == name).count()
}

fn state<S, P: Strategy, C, T>(
    balance: &Balance<&'static str, S, P, C, T>,
    key: &'static str,
) -> EndpointState {
    stats_of(balance, &key).state
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Hang,
    /// The probe's future panics when polled.
    Panic,
    /// `Probe::probe` itself panics.
    PanicAtStart,
}

/// An in-memory probe: answers per endpoint name as scripted (default: healthy), and
/// counts the probes it started.
#[derive(Clone, Default)]
struct ScriptProbe {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    probes: Arc<Mutex<HashMap<String, usize>>>,
}

impl ScriptProbe {
    /// A probe that finds `names` unhealthy, and every other endpoint healthy.
    fn failing(names: &[&str]) -> Self {
        let probe = ScriptProbe::default();
        for name in names {
            probe.set(name, Answer::Fail);
        }
        probe
    }

    fn set(&self, name: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(name.into(), answer);
    }

    fn count(&self, name: &str) -> usize {
        self.probes.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Probe for ScriptProbe {
    type Future = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        *self
            .probes
            .lock()
            .unwrap()
            .entry(target.name().to_string())
            .or_default() += 1;
        let answer = self
            .answers
            .lock()
            .unwrap()
            .get(target.name())
            .copied()
            .unwrap_or(Answer::Ok);
        match answer {
            Answer::Ok => Box::pin(std::future::ready(Ok(()))),
            Answer::Fail => Box::pin(std::future::ready(Err(ProbeFailure::Unhealthy(
                "scripted".into(),
            )))),
            Answer::Hang => Box::pin(std::future::pending()),
            Answer::Panic => Box::pin(async { panic!("scripted probe panic") }),
            Answer::PanicAtStart => panic!("scripted probe panic at start"),
        }
    }
}

/// Sets `name`'s answer to each of `script` in turn, and lets that many seconds pass.
async fn script_answers(probe: &ScriptProbe, name: &str, script: &[(Answer, u64)]) {
    for &(answer, seconds) in script {
        probe.set(name, answer);
        advance(secs(seconds)).await;
    }
}

/// Probes every second exactly (no jitter), 500 ms timeout.
fn every_second() -> ActiveChecks {
    ActiveChecks::new()
        .interval(secs(1))
        .jitter(0.0)
        .timeout(ms(500))
}

// ------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_health_settings_are_rejected_when_the_balancer_is_built() {
    let log = CallLog::new();
    let probe = ScriptProbe::default();
    let cases: Vec<(&str, NodeBuilder)> = vec![
        (
            "zero probe interval",
            Balance::builder()
                .active_checks(probe.clone(), ActiveChecks::new().interval(Duration::ZERO)),
        ),
        (
            "zero probe timeout",
            Balance::builder()
                .active_checks(probe.clone(), ActiveChecks::new().timeout(Duration::ZERO)),
        ),
        (
            "rise 0",
            Balance::builder().active_checks(probe.clone(), ActiveChecks::new().rise(0)),
        ),
        (
            "fall 0",
            Balance::builder().active_checks(probe.clone(), ActiveChecks::new().fall(0)),
        ),
        (
            "zero outlier interval",
            Balance::builder().outlier_detection(OutlierDetection::new().interval(Duration::ZERO)),
        ),
        (
            "consecutive failures 0",
            Balance::builder()
                .outlier_detection(OutlierDetection::new().consecutive_failures(Some(0))),
        ),
        (
            "ejection percent 101",
            Balance::builder().outlier_detection(OutlierDetection::new().max_ejection_percent(101)),
        ),
        (
            "zero base ejection",
            Balance::builder()
                .outlier_detection(OutlierDetection::new().base_ejection(Duration::ZERO)),
        ),
        (
            "probation successes 0",
            Balance::builder()
                .outlier_detection(OutlierDetection::new().probation_successes(Some(0))),
        ),
        (
            "failure percentage threshold 101",
            Balance::builder().outlier_detection(OutlierDetection::new().failure_percentage(Some(
                FailurePercentage {
                    threshold: 101.0,
                    ..FailurePercentage::default()
                },
            ))),
        ),
        (
            "zero slow-start window",
            Balance::builder().slow_start(SlowStart::new(Duration::ZERO)),
        ),
        (
            "panic threshold 1.5",
            Balance::builder().panic_threshold(1.5),
        ),
        (
            "panic threshold -0.1",
            Balance::builder().panic_threshold(-0.1),
        ),
        (
            "panic threshold NaN",
            Balance::builder().panic_threshold(f64::NAN),
        ),
    ]
    .into_iter()
    .map(|(what, b)| {
        (
            what,
            b.strategy(RoundRobin::new()).classify(ErrorsAsFailures),
        )
    })
    .collect();
    for (what, builder) in cases {
        let result = builder.build(discover::static_list([("a", Node::new("a", &log))]));
        match result {
            Err(BuildError::InvalidConfig(invalid)) => {
                assert!(!invalid.field().is_empty(), "{what}")
            }
            other => panic!(
                "{what}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // The edges of the valid ranges build.
    let (_b, _) = build_nodes(&["a"], &log, |b| {
        b.active_checks(probe.clone(), ActiveChecks::new().rise(1).fall(1))
            .outlier_detection(
                OutlierDetection::new()
                    .consecutive_failures(Some(1))
                    .max_ejection_percent(100),
            )
            .panic_threshold(1.0)
    });
    let (_b, _) = build_nodes(&["a"], &log, |b| b.panic_threshold(0.0));
}

// ------------------------------------------------------------------------------------------
// Outlier detection: consecutive failures, ejection, probation (paused clock)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failures_in_a_row_eject_at_exactly_the_threshold_and_a_success_resets_the_count() {
    let (log, mut balance, nodes, mut events) =
        setup(&["a", "b"], outliers(OutlierDetection::new()));
    let b = &nodes["b"];
    // 4 failures, a success, 4 failures: never 5 in a row.
    b.script
        .lock()
        .unwrap()
        .extend([true, true, true, true, false, true, true, true, true]);
    let failed = send_until_calls(&mut balance, b, 9).await;
    assert_eq!(failed, 8);
    settle().await;
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    assert!(drain(&mut events).is_empty());

    // The fifth failure in a row ejects it at once: the next pick already skips it.
    b.fail_percent(100);
    let failed = send_until_calls(&mut balance, b, 1).await;
    assert_eq!(failed, 1);
    assert_eq!(state(&balance, "b"), EndpointState::Ejected);
    let sent = picks(&mut balance, &log, 20).await;
    assert_eq!(count(&sent, "b"), 0, "{sent:?}");
    settle().await;
    expect_events(&mut events, &["b: healthy -> ejected (5 in a row)"]);
    assert_eq!(picture(&balance), (2, 1, 1, false));
}

#[tokio::test(start_paused = true)]
async fn an_ejection_lasts_its_time_then_probation_gives_a_tenth_and_a_failure_doubles_it() {
    let (log, mut balance, nodes, mut events) =
        setup(&["a", "b"], outliers(OutlierDetection::new()));
    let b = &nodes["b"];
    b.fail_percent(100);

    // Ejected after exactly 5 failed requests, all on b.
    let mut failed = 0;
    for _ in 0..30 {
        failed += usize::from(send(&mut balance).await.is_err());
    }
    assert_eq!((failed, b.calls()), (5, 5));
    settle().await;
    expect_events(&mut events, &["b: healthy -> ejected (5 in a row)"]);

    // No traffic for the whole 30 s ejection (the outlier interval runs three times).
    no_traffic_for(&mut balance, &log, "b", ms(29_900)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Ejected);
    assert!(drain(&mut events).is_empty());
    // 30 s after the ejection: back, on probation.
    advance(ms(100)).await;
    expect_events(&mut events, &["b: ejected -> probation (ejection ended)"]);
    assert_eq!(state(&balance, "b"), EndpointState::Probation);
    // A tenth of its weight: round robin over weights 1 and 0.1 gives b 10 picks in 110.
    let sent = picks(&mut balance, &log, 110).await;
    assert_eq!(count(&sent, "b"), 10, "{sent:?}");

    // One failure on probation ejects it again, for twice as long (60 s).
    advance(secs(5)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Probation);
    fail_calls(&mut balance, b, 1).await;
    expect_events(&mut events, &["b: probation -> ejected (1 in a row)"]);
    no_traffic_for(&mut balance, &log, "b", ms(59_900)).await;
    assert_eq!(
        state(&balance, "b"),
        EndpointState::Ejected,
        "the second ejection must last 60 s"
    );
    advance(ms(100)).await;
    expect_events(&mut events, &["b: ejected -> probation (ejection ended)"]);

    // Healthy now: 5 successes in a row end probation, and b gets its full share again.
    b.fail_percent(0);
    let failed = send_until_calls(&mut balance, b, 5).await;
    assert_eq!(failed, 0);
    settle().await;
    expect_events(&mut events, &["b: probation -> healthy (probation passed)"]);
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    let sent = picks(&mut balance, &log, 20).await;
    assert_eq!(count(&sent, "b"), 10, "{sent:?}");
}

/// Under least request and a light load, a tenth of the weight gets an endpoint on
/// probation no requests at all (a full-weight endpoint always scores higher when both are
/// idle), so probation also ends after one outlier interval without a failure.
#[tokio::test(start_paused = true)]
async fn probation_ends_after_an_interval_when_it_gets_too_few_requests() {
    let log = CallLog::new();
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::new(n, &log)).collect();
    // Without the failure penalty, so that b keeps drawing requests until it is ejected.
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().failure_penalty(Duration::ZERO))
        .classify(ErrorsAsFailures)
        .outlier_detection(OutlierDetection::new())
        .build(discover::static_list(
            nodes
                .iter()
                .map(|n| (n.name, n.clone()))
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let mut events = balance.health_events();
    let b = &nodes[1];
    b.fail_percent(100);
    while b.calls() < 5 {
        let _ = send(&mut balance).await;
    }
    settle().await;
    expect_events(&mut events, &["b: healthy -> ejected (5 in a row)"]);
    b.fail_percent(0);
    advance(secs(30)).await;
    expect_events(&mut events, &["b: ejected -> probation (ejection ended)"]);
    // One request at a time: b, at a tenth of a's weight, is never chosen.
    let sent = picks(&mut balance, &log, 50).await;
    assert_eq!(count(&sent, "b"), 0, "{sent:?}");
    assert_eq!(state(&balance, "b"), EndpointState::Probation);
    // One outlier interval later, without a failure, probation is over.
    advance(secs(10)).await;
    expect_events(
        &mut events,
        &["b: probation -> healthy (probation elapsed)"],
    );
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    let sent = picks(&mut balance, &log, 50).await;
    assert!(count(&sent, "b") >= 10, "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn without_probation_an_endpoint_returns_at_full_weight_and_needs_the_threshold_again() {
    let (log, mut balance, nodes, mut events) = setup(
        &["a", "b"],
        outliers(OutlierDetection::new().probation_successes(None)),
    );
    let b = &nodes["b"];
    fail_calls(&mut balance, b, 5).await;
    advance(ms(29_900)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Ejected);
    advance(ms(100)).await;
    assert_eq!(
        sorted_events(&mut events),
        [
            "b: ejected -> healthy (ejection ended)",
            "b: healthy -> ejected (5 in a row)"
        ]
    );
    let sent = picks(&mut balance, &log, 20).await;
    assert_eq!(count(&sent, "b"), 10, "full weight at once: {sent:?}");

    // Still failing: it takes 5 new failures in a row to eject it again, not one.
    fail_calls(&mut balance, b, 4).await;
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    fail_calls(&mut balance, b, 1).await;
    expect_events(&mut events, &["b: healthy -> ejected (5 in a row)"]);
    // The second ejection in a row lasts 60 s.
    advance(ms(59_900)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Ejected);
    advance(ms(100)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Active);
}

#[tokio::test(start_paused = true)]
async fn probation_ends_only_after_its_successes_in_a_row() {
    let (_, mut balance, nodes, mut events) = setup(&["a", "b"], outliers(OutlierDetection::new()));
    let (a, b) = (&nodes["a"], &nodes["b"]);
    fail_calls(&mut balance, b, 5).await;
    advance(secs(30)).await;
    assert_eq!(state(&balance, "b"), EndpointState::Probation);
    // a is ejected and holds the only ejection slot (2 endpoints: at most one ejected).
    b.fail_percent(0);
    fail_calls(&mut balance, a, 5).await;
    assert_eq!(state(&balance, "a"), EndpointState::Ejected);
    // A failure on probation that cannot eject (no slot) still breaks the run of successes.
    let before = b.calls();
    b.script
        .lock()
        .unwrap()
        .extend([false, true, false, false, false, false]);
    send_until_calls(&mut balance, b, 6).await;
    settle().await;
    assert_eq!(b.calls() - before, 6);
    assert_eq!(
        state(&balance, "b"),
        EndpointState::Probation,
        "4 successes after the failure are not 5 in a row"
    );
    send_until_calls(&mut balance, b, 1).await;
    settle().await;
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    expect_events(
        &mut events,
        &[
            "b: healthy -> ejected (5 in a row)",
            "b: ejected -> probation (ejection ended)",
            "a: healthy -> ejected (5 in a row)",
            "b: probation -> healthy (probation passed)",
        ],
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_the_max_ejection_percent_is_ejected_at_once() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for (percent, expected) in [(10, 1), (20, 2), (30, 3), (0, 0)] {
        let log = CallLog::new();
        let (mut balance, nodes) = build_nodes(
            &names,
            &log,
            outliers(OutlierDetection::new().max_ejection_percent(percent)),
        );
        for bad in ["c", "f", "i"] {
            nodes[bad].fail_percent(100);
        }
        for _ in 0..200 {
            let _ = send(&mut balance).await;
        }
        settle().await;
        assert_eq!(balance.health_stats().ejected, expected, "{percent} %");
        let ejected = balance
            .endpoints()
            .iter()
            .filter(|e| e.state == EndpointState::Ejected)
            .count();
        assert_eq!(ejected, expected, "{percent} %");
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_removed_with_failing_requests_in_flight_holds_no_ejection_slot() {
    let log = CallLog::new();
    let gate = Gate::closed();
    let (tx, discovery) = discover::channel();
    let a = Backend::new("a").failing().log(&log);
    tx.insert("x", Backend::new("x").gate(&gate).failing().log(&log))
        .unwrap();
    tx.insert("a", a.clone()).unwrap();
    tx.insert("b", Backend::new("b").log(&log)).unwrap();
    // One failure ejects; of 2 or 3 endpoints, one may be ejected at a time.
    let mut balance = node_builder()
        .outlier_detection(OutlierDetection::new().consecutive_failures(Some(1)))
        .build(discovery)
        .unwrap();
    settle().await;
    let held = hold(&mut balance, 1).await;
    assert_eq!(log.take(), ["x"]);
    // x leaves while its request is in flight; that request fails afterwards.
    tx.remove("x").unwrap();
    settle().await;
    gate.open();
    for response in held {
        assert!(response.await.is_err());
    }
    settle().await;
    // The ejection slot is still free for the endpoints in the set.
    while a.calls() == 0 {
        let _ = send(&mut balance).await;
    }
    assert_eq!(state(&balance, "a"), EndpointState::Ejected);
    settle().await;
    assert_eq!(balance.health_stats().ejected, 1);

    // Removed while ejected and added again: the slot came back with the removal.
    tx.remove("a").unwrap();
    let a = Backend::new("a").failing().log(&log);
    tx.insert("a", a.clone()).unwrap();
    settle().await;
    assert_eq!(state(&balance, "a"), EndpointState::Active);
    while a.calls() == 0 {
        let _ = send(&mut balance).await;
    }
    assert_eq!(state(&balance, "a"), EndpointState::Ejected);
}

#[tokio::test(start_paused = true)]
async fn an_ejection_and_a_drain_between_two_driver_runs_are_two_events() {
    let (_, mut balance, nodes, mut events) = setup(
        &["a", "b", "c"],
        outliers(
            OutlierDetection::new()
                .consecutive_failures(Some(1))
                .max_ejection_percent(100),
        ),
    );
    settle().await;
    nodes["a"].script.lock().unwrap().push_back(true);
    // The failure ejects a on the completion path, and a drain starts, before the driver
    // runs again.
    assert_eq!(send_until_calls(&mut balance, &nodes["a"], 1).await, 1);
    balance.set_draining(&"a", true).unwrap();
    settle().await;
    expect_events(
        &mut events,
        &[
            "a: healthy -> ejected (1 in a row)",
            "a: ejected -> draining (drain started)",
        ],
    );
    // The ejection is timed as any other: it ends after 30 s (a still drains).
    advance(secs(30)).await;
    expect_events(&mut events, &["a: draining -> draining (ejection ended)"]);
    balance.set_draining(&"a", false).unwrap();
    settle().await;
    expect_events(&mut events, &["a: draining -> probation (drain stopped)"]);
}

#[tokio::test(start_paused = true)]
async fn settings_of_duration_max_mean_never_not_a_panic() {
    let probe = ScriptProbe::default();
    let (log, mut balance, nodes, mut events) = setup(&["a", "b", "c"], |b| {
        b.active_checks(
            probe.clone(),
            ActiveChecks::new()
                .interval(Duration::MAX)
                .timeout(Duration::MAX),
        )
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(Some(1))
                .interval(Duration::MAX)
                .base_ejection(Duration::MAX)
                .max_ejection(Duration::MAX)
                .max_ejection_percent(100),
        )
        .slow_start(SlowStart::new(Duration::MAX))
    });
    settle().await;
    assert_eq!(drain(&mut events).len(), 3, "first probe answers");
    fail_calls(&mut balance, &nodes["a"], 1).await;
    expect_events(&mut events, &["a: healthy -> ejected (1 in a row)"]);
    // The driver lives on: it still applies changes and serves requests.
    advance(secs(3600)).await;
    assert_eq!(state(&balance, "a"), EndpointState::Ejected);
    balance.set_draining(&"b", true).unwrap();
    settle().await;
    expect_events(&mut events, &["b: healthy -> draining (drain started)"]);
    let sent = picks(&mut balance, &log, 4).await;
    assert_eq!(sent, ["c", "c", "c", "c"]);
    assert_eq!(probe.count("a"), 1);
}

// ------------------------------------------------------------------------------------------
// Outlier detection: the interval detectors (paused clock)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn success_rate_ejection_runs_every_interval() {
    let (log, mut balance, nodes, mut events) = setup(
        &["a", "b", "c", "d", "e", "f"],
        outliers(
            OutlierDetection::new()
                .consecutive_failures(None)
                .failure_percentage(None),
        ),
    );
    nodes["f"].fail_percent(50);
    // 100 requests each (the request volume), in the first interval.
    let mut failed = 0;
    for _ in 0..600 {
        failed += usize::from(send(&mut balance).await.is_err());
    }
    assert_eq!(failed, 50);
    // Nothing happens before the interval ends.
    let got = interval_verdicts(&mut events).await;
    assert_eq!(summaries(&got), ["f: healthy -> ejected (success rate)"]);
    // Rates 1, 1, 1, 1, 1, 0.5: threshold = mean - 1.9 × stdev (population).
    let rates = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
    let mean = rates.iter().sum::<f64>() / 6.0;
    let stdev = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
    match got[0].reason {
        HealthReason::SuccessRate { rate, threshold } => {
            assert_eq!(rate, 0.5);
            assert!(
                (threshold - (mean - 1.9 * stdev)).abs() < 1e-9,
                "{threshold}"
            );
        }
        ref other => panic!("{other:?}"),
    }
    let sent = picks(&mut balance, &log, 50).await;
    assert_eq!(count(&sent, "f"), 0);

    // The next interval judges only its own requests: a quiet interval ejects nobody.
    advance(secs(10)).await;
    assert!(drain(&mut events).is_empty());
}

/// Lets the first 10 s outlier interval pass: no event before its end; returns those at
/// its end.
async fn interval_verdicts(
    events: &mut HealthEvents<&'static str>,
) -> Vec<HealthEvent<&'static str>> {
    advance(ms(9_900)).await;
    assert!(drain(events).is_empty());
    advance(ms(100)).await;
    drain(events)
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejection_runs_every_interval() {
    let (_, mut balance, nodes, mut events) = setup(
        &["a", "b", "c", "d", "e", "f"],
        outliers(
            OutlierDetection::new()
                .consecutive_failures(None)
                .success_rate(None)
                .max_ejection_percent(100),
        ),
    );
    nodes["e"].fail_percent(90);
    nodes["f"].fail_percent(80);
    // 60 requests each: over the volume of 50.
    for _ in 0..360 {
        let _ = send(&mut balance).await;
    }
    let got = interval_verdicts(&mut events).await;
    // 90 % is at or over the 85 % threshold; 80 % is not.
    assert_eq!(
        summaries(&got),
        ["e: healthy -> ejected (failure percentage)"]
    );
    match got[0].reason {
        HealthReason::FailurePercentage { percent } => assert_eq!(percent, 90.0),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(state(&balance, "f"), EndpointState::Active);
}

// ------------------------------------------------------------------------------------------
// Active checks (paused clock, scripted probe)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_first_probe_result_of_every_endpoint_is_an_event_success_or_failure() {
    let log = CallLog::new();
    let probe = ScriptProbe::failing(&["b", "d"]);
    let (tx, discovery) = discover::channel();
    tx.insert("a", Node::new("a", &log)).unwrap();
    tx.insert("b", Node::new("b", &log)).unwrap();
    let mut balance = node_builder()
        .active_checks(probe.clone(), every_second())
        .build(discovery)
        .unwrap();
    let mut events = balance.health_events();
    settle().await;
    assert_eq!(
        sorted_events(&mut events),
        [
            "a: unknown -> healthy (probe ok)",
            "b: unknown -> unhealthy (probe failed: unhealthy: scripted)"
        ]
    );
    // Endpoints added later: their first result too, at once, either way.
    advance(ms(300)).await;
    tx.insert("c", Node::new("c", &log)).unwrap();
    tx.insert("d", Node::new("d", &log)).unwrap();
    settle().await;
    assert_eq!(
        sorted_events(&mut events),
        [
            "c: unknown -> healthy (probe ok)",
            "d: unknown -> unhealthy (probe failed: unhealthy: scripted)"
        ]
    );
    assert_eq!((probe.count("c"), probe.count("d")), (1, 1));
    // Later results that change nothing are not events.
    advance(secs(3)).await;
    assert!(drain(&mut events).is_empty());
    assert_eq!(probe.count("a"), 4);
    // Unhealthy endpoints get no traffic.
    let sent = picks(&mut balance, &log, 40).await;
    assert_eq!((count(&sent, "a"), count(&sent, "c")), (20, 20), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_fails_and_the_driver_carries_on() {
    let probe = ScriptProbe::default();
    probe.set("b", Answer::Panic);
    probe.set("c", Answer::PanicAtStart);
    let (log, mut balance, _, mut events) = setup(&["a", "b", "c"], |b| {
        b.active_checks(probe.clone(), every_second())
            .panic_threshold(0.0)
    });
    settle().await;
    assert_eq!(
        sorted_events(&mut events),
        [
            "a: unknown -> healthy (probe ok)",
            "b: unknown -> unhealthy (probe failed: unhealthy: the probe panicked)",
            "c: unknown -> unhealthy (probe failed: unhealthy: the probe panicked)",
        ]
    );
    // Probes keep their schedule, and the driver still applies changes.
    script_answers(&probe, "b", &[(Answer::Ok, 2)]).await;
    expect_events(&mut events, &["b: unhealthy -> healthy (probe ok)"]);
    assert_eq!(probe.count("c"), 3);
    balance.set_draining(&"a", true).unwrap();
    settle().await;
    expect_events(&mut events, &["a: healthy -> draining (drain started)"]);
    let sent = picks(&mut balance, &log, 4).await;
    assert_eq!(sent, ["b", "b", "b", "b"]);
}

/// Records when each probe starts, counted from when the probe was made.
#[derive(Clone)]
struct Timed {
    made: tokio::time::Instant,
    starts: Arc<Mutex<Vec<Duration>>>,
}

impl Probe for Timed {
    type Future = std::future::Ready<Result<(), ProbeFailure>>;

    fn probe(&self, _: &ProbeTarget) -> Self::Future {
        self.starts.lock().unwrap().push(self.made.elapsed());
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_seeded_balancer_probes_at_the_same_jittered_times() {
    async fn probe_starts(seed: u64) -> Vec<Duration> {
        let probe = Timed {
            made: tokio::time::Instant::now(),
            starts: Arc::default(),
        };
        let checks = ActiveChecks::new().interval(secs(1)).jitter(0.5);
        let _balance = Balance::builder()
            .classify(ErrorsAsFailures)
            .seed(seed)
            .active_checks(probe.clone(), checks)
            .build(discover::static_list([("a", Backend::new("a"))]))
            .unwrap();
        advance(secs(20)).await;
        let starts = probe.starts.lock().unwrap().clone();
        starts
    }
    let first = probe_starts(5).await;
    assert!(first.len() >= 10, "{first:?}");
    assert_eq!(first, probe_starts(5).await);
    assert_ne!(first, probe_starts(6).await);
}

#[tokio::test(start_paused = true)]
async fn fall_and_rise_count_probe_answers_in_a_row() {
    let probe = ScriptProbe::default();
    let (log, mut balance, _, mut events) = setup(&["a", "b"], |b| {
        b.active_checks(probe.clone(), every_second().fall(3).rise(2))
    });
    settle().await;
    assert_eq!(sorted_events(&mut events).len(), 2);

    // b starts failing: unhealthy at the third failure in a row (3 s), not before.
    script_answers(&probe, "b", &[(Answer::Fail, 2)]).await;
    assert!(drain(&mut events).is_empty());
    assert_eq!(state(&balance, "b"), EndpointState::Active);
    advance(secs(1)).await;
    expect_events(
        &mut events,
        &["b: healthy -> unhealthy (probe failed: unhealthy: scripted)"],
    );
    assert_eq!(probe.count("b"), 4);
    assert_eq!(state(&balance, "b"), EndpointState::Unhealthy);
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "b"), 0);

    // Success, failure, success: never 2 in a row, still unhealthy.
    let answers = [(Answer::Ok, 1), (Answer::Fail, 1), (Answer::Ok, 1)];
    script_answers(&probe, "b", &answers).await;
    assert!(drain(&mut events).is_empty());
    assert_eq!(state(&balance, "b"), EndpointState::Unhealthy);
    // The second success in a row brings it back: rise × interval after it recovered.
    advance(secs(1)).await;
    expect_events(&mut events, &["b: unhealthy -> healthy (probe ok)"]);
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "b"), 5);

    // A failure between failures resets the count the other way too.
    let answers = [(Answer::Fail, 2), (Answer::Ok, 1), (Answer::Fail, 2)];
    script_answers(&probe, "b", &answers).await;
    assert!(drain(&mut events).is_empty());
    assert_eq!(state(&balance, "b"), EndpointState::Active);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_fails_with_a_timeout_and_initial_unhealthy_waits_for_it() {
    let probe = ScriptProbe::default();
    probe.set("b", Answer::Hang);
    let (log, mut balance, _, mut events) = setup(&["a", "b"], |b| {
        b.active_checks(
            probe.clone(),
            every_second().rise(1).initial(Initial::Unhealthy),
        )
    });
    settle().await;
    expect_events(&mut events, &["a: unknown -> healthy (probe ok)"]);
    // Until its first answer b is unknown, and with Initial::Unhealthy it takes no traffic.
    assert_eq!(state(&balance, "b"), EndpointState::Unhealthy);
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "b"), 0);
    advance(ms(400)).await;
    assert!(drain(&mut events).is_empty());
    // At the 500 ms timeout: a failure that says so.
    advance(ms(100)).await;
    expect_events(
        &mut events,
        &["b: unknown -> unhealthy (probe failed: timeout 500ms)"],
    );
    // It answers again: healthy at the next probe (rise 1), which is due an interval
    // after the failed answer.
    probe.set("b", Answer::Ok);
    advance(ms(900)).await;
    assert!(drain(&mut events).is_empty());
    advance(ms(100)).await;
    expect_events(&mut events, &["b: unhealthy -> healthy (probe ok)"]);
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "b"), 5);
}

#[tokio::test(start_paused = true)]
async fn initial_unhealthy_endpoints_take_no_traffic_before_their_first_answer_even_in_panic() {
    let log = CallLog::new();
    let probe = ScriptProbe::default();
    probe.set("b", Answer::Hang);
    probe.set("c", Answer::Hang);
    let (mut balance, _) = build_nodes(&["a", "b", "c"], &log, |b| {
        b.active_checks(probe.clone(), every_second().initial(Initial::Unhealthy))
    });
    settle().await;
    // 1 healthy of 3: panic mode, but b and c have not answered yet.
    assert_eq!(picture(&balance), (3, 1, 0, true));
    let sent = picks(&mut balance, &log, 30).await;
    assert_eq!(count(&sent, "a"), 30, "{sent:?}");
    // Once their probes have failed, they are unhealthy like any other: panic mode spreads
    // traffic over them.
    advance(ms(500)).await;
    let sent = picks(&mut balance, &log, 30).await;
    assert_eq!(["a", "b", "c"].map(|n| count(&sent, n)), [10, 10, 10]);
}

// ------------------------------------------------------------------------------------------
// Panic mode (paused clock)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn below_the_panic_threshold_the_balancer_fails_open_over_every_endpoint() {
    let probe = ScriptProbe::failing(&["b", "c", "d"]);
    let (log, mut balance, _, mut events) = setup(&["a", "b", "c", "d"], |b| {
        b.active_checks(probe.clone(), every_second().rise(1).fall(1))
    });
    settle().await;
    assert_eq!(drain(&mut events).len(), 4);
    // 1 healthy of 4 is below 50 %: panic, traffic over all four.
    assert_eq!(picture(&balance), (4, 1, 0, true));
    assert_eq!(state(&balance, "b"), EndpointState::Unhealthy);
    let sent = picks(&mut balance, &log, 400).await;
    for name in ["a", "b", "c", "d"] {
        assert_eq!(count(&sent, name), 100, "{name}");
    }
    // 2 of 4 is not below 50 %: no panic, only the healthy two get traffic.
    script_answers(&probe, "b", &[(Answer::Ok, 1)]).await;
    assert_eq!(picture(&balance), (4, 2, 0, false));
    let sent = picks(&mut balance, &log, 400).await;
    assert_eq!(
        ["a", "b", "c", "d"].map(|n| count(&sent, n)),
        [200, 200, 0, 0]
    );
}

#[tokio::test(start_paused = true)]
async fn fail_closed_keeps_to_the_healthy_and_fails_with_all_unhealthy_when_none_is() {
    let log = CallLog::new();
    let probe = ScriptProbe::failing(&["b", "c", "d"]);
    let (mut balance, _) = build_nodes(&["a", "b", "c", "d"], &log, |b| {
        b.active_checks(probe.clone(), every_second().rise(1).fall(1))
            .fail_closed(true)
            .fail_fast(ms(100))
    });
    settle().await;
    assert_eq!(picture(&balance), (4, 1, 0, true));
    let sent = picks(&mut balance, &log, 40).await;
    assert_eq!(count(&sent, "a"), 40);

    // None healthy: poll_ready fails fast, saying why.
    script_answers(&probe, "a", &[(Answer::Fail, 1)]).await;
    assert_eq!(picture(&balance), (4, 0, 0, true));
    let start = tokio::time::Instant::now();
    let unavailable = unavailable(&mut balance).await;
    assert_eq!(unavailable.reason(), UnavailableReason::AllUnhealthy);
    assert_eq!(unavailable.endpoints(), 4);
    assert_eq!(start.elapsed(), ms(100));

    // One recovers: traffic goes to it alone.
    script_answers(&probe, "c", &[(Answer::Ok, 1)]).await;
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "c"), 10);
}

// ------------------------------------------------------------------------------------------
// Slow start (paused clock)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoints_share_over_the_window() {
    let log = CallLog::new();
    let (tx, discovery) = discover::channel();
    for name in ["a", "b", "c", "d"] {
        tx.insert(name, Node::new(name, &log)).unwrap();
    }
    let mut balance = node_builder()
        .slow_start(SlowStart::new(secs(10)))
        .build(discovery)
        .unwrap();
    settle().await;
    // The endpoints present at the start do not ramp.
    let sent = picks(&mut balance, &log, 400).await;
    assert_eq!(count(&sent, "a"), 100);

    tx.insert("e", Node::new("e", &log)).unwrap();
    settle().await;
    let start = tokio::time::Instant::now();
    const N: usize = 2000;
    let mut measured = Vec::new();
    for (at_ms, factor) in [
        (0, 0.1),
        (1_000, 0.1),
        (2_500, 0.25),
        (5_000, 0.5),
        (7_500, 0.75),
        (10_000, 1.0),
        (15_000, 1.0),
    ] {
        let target = start + ms(at_ms);
        advance(target - tokio::time::Instant::now()).await;
        let sent = picks(&mut balance, &log, N).await;
        let got = count(&sent, "e");
        // Four endpoints at weight 1, the new one at max(0.1, t / window).
        let expected = N as f64 * factor / (4.0 + factor);
        measured.push(format!(
            "t={:.1}s share {:.3} (expected {:.3})",
            at_ms as f64 / 1000.0,
            got as f64 / N as f64,
            expected / N as f64
        ));
        assert!(
            (got as f64 - expected).abs() <= 2.0,
            "at {at_ms} ms: {got} of {N} picks, expected {expected:.1}"
        );
    }
    eprintln!("slow start, new endpoint's share: {measured:?}");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_an_endpoint_back_from_unhealthy() {
    let log = CallLog::new();
    let probe = ScriptProbe::default();
    let (mut balance, _) = build_nodes(&["a", "b", "c", "d"], &log, |b| {
        b.active_checks(probe.clone(), every_second().rise(1).fall(1))
            .slow_start(SlowStart::new(secs(10)))
    });
    settle().await;
    script_answers(&probe, "d", &[(Answer::Fail, 1)]).await;
    assert_eq!(state(&balance, "d"), EndpointState::Unhealthy);
    let sent = picks(&mut balance, &log, 30).await;
    assert_eq!(count(&sent, "d"), 0);
    // Back: 10 % of its weight at first, half at 5 s, all of it at 10 s.
    script_answers(&probe, "d", &[(Answer::Ok, 1)]).await;
    assert_eq!(state(&balance, "d"), EndpointState::Active);
    for (n, expected) in [(3100, 100), (3500, 500), (400, 100)] {
        let sent = picks(&mut balance, &log, n).await;
        let got = count(&sent, "d") as i64;
        assert!(
            (got - expected).abs() <= 2,
            "{got} of {n}, expected {expected}"
        );
        advance(secs(5)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Draining (paused clock)
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn draining_takes_no_new_requests_and_lets_those_in_flight_finish() {
    let log = CallLog::new();
    let gate = Gate::closed();
    let mut balance = node_builder()
        .build(discover::static_list([
            ("a", Backend::new("a").gate(&gate).log(&log)),
            ("b", Backend::new("b").gate(&gate).log(&log)),
        ]))
        .unwrap();
    let mut events = balance.health_events();
    let held = hold(&mut balance, 4).await;
    assert_eq!(stats_of(&balance, &"a").in_flight, 2);

    balance.set_draining(&"a", true).unwrap();
    // At once, before the driver has run: no new request goes to a.
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "a"), 0, "{sent:?}");
    settle().await;
    expect_events(&mut events, &["a: healthy -> draining (drain started)"]);
    let a = stats_of(&balance, &"a");
    assert_eq!((a.state, a.in_flight), (EndpointState::Draining, 2));
    assert_eq!(picture(&balance), (1, 1, 0, false));

    // The requests in flight finish normally.
    gate.open();
    let results = futures::future::join_all(held).await;
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        ["a", "b", "a", "b"]
    );
    let a = stats_of(&balance, &"a");
    assert_eq!((a.in_flight, a.completed, a.failures), (0, 2, 0));

    balance.set_draining(&"a", false).unwrap();
    settle().await;
    expect_events(&mut events, &["a: draining -> healthy (drain stopped)"]);
    let sent = picks(&mut balance, &log, 10).await;
    assert_eq!(count(&sent, "a"), 5);

    let unknown = balance.set_draining(&"z", true).unwrap_err();
    assert!(unknown.to_string().contains("\"z\""), "{unknown}");
}

/// A boxed balancer is drained, watched and listened to through its `Monitor`.
#[tokio::test(start_paused = true)]
async fn a_monitor_drains_and_reports_health_for_a_boxed_balancer() {
    let log = CallLog::new();
    let (balance, _) = build_nodes(&["a", "b"], &log, |b| b);
    let monitor = balance.monitor();
    let mut boxed = tower::util::BoxCloneSyncService::new(balance);
    let mut events = monitor.health_events();
    settle().await;

    monitor.set_draining(&"a", true).unwrap();
    settle().await;
    expect_events(&mut events, &["a: healthy -> draining (drain started)"]);
    let stats = monitor.health_stats();
    assert_eq!(
        (stats.candidates, stats.healthy, stats.panic),
        (1, 1, false)
    );
    let sent = picks(&mut boxed, &log, 6).await;
    assert_eq!(count(&sent, "a"), 0, "{sent:?}");
    assert!(monitor.set_draining(&"z", true).is_err());

    drop(boxed);
    assert!(!monitor.is_alive());
    assert_eq!(monitor.health_stats(), Default::default());
    assert!(monitor.set_draining(&"a", false).is_err());
}

#[tokio::test(start_paused = true)]
async fn draining_every_endpoint_fails_with_all_unhealthy() {
    // After the driver has published the drains (a wait of the fail-fast timeout), and
    // before (no wait at all): the flags say why.
    for (fail_fast, driver_runs) in [(ms(50), true), (Duration::ZERO, false)] {
        let log = CallLog::new();
        let (mut balance, _) = build_nodes(&["a", "b"], &log, |b| b.fail_fast(fail_fast));
        settle().await;
        balance.set_draining(&"a", true).unwrap();
        balance.set_draining(&"b", true).unwrap();
        if driver_runs {
            settle().await;
        }
        let unavailable = unavailable(&mut balance).await;
        assert_eq!(unavailable.reason(), UnavailableReason::AllUnhealthy);
    }
}

// ------------------------------------------------------------------------------------------
// Real hyper servers (real clock)
// ------------------------------------------------------------------------------------------

/// Sends `GET /` and returns the status and the body (the server's address).
async fn get<S>(balance: &mut S) -> Result<(StatusCode, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let request = Request::get("/").body(Empty::new()).unwrap();
    let response = tokio::time::timeout(PATIENCE, async {
        balance.ready().await?.call(request).await
    })
    .await
    .map_err(|_| "request timed out")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    // The body is `"{addr} {path}"`: the server's address is what the tests compare.
    let addr = body.split_once(' ').map_or(&*body, |(addr, _)| addr);
    Ok((status, addr.to_string()))
}

fn real_state<P: Strategy>(
    balance: &Balance<SocketAddr, ToEndpoint, P>,
    addr: SocketAddr,
) -> EndpointState {
    stats_of(balance, &addr).state
}

/// Sends `n` requests (`GET /`), each of them answered with 200 by the server at `only`
/// (or by any server, if `None`).
async fn get_ok<S>(balance: &mut S, n: usize, only: Option<SocketAddr>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    for _ in 0..n {
        let (status, body) = get(balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if let Some(addr) = only {
            assert_eq!(body, addr.to_string());
        }
    }
}

/// Sends `n` requests (`GET /`). Returns the failed ones in order (`Some` server address
/// for a 5xx answer, `None` for an error), and when the last of them was sent. Every other
/// answer must be 200.
async fn get_failures<S>(
    balance: &mut S,
    n: usize,
) -> (Vec<Option<String>>, Option<std::time::Instant>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let (mut failures, mut last) = (Vec::new(), None);
    for _ in 0..n {
        let sent_at = std::time::Instant::now();
        match get(balance).await {
            Ok((status, _)) if status == StatusCode::OK => continue,
            Ok((status, body)) if status.is_server_error() => failures.push(Some(body)),
            Ok((status, _)) => panic!("unexpected status {status}"),
            Err(_) => failures.push(None),
        }
        last = Some(sent_at);
    }
    (failures, last)
}

/// A balancer over `servers` with `strategy` and outlier detection `outliers`.
fn with_outliers<P: Strategy>(
    strategy: P,
    outliers: OutlierDetection,
    servers: &[&Server],
) -> Balance<SocketAddr, ToEndpoint, P> {
    Balance::builder()
        .strategy(strategy)
        .outlier_detection(outliers)
        .build(discover::static_list(endpoints(servers)))
        .unwrap()
}

/// How long [`quick_ejection`] ejects: far longer than the few requests the tests send
/// while it lasts take on a loaded machine.
const EJECTION: Duration = Duration::from_secs(1);

/// Ejection after 3 failures in a row, for [`EJECTION`] (at most 3 times that), then
/// `probation`.
fn quick_ejection(probation: Option<u32>) -> OutlierDetection {
    OutlierDetection::new()
        .consecutive_failures(Some(3))
        .base_ejection(EJECTION)
        .max_ejection(EJECTION * 3)
        .probation_successes(probation)
}

/// Waits (real clock) until at least `n` events have come, and returns them.
async fn wait_for_events<K: Debug>(
    events: &mut HealthEvents<K>,
    what: &str,
    n: usize,
) -> Vec<HealthEvent<K>> {
    let mut seen = Vec::new();
    eventually(what, async || {
        seen.extend(drain(events));
        seen.len() >= n
    })
    .await;
    seen
}

#[tokio::test]
async fn a_server_answering_500_is_ejected_at_the_threshold_and_returns_after_the_ejection() {
    let ok1 = Server::start(200).await;
    let bad = Server::start(500).await;
    let ok2 = Server::start(200).await;
    let mut balance = with_outliers(
        RoundRobin::new(),
        quick_ejection(Some(2)),
        &[&ok1, &bad, &ok2],
    );
    let mut events = balance.health_events();

    // Exactly 3 answers of 500 reach the caller (the third ejects the server as it
    // completes), then the server gets nothing more.
    let (failures, last_failure_sent) = get_failures(&mut balance, 15).await;
    let ejected_after = last_failure_sent.unwrap();
    assert_eq!(failures, vec![Some(bad.addr.to_string()); 3]);
    assert_eq!(bad.hits(), 3);
    assert_eq!(real_state(&balance, bad.addr), EndpointState::Ejected);

    // While ejected, and after the server has recovered, it gets no traffic: every request
    // that is still answered during the ejection went elsewhere (the one that sees it end
    // may have gone to it).
    bad.set(200);
    for _ in 0..20 {
        let (status, body) = get(&mut balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if real_state(&balance, bad.addr) != EndpointState::Ejected {
            break;
        }
        assert_ne!(body, bad.addr.to_string());
        assert_eq!(bad.hits(), 3);
    }

    // Back on probation once the ejection is over (never before), then probation passes.
    eventually("the end of the ejection", async || {
        real_state(&balance, bad.addr) != EndpointState::Ejected
    })
    .await;
    let back_after = ejected_after.elapsed();
    assert!(back_after >= EJECTION, "back after {back_after:?}");
    eprintln!(
        "500 server: ejected after 3 failures, back after {back_after:?} (ejection {EJECTION:?})"
    );
    for _ in 0..200 {
        if bad.hits() >= 5 {
            break;
        }
        let (status, _) = get(&mut balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(bad.hits(), 5);
    // The completion path ends probation; the driver reports it.
    assert_eq!(real_state(&balance, bad.addr), EndpointState::Active);
    let seen = wait_for_events(&mut events, "the probation passed event", 3).await;
    let name = bad.addr.to_string();
    assert_eq!(
        summaries(&seen),
        [
            format!("{name}: healthy -> ejected (3 in a row)"),
            format!("{name}: ejected -> probation (ejection ended)"),
            format!("{name}: probation -> healthy (probation passed)"),
        ]
    );
}

#[tokio::test]
async fn a_server_refusing_connections_is_ejected_and_returns_when_it_listens_again() {
    let ok1 = Server::start(200).await;
    let mut down = Server::start(200).await;
    let ok2 = Server::start(200).await;
    let tombstone = down.stop().await;
    let mut balance = with_outliers(
        RoundRobin::new(),
        quick_ejection(None),
        &[&ok1, &down, &ok2],
    );
    let mut events = balance.health_events();
    // Connection errors reach the caller 3 times, then the endpoint is skipped.
    let (failures, last_error_sent) = get_failures(&mut balance, 15).await;
    assert_eq!(failures, [None, None, None]);
    assert_eq!(stats_of(&balance, &down.addr).failures, 3);
    assert_eq!(real_state(&balance, down.addr), EndpointState::Ejected);

    down.restart(tombstone);
    eventually("the end of the ejection", async || {
        real_state(&balance, down.addr) == EndpointState::Active
    })
    .await;
    let back_after = last_error_sent.unwrap().elapsed();
    assert!(back_after >= EJECTION, "back after {back_after:?}");
    // Without probation it is back at full weight at once.
    get_ok(&mut balance, 30, None).await;
    assert_eq!(down.hits(), 10);
    let name = down.addr.to_string();
    expect_events(
        &mut events,
        &[
            format!("{name}: healthy -> ejected (3 in a row)"),
            format!("{name}: ejected -> healthy (ejection ended)"),
        ],
    );
}

/// Retries idempotent requests that failed (an error or a 5xx), within a shared budget.
#[derive(Clone)]
struct RetryIdempotent {
    budget: Arc<TpsBudget>,
    attempts_left: usize,
    retries: Arc<AtomicUsize>,
}

impl RetryIdempotent {
    /// 10 % of requests may be retried, plus 10 retries per second, over a 10 s window;
    /// each request at most `attempts` times.
    fn new(attempts: usize) -> Self {
        RetryIdempotent {
            budget: Arc::new(TpsBudget::new(secs(10), 10, 0.1)),
            attempts_left: attempts,
            retries: Arc::default(),
        }
    }
}

impl<B: Clone, Res, E> Policy<Request<B>, Response<Res>, E> for RetryIdempotent {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<Res>, E>,
    ) -> Option<Self::Future> {
        let failed = result
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        if !failed {
            self.budget.deposit();
            return None;
        }
        if self.attempts_left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.attempts_left -= 1;
        self.retries.fetch_add(1, Ordering::SeqCst);
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if !request.method().is_idempotent() {
            return None;
        }
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

async fn ten_servers_one_answering_503() -> (Vec<Server>, usize) {
    let mut servers = Vec::new();
    for i in 0..10 {
        servers.push(Server::start(if i == 6 { 503 } else { 200 }).await);
    }
    (servers, 6)
}

#[tokio::test]
async fn scenario_ten_servers_one_503_fails_at_most_the_threshold_before_ejection() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let mut balance = with_outliers(RoundRobin::new(), OutlierDetection::new(), &all);
    let mut failed = 0;
    for _ in 0..300 {
        let (status, _) = get(&mut balance).await.unwrap();
        failed += usize::from(status.is_server_error());
    }
    eprintln!("scenario, no retries: {failed} failed requests of 300 before ejection");
    assert_eq!(failed, 5, "exactly the consecutive-failure threshold");
    assert_eq!(servers[bad].hits(), 5);
    assert_eq!(
        real_state(&balance, servers[bad].addr),
        EndpointState::Ejected
    );
    let others: usize = servers.iter().map(Server::hits).sum::<usize>() - 5;
    assert_eq!(others, 295);
}

#[tokio::test]
async fn scenario_ten_servers_one_503_with_retries_no_failure_reaches_the_caller() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let balance = with_outliers(RoundRobin::new(), OutlierDetection::new(), &all);
    let policy = RetryIdempotent::new(2);
    let retries = policy.retries.clone();
    let mut retrying = Retry::new(policy, balance.clone());
    for i in 0..300 {
        let (status, body) = get(&mut retrying).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} reached the caller failed"
        );
        assert_ne!(body, servers[bad].addr.to_string());
    }
    let retried = retries.load(Ordering::SeqCst);
    eprintln!(
        "scenario, with retries: 0 failed of 300; {} attempts failed at the 503 server, {retried} retries",
        servers[bad].hits()
    );
    assert_eq!((servers[bad].hits(), retried), (5, 5));
    assert_eq!(
        real_state(&balance, servers[bad].addr),
        EndpointState::Ejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_concurrent_callers_with_retries_see_no_failure() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let balance = with_outliers(LeastRequest::new(), OutlierDetection::new(), &all);
    // Least request picks at random among two: a request can meet the 503 server again on
    // its retry. It can fail there at most 5 times (its fifth failure there ejects it at
    // the latest), so 5 retries always reach another server.
    let policy = RetryIdempotent::new(5);
    let retries = policy.retries.clone();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut retrying = Retry::new(policy.clone(), balance.clone());
            tokio::spawn(async move { get_ok(&mut retrying, 40, None).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let at_bad = servers[bad].hits();
    eprintln!(
        "scenario, 8 concurrent callers with retries: 0 failed of 320; {at_bad} attempts failed at the 503 server, {} retries",
        retries.load(Ordering::SeqCst)
    );
    // Least request counts each failure as a request in flight for a second, so the 503
    // server draws few requests and may not reach the five that eject it; if it does,
    // requests already in flight when the fifth failure ejects it may still fail: at
    // most one per other caller.
    assert!(at_bad <= 5 + 7, "{at_bad}");
    assert_eq!(retries.load(Ordering::SeqCst), at_bad);
}

/// Active HTTP probes through hyper (feature `http`).
#[cfg(feature = "http")]
mod http_probes {
    use super::*;
    use common::client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use tower_lb::health::HttpProbe;

    /// The probe's own timeout (10 s) is longer than the balancer's ([`PROBE_TIMEOUT`]).
    fn probe() -> HttpProbe<Client<HttpConnector, Empty<Bytes>>, Empty<Bytes>> {
        HttpProbe::new(client()).path("/health").timeout(secs(10))
    }

    /// The balancer's probe timeout: what a hanging server takes to fail its probe, and far
    /// longer than a healthy one takes to answer on a loaded machine (a healthy server that
    /// timed out would change the counts these tests assert).
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

    fn fast_checks() -> ActiveChecks {
        ActiveChecks::new()
            .interval(ms(50))
            .jitter(0.0)
            .timeout(PROBE_TIMEOUT)
            .rise(2)
            .fall(2)
    }

    /// A round-robin balancer over `servers`, from `builder`, probed by HTTP every 50 ms.
    fn probed(
        builder: Builder,
        servers: &[&Server],
    ) -> Balance<SocketAddr, ToEndpoint, RoundRobin> {
        builder
            .strategy(RoundRobin::new())
            .active_checks(probe(), fast_checks())
            .build(discover::static_list(endpoints(servers)))
            .unwrap()
    }

    #[tokio::test]
    async fn a_hanging_server_becomes_unhealthy_with_a_probe_timeout() {
        let ok = Server::start(200).await;
        let hang = Server::start(HANG).await;
        // The probe's own timeout (10 s) is longer: the balancer's 1 s applies.
        let mut balance = probed(Balance::builder(), &[&ok, &hang]);
        let mut events = balance.health_events();
        // Two first results: the healthy one's, and the hanging one's after its timeout.
        let seen = wait_for_events(&mut events, "the hanging server's first probe result", 2).await;
        let event = seen.iter().find(|e| e.key == hang.addr).unwrap();
        assert_eq!(
            summary(event),
            format!(
                "{}: unknown -> unhealthy (probe failed: timeout 1s)",
                hang.addr
            )
        );
        assert!(matches!(
            event.reason,
            HealthReason::ProbeFailed(ref f) if matches!(**f, ProbeFailure::Timeout(t) if t == PROBE_TIMEOUT)
        ));
        assert_eq!(real_state(&balance, hang.addr), EndpointState::Unhealthy);
        get_ok(&mut balance, 10, Some(ok.addr)).await;
        assert_eq!(hang.hits(), 0);
    }

    #[tokio::test]
    async fn servers_answering_500_hanging_or_refusing_are_unhealthy_until_they_recover() {
        let ok = Server::start(200).await;
        let err = Server::start(500).await;
        let hang = Server::start(HANG).await;
        let mut refused = Server::start(200).await;
        let tombstone = refused.stop().await;
        let builder = Balance::builder().panic_threshold(0.0);
        let mut balance = probed(builder, &[&ok, &err, &hang, &refused]);
        let mut events = balance.health_events();
        let seen = wait_for_events(&mut events, "every first probe result", 4).await;
        let mut got = summaries(&seen);
        got.sort();
        let mut expected = vec![
            format!("{}: unknown -> healthy (probe ok)", ok.addr),
            format!(
                "{}: unknown -> unhealthy (probe failed: status 500)",
                err.addr
            ),
            format!(
                "{}: unknown -> unhealthy (probe failed: timeout 1s)",
                hang.addr
            ),
            format!(
                "{}: unknown -> unhealthy (probe failed: connect ConnectionRefused)",
                refused.addr
            ),
        ];
        expected.sort();
        assert_eq!(got, expected);
        for s in [&err, &hang, &refused] {
            assert_eq!(real_state(&balance, s.addr), EndpointState::Unhealthy);
        }
        // Only the healthy one gets traffic.
        get_ok(&mut balance, 12, Some(ok.addr)).await;
        assert_eq!(err.hits() + hang.hits() + refused.hits(), 0);

        // They recover; each is back after `rise` (2) successful probes.
        err.set(200);
        hang.set(200);
        refused.restart(tombstone);
        let took = eventually("every server back", async || {
            [&err, &hang, &refused]
                .iter()
                .all(|s| real_state(&balance, s.addr) == EndpointState::Active)
        })
        .await;
        eprintln!("HTTP probes: 500 / hanging / refusing servers back {took:?} after recovering (rise 2 × 50 ms)");
        assert!(
            took >= ms(50),
            "back after {took:?}: rise 2 needs two probes"
        );
        // The driver reports each change as it makes it.
        let mut got = summaries(&drain(&mut events));
        got.sort();
        let mut expected: Vec<String> = [&err, &hang, &refused]
            .iter()
            .map(|s| format!("{}: unhealthy -> healthy (probe ok)", s.addr))
            .collect();
        expected.sort();
        assert_eq!(got, expected);
        get_ok(&mut balance, 40, None).await;
        for s in [&ok, &err, &hang, &refused] {
            assert_eq!(
                stats_of(&balance, &s.addr).completed,
                if s.addr == ok.addr { 22 } else { 10 }
            );
        }

        // A healthy server that starts failing: unhealthy after `fall` (2) failed probes.
        ok.set(503);
        eventually("the 503 server unhealthy", async || {
            real_state(&balance, ok.addr) == EndpointState::Unhealthy
        })
        .await;
        expect_events(
            &mut events,
            &[format!(
                "{}: healthy -> unhealthy (probe failed: status 503)",
                ok.addr
            )],
        );
    }
}
