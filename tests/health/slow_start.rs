//! Slow start under tokio's paused clock: a new endpoint's share, and one back from
//! unhealthy, ramp up over the window.

use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::health::SlowStart;

use super::support::{
    advance, build_nodes, count, every_second, ms, node_builder, script_answers, secs, state,
    Answer, Node, ScriptProbe,
};
use crate::common::{picks, settle, CallLog};

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
