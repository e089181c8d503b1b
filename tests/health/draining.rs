//! Draining under tokio's paused clock: a draining endpoint takes no new requests and lets
//! those in flight finish.

use std::time::Duration;

use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::error::UnavailableReason;

use super::support::{build_nodes, count, expect_events, ms, node_builder, picture, unavailable};
use crate::common::{hold, picks, settle, stats_of, Backend, CallLog, Gate};

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
