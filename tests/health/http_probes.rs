//! HTTP probes against real hyper servers on 127.0.0.1 (real clock, feature `http`): a
//! hanging server, and servers answering 500, hanging or refusing, are unhealthy until they
//! recover.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::health::{ActiveChecks, HealthReason, HttpProbe, ProbeFailure};
use tower_lb::strategy::RoundRobin;
use tower_lb::{Balance, Builder};

use super::real_servers::{get_ok, real_state, wait_for_events};
use super::support::{drain, expect_events, ms, secs, summaries, summary};
use crate::common::{client, endpoints, eventually, stats_of, Server, ToEndpoint, HANG};

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
fn probed(builder: Builder, servers: &[&Server]) -> Balance<SocketAddr, ToEndpoint, RoundRobin> {
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
