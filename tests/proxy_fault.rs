//! The reverse proxy example under a failure: three upstreams, a steady load through the
//! proxy, one upstream killed mid-run and brought back.
//!
//! - Every request gets an answer (no client-side errors).
//! - Requests that reach the client as 5xx are bounded by the requests that were in flight
//!   on the killed upstream plus the consecutive failures outlier detection needs, and none
//!   of them started after the failure was detected: idempotent requests that fail before
//!   being sent are retried on another upstream.
//! - Once the upstream is back, it gets traffic again within the configured time (ejection
//!   plus `rise` probe intervals, and room for a loaded machine).
//!
//! The run goes from one phase to the next on events (answers counted, health changes
//! logged), not at fixed times: a slow machine makes it longer, not different.

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_lb::health::Health;

use common::{eventually, PATIENCE};
use proxy::{spawn_demo_upstream, Config, StrategyKind};

/// Client tasks sending requests back to back.
const CONCURRENCY: usize = 16;
const CONSECUTIVE_FAILURES: u32 = 5;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const BASE_EJECTION: Duration = Duration::from_secs(1);
/// Answers each phase of the run waits for: from every upstream before the kill, and to
/// requests sent after the failure was detected.
const PER_PHASE: usize = 100;
/// What a loaded machine may add to the time the restarted upstream takes to get traffic:
/// probes and picks that run late.
const LOAD_SLACK: Duration = Duration::from_secs(3);

struct Outcome {
    started: Instant,
    status: Result<u16, String>,
    upstream: String,
    answered: Instant,
}

fn config(servers: &[SocketAddr], strategy: StrategyKind) -> Config {
    let mut config = proxy_common::config(servers);
    config.health.interval = PROBE_INTERVAL;
    // The killed upstream refuses at once; a live one must never time out, however loaded
    // the machine.
    config.health.timeout = Duration::from_secs(1);
    config.health.rise = RISE;
    config.health.fall = 2;
    config.outlier.consecutive_failures = CONSECUTIVE_FAILURES;
    config.outlier.base_ejection = BASE_EJECTION;
    config.outlier.max_ejection = BASE_EJECTION;
    config.retry.attempts = 3;
    // Probation as the proxy's default has it: none under least request (a tenth of the
    // weight would get a recovered upstream no request at this light load), a tenth of the
    // weight until 5 successes under round robin.
    config.upstream.strategy = strategy;
    config
}

/// The settings of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settings {
    /// Short probe intervals and ejections ([`config`]); the upstream is restarted once
    /// the probes have found it down and requests went on without it for a while.
    Quick,
    /// The proxy's defaults (probes every 2 s, ejections of 30 s, least request); the
    /// upstream is restarted as soon as its failure is detected, as a supervisor restarts
    /// a crashed process.
    Defaults,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_killed_upstream_loses_no_request_and_comes_back() {
    killed_upstream_loses_no_request_and_comes_back(StrategyKind::LeastRequest, Settings::Quick)
        .await;
}

/// Round robin with the default probation: a tenth of the weight is still a share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_killed_upstream_loses_no_request_and_comes_back() {
    killed_upstream_loses_no_request_and_comes_back(StrategyKind::RoundRobin, Settings::Quick)
        .await;
}

/// At the defaults, a restarted upstream serves again within one probe interval: its
/// ejection ends at the first probe that reaches it, and no probation starves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_defaults_a_restarted_upstream_serves_again_within_a_probe_interval() {
    killed_upstream_loses_no_request_and_comes_back(StrategyKind::LeastRequest, Settings::Defaults)
        .await;
}

/// The requests answered by `upstream`, among those sent at or after `since`.
fn answered_by(outcomes: &Mutex<Vec<Outcome>>, upstream: SocketAddr, since: Instant) -> usize {
    let name = upstream.to_string();
    let outcomes = outcomes.lock().unwrap();
    outcomes
        .iter()
        .filter(|o| o.started >= since && o.upstream == name)
        .count()
}

