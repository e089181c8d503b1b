//! What the health tests share: reading health events, in-memory endpoints ([`Node`]) with
//! a call log, a balancer over them ([`setup`]), and a scripted in-memory probe
//! ([`ScriptProbe`]), all for tokio's paused clock.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use tower::{Service, ServiceExt};
use tower_lb::balance::HealthEvents;
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::error::{BoxError, Unavailable};
use tower_lb::health::{
    ActiveChecks, HealthEvent, HealthReason, OutlierDetection, Probe, ProbeFailure, ProbeTarget,
};
use tower_lb::strategy::{RoundRobin, Strategy};
use tower_lb::{Balance, Builder};

use crate::common::{picks, send, settle, stats_of, CallLog};

/// The events ready now, without waiting.
pub(super) fn drain<K>(events: &mut HealthEvents<K>) -> Vec<HealthEvent<K>> {
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
pub(super) fn summary<K: Debug>(event: &HealthEvent<K>) -> String {
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

pub(super) fn summaries<K: Debug>(events: &[HealthEvent<K>]) -> Vec<String> {
    events.iter().map(summary).collect()
}

/// The summaries of the events ready now must be `expected`, in order.
#[track_caller]
pub(super) fn expect_events<K: Debug>(events: &mut HealthEvents<K>, expected: &[impl AsRef<str>]) {
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    assert_eq!(summaries(&drain(events)), expected);
}

/// The balancer-wide health picture: (candidates, healthy, ejected, panic).
pub(super) fn picture<K, S, P: Strategy, C, T, H>(
    balance: &Balance<K, S, P, C, T, H>,
) -> (usize, usize, usize, bool) {
    let stats = balance.health_stats();
    (stats.candidates, stats.healthy, stats.ejected, stats.panic)
}

/// The summaries of the events ready now, sorted (events of different endpoints that
/// happen at the same instant come in no particular order).
pub(super) fn sorted_events<K: Debug>(events: &mut HealthEvents<K>) -> Vec<String> {
    let mut out = summaries(&drain(events));
    out.sort();
    out
}

/// Advances the paused clock by `d` in steps of at most 100 ms, letting the balancer's
/// driver run after each step, as it would on the real clock.
pub(super) async fn advance(d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        let s = left.min(step);
        tokio::time::advance(s).await;
        settle().await;
        left -= s;
    }
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An in-memory endpoint answering `()` with its name, or failing: by a script of
/// outcomes first, then by a failure percentage spread evenly over its calls.
#[derive(Clone)]
pub(super) struct Node {
    pub(super) name: &'static str,
    fail_percent: Arc<AtomicU32>,
    /// `true` = fail.
    pub(super) script: Arc<Mutex<VecDeque<bool>>>,
    calls: Arc<AtomicUsize>,
    log: CallLog,
}

impl Node {
    pub(super) fn new(name: &'static str, log: &CallLog) -> Self {
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
    pub(super) fn fail_percent(&self, percent: u32) {
        self.fail_percent.store(percent, Ordering::SeqCst);
    }

    pub(super) fn calls(&self) -> usize {
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

pub(super) type NodeBuilder = Builder<RoundRobin, ErrorsAsFailures>;

/// The builder every in-memory balancer starts from: round robin, errors are failures.
pub(super) fn node_builder() -> NodeBuilder {
    Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
}

/// A round-robin balancer over in-memory nodes named `names`, configured by `configure`.
pub(super) fn build_nodes(
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
pub(super) fn setup(
    names: &[&'static str],
    configure: impl FnOnce(NodeBuilder) -> NodeBuilder,
) -> Setup {
    let log = CallLog::new();
    let (balance, nodes) = build_nodes(names, &log, configure);
    let events = balance.health_events();
    (log, balance, nodes, events)
}

/// Configures outlier detection alone.
pub(super) fn outliers(settings: OutlierDetection) -> impl FnOnce(NodeBuilder) -> NodeBuilder {
    move |b| b.outlier_detection(settings)
}

/// Makes every call of `node` fail, sends requests until it has failed `calls` more times
/// (no other request fails), then lets the driver run.
pub(super) async fn fail_calls(balance: &mut Nodes, node: &Node, calls: usize) {
    node.fail_percent(100);
    assert_eq!(send_until_calls(balance, node, calls).await, calls);
    settle().await;
}

/// For `d`, in steps of 100 ms (the driver running after each): two picks per step, none
/// of them `name`.
pub(super) async fn no_traffic_for(balance: &mut Nodes, log: &CallLog, name: &str, d: Duration) {
    for _ in 0..d.as_millis() / 100 {
        advance(ms(100)).await;
        let sent = picks(balance, log, 2).await;
        assert_eq!(count(&sent, name), 0, "{sent:?}");
    }
}

/// Sends requests one at a time until `node` has received `calls` more of them; returns
/// how many of all the requests sent failed. Panics after 1000 requests.
pub(super) async fn send_until_calls(balance: &mut Nodes, node: &Node, calls: usize) -> usize {
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
pub(super) async fn unavailable<B: Service<(), Error = BoxError>>(balance: &mut B) -> Unavailable {
    let err = balance.ready().await.map(|_| ()).expect_err("no endpoint");
    err.downcast_ref::<Unavailable>()
        .expect("Unavailable")
        .clone()
}

/// Counts of each name among `names`.
pub(super) fn count(names: &[&'static str], name: &str) -> usize {
    names.iter().filter(|n| **n == name).count()
}

pub(super) fn state<S, P: Strategy, C, T>(
    balance: &Balance<&'static str, S, P, C, T>,
    key: &'static str,
) -> EndpointState {
    stats_of(balance, &key).state
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Answer {
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
pub(super) struct ScriptProbe {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    probes: Arc<Mutex<HashMap<String, usize>>>,
}

impl ScriptProbe {
    /// A probe that finds `names` unhealthy, and every other endpoint healthy.
    pub(super) fn failing(names: &[&str]) -> Self {
        let probe = ScriptProbe::default();
        for name in names {
            probe.set(name, Answer::Fail);
        }
        probe
    }

    pub(super) fn set(&self, name: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(name.into(), answer);
    }

    pub(super) fn count(&self, name: &str) -> usize {
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
pub(super) async fn script_answers(probe: &ScriptProbe, name: &str, script: &[(Answer, u64)]) {
    for &(answer, seconds) in script {
        probe.set(name, answer);
        advance(secs(seconds)).await;
    }
}

/// Probes every second exactly (no jitter), 500 ms timeout.
pub(super) fn every_second() -> ActiveChecks {
    ActiveChecks::new()
        .interval(secs(1))
        .jitter(0.0)
        .timeout(ms(500))
}
