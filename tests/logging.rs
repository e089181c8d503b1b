//! What the balancer logs, and at which level (the crate docs, "Logging and metrics"):
//! discovery errors at WARN, health changes at INFO, both inside the span `balancer` with
//! the balancer's name; a request that succeeds logs nothing at all, at any level.

mod common;

use std::time::Duration;

use common::{send, settle, Backend, Captured};
use futures::channel::mpsc;
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::Change;
use tower_lb::error::BoxError;
use tower_lb::health::OutlierDetection;
use tower_lb::strategy::RoundRobin;
use tower_lb::Builder;

#[tokio::test(start_paused = true)]
async fn levels_and_the_balancers_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (tx, rx) = mpsc::unbounded::<Result<Change<&'static str, Backend>, BoxError>>();
    let mut balance = Builder::new()
        .name("orders")
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(Some(2))
                .base_ejection(Duration::from_secs(30)),
        )
        .build(rx)
        .unwrap();
    tx.unbounded_send(Ok(Change::insert("a", Backend::new("a"))))
        .unwrap();
    tx.unbounded_send(Ok(Change::insert("b", Backend::new("b").failing())))
        .unwrap();
    settle().await;
    captured.take();

    // Round robin alternates: a succeeds, b fails once; nothing at INFO or above yet.
    for _ in 0..3 {
        send(&mut balance).await.ok();
    }
    let quiet: Vec<String> = captured.take();
    assert!(
        quiet
            .iter()
            .all(|l| !l.contains("INFO") && !l.contains("WARN")),
        "{quiet:#?}"
    );

    // b's second failure in a row ejects it: one INFO line, in the balancer's span.
    for _ in 0..2 {
        send(&mut balance).await.ok();
    }
    settle().await;
    let lines = captured.take();
    let ejected: Vec<&String> = lines.iter().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(ejected.len(), 1, "{lines:#?}");
    assert!(
        ejected[0].contains("balancer{name=orders}"),
        "{}",
        ejected[0]
    );
    assert!(ejected[0].contains("\"b\""), "{}", ejected[0]);

    // With b ejected every request goes to a and succeeds: not one line, at any level.
    for _ in 0..5 {
        assert_eq!(send(&mut balance).await.unwrap(), "a");
    }
    settle().await;
    let lines = captured.take();
    assert!(lines.is_empty(), "{lines:#?}");

    // A discovery error: one WARN line, in the balancer's span; the set stays.
    tx.unbounded_send(Err("registry unreachable".into()))
        .unwrap();
    settle().await;
    let lines = captured.take();
    let warned: Vec<&String> = lines.iter().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    assert!(warned[0].contains("balancer{name=orders}"), "{}", warned[0]);
    assert!(warned[0].contains("registry unreachable"), "{}", warned[0]);
    assert_eq!(balance.endpoints().len(), 2);
}
