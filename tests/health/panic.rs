//! Panic mode under tokio's paused clock: below the threshold the balancer fails open over
//! every endpoint, unless it fails closed.

use tower_lb::endpoint::EndpointState;
use tower_lb::error::UnavailableReason;

use super::support::{
    build_nodes, count, drain, every_second, ms, picture, script_answers, setup, state,
    unavailable, Answer, ScriptProbe,
};
use crate::common::{picks, settle, CallLog};

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