async fn killed_upstream_loses_no_request_and_comes_back(
    strategy: StrategyKind,
    settings: Settings,
) {
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        upstreams.push(Some(
            spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        ));
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().flatten().map(|u| u.addr).collect();
    let victim = addrs[1];
    let config = match settings {
        Settings::Quick => config(&addrs, strategy),
        Settings::Defaults => proxy_common::config(&addrs),
    };
    let running = proxy::start(&config).await.unwrap();
    let target = format!("http://{}/fault", running.addr);
    let healthy = |log: &[(Instant, SocketAddr, Health)], addr: &SocketAddr| {
        log.iter()
            .any(|(_, key, health)| key == addr && *health == Health::Healthy)
    };
    eventually(
        "the first probes to find every upstream healthy",
        async || {
            let log = running.health_log.lock().unwrap();
            addrs.iter().all(|addr| healthy(&log, addr))
        },
    )
    .await;

    let start = Instant::now();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let target = target.clone();
        let outcomes = outcomes.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (status, upstream) = match client.get(target.parse().unwrap()).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let upstream = proxy::answered_by(&response);
                        match response.into_body().collect().await {
                            Ok(_) => (Ok(status), upstream),
                            Err(e) => (Err(format!("body: {e}")), upstream),
                        }
                    }
                    Err(e) => (Err(format!("{e:?}")), String::new()),
                };
                outcomes.lock().unwrap().push(Outcome {
                    started,
                    status,
                    upstream,
                    answered: Instant::now(),
                });
                // A bounded load: about CONCURRENCY / 2 ms = 8 k requests per second at most.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    // Kill the victim once every upstream has served its share of the load.
    eventually("answers from every upstream", async || {
        addrs
            .iter()
            .all(|&addr| answered_by(&outcomes, addr, start) >= PER_PHASE)
    })
    .await;
    let killed_at = Instant::now();
    drop(upstreams[1].take());

    // The failure is detected (ejected at once, or unhealthy by the probes).
    let mut detected = None;
    eventually(
        "the killed upstream ejected or marked unhealthy",
        async || {
            let log = running.health_log.lock().unwrap();
            detected = log
                .iter()
                .find(|(at, key, health)| {
                    *key == victim
                        && *at >= killed_at
                        && matches!(health, Health::Ejected | Health::Unhealthy)
                })
                .map(|(at, _, _)| *at);
            detected.is_some()
        },
    )
    .await;
    let detected = detected.unwrap();
    if settings == Settings::Quick {
        wait_until_down(&running, victim, killed_at, &outcomes).await;
    }

    // Bring it back on the same address (free once the killed upstream's listener is
    // dropped) and wait until it serves again.
    let mut back = None;
    eventually("the killed upstream's address free again", async || {
        back = spawn_demo_upstream(victim).await.ok();
        back.is_some()
    })
    .await;
    let restarted_at = Instant::now();
    eventually("traffic to the restarted upstream", async || {
        answered_by(&outcomes, victim, restarted_at) > 0
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a request hung")
            .unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let log = running.health_log.lock().unwrap().clone();
    check(
        &outcomes,
        &log,
        strategy,
        settings,
        (killed_at, detected, restarted_at),
        victim,
    );
    running.shutdown().await;
}

/// Waits until the probes find the killed upstream down (an ejection ends while it is
/// still down: the probes keep it out by then), and for the load to go on for a while in
/// that state.
async fn wait_until_down(
    running: &proxy::Proxy,
    victim: SocketAddr,
    killed_at: Instant,
    outcomes: &Mutex<Vec<Outcome>>,
) {
    let mut down = None;
    eventually("the killed upstream unhealthy by the probes", async || {
        let log = running.health_log.lock().unwrap();
        down = log
            .iter()
            .rev()
            .find(|(at, key, _)| *key == victim && *at >= killed_at)
            .filter(|(_, _, health)| *health == Health::Unhealthy)
            .map(|(at, _, _)| *at);
        down.is_some()
    })
    .await;
    let down = down.unwrap();
    eventually("answers to requests sent while it is down", async || {
        let outcomes = outcomes.lock().unwrap();
        outcomes.iter().filter(|o| o.started > down).count() >= PER_PHASE
    })
    .await;
}

/// The run's verdict, from every answer and the health log: `times` are when the upstream
/// was killed, when its failure was detected, and when it was restarted.
fn check(
    outcomes: &[Outcome],
    log: &[(Instant, SocketAddr, Health)],
    strategy: StrategyKind,
    settings: Settings,
    times: (Instant, Instant, Instant),
    victim: SocketAddr,
) {
    let (killed_at, detected, restarted_at) = times;
    // 1. Every request got an answer.
    let errors: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.status.as_ref().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} requests got no answer: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // 2. No 5xx for requests started after the detection, and few before.
    let server_errors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.status, Ok(s) if s >= 500))
        .collect();
    let late: Vec<&Outcome> = server_errors
        .iter()
        .copied()
        .filter(|o| o.started > detected)
        .collect();
    let bound = CONCURRENCY + CONSECUTIVE_FAILURES as usize;
    println!(
        "{strategy} ({settings:?}): {} requests, {} answered 5xx (bound {bound}), detection after {:?}",
        outcomes.len(),
        server_errors.len(),
        detected - killed_at
    );
    assert!(
        late.is_empty(),
        "{} requests started after detection got 5xx",
        late.len()
    );
    assert!(
        server_errors.len() <= bound,
        "{} requests got 5xx during detection, more than the bound {bound}",
        server_errors.len()
    );

    // 3. Back within the configured time: with the quick settings, the ejection, then
    // `rise` successful probes; at the defaults, the next probe (every 2 s, give or take
    // 10 %) ends the ejection.
    let victim_name = victim.to_string();
    let first_back = outcomes
        .iter()
        .filter(|o| o.started >= restarted_at && o.upstream == victim_name)
        .map(|o| o.answered)
        .min()
        .expect("the restarted upstream got traffic");
    let allowed = match settings {
        Settings::Quick => BASE_EJECTION + PROBE_INTERVAL * (RISE + 2) + LOAD_SLACK,
        Settings::Defaults => Duration::from_millis(2200) + LOAD_SLACK,
    };
    println!(
        "{strategy} ({settings:?}): back after {:?}",
        first_back - restarted_at
    );
    assert!(
        first_back - restarted_at <= allowed,
        "the upstream got traffic again after {:?}, more than {allowed:?}; health changes since the kill: {:?}",
        first_back - restarted_at,
        log.iter()
            .filter(|(at, _, _)| *at >= killed_at)
            .map(|(at, key, health)| (*at - killed_at, key.port(), *health))
            .collect::<Vec<_>>()
    );
}
