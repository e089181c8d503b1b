//! Bad health settings: each is a typed error when the balancer is built, never a panic.

use std::time::Duration;

use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::error::BuildError;
use tower_lb::health::outlier::FailurePercentage;
use tower_lb::health::{ActiveChecks, OutlierDetection, SlowStart};
use tower_lb::strategy::RoundRobin;
use tower_lb::Balance;

use super::support::{build_nodes, Node, NodeBuilder, ScriptProbe};
use crate::common::CallLog;

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
