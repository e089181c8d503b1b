//! Outlier detection under tokio's paused clock: consecutive failures, ejection and its
//! doubling, probation, the ejection limit, and the interval detectors (success rate and
//! failure percentage).

use std::time::Duration;

use tower_lb::balance::HealthEvents;
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::health::{ActiveChecks, HealthEvent, HealthReason, OutlierDetection, SlowStart};
use tower_lb::strategy::LeastRequest;
use tower_lb::Balance;

use super::support::{
    advance, build_nodes, count, drain, expect_events, fail_calls, ms, no_traffic_for,
    node_builder, outliers, picture, secs, send_until_calls, setup, sorted_events, state,
    summaries, Node, ScriptProbe,
};
use crate::common::{hold, picks, send, settle, Backend, CallLog, Gate};

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
