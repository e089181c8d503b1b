//! Active checks under tokio's paused clock with a scripted probe: the first answer, rise
//! and fall, probe timeouts and panics, jitter, and `Initial::Unhealthy`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::health::{ActiveChecks, Initial, Probe, ProbeFailure, ProbeTarget};
use tower_lb::Balance;

use super::support::{
    advance, build_nodes, count, drain, every_second, expect_events, ms, node_builder, picture,
    script_answers, secs, setup, sorted_events, state, Answer, Node, ScriptProbe,
};
use crate::common::{picks, settle, Backend, CallLog};

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
