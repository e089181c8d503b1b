//! The reverse proxy example under a failure: three upstreams, a steady load through the
//! proxy, one upstream killed mid-run and brought back.
//!
//! - Every request gets an answer (no client-side errors).
//! - Requests that reach the client as 5xx are bounded by the requests that were in flight
//!   on the killed upstream plus the consecutive failures outlier detection needs, and none
//!   of them started after the failure was detected: idempotent requests that fail before
//!   being sent are retried on another upstream.
//! - Once the upstream is back, it gets traffic again within the configured time (ejection
//!   plus `rise` probe intervals).

#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_lb::health::Health;

use proxy::{spawn_demo_upstream, Config, StrategyKind};

/// Client tasks sending requests back to back.
const CONCURRENCY: usize = 16;
const CONSECUTIVE_FAILURES: u32 = 5;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const BASE_EJECTION: Duration = Duration::from_secs(1);

struct Outcome {
    started: Instant,
    status: Result<u16, String>,
    upstream: String,
    answered: Instant,
}

fn config(servers: &[SocketAddr], strategy: StrategyKind) -> Config {
    let mut config = proxy_common::config(servers);
    config.health.interval = PROBE_INTERVAL;
    config.health.timeout = Duration::from_millis(200);
    config.health.rise = RISE;
    config.health.fall = 2;
    config.outlier.consecutive_failures = CONSECUTIVE_FAILURES;
    config.outlier.base_ejection = BASE_EJECTION;
    config.outlier.max_ejection = BASE_EJECTION;
    config.retry.attempts = 3;
    config.upstream.strategy = strategy;
    if strategy == StrategyKind::LeastRequest {
        // Probation gives a recovered upstream a tenth of its weight; least request then
        // prefers the others until they have ten requests in flight, which this light load
        // never reaches, so the test would measure the load rather than the recovery.
        config.outlier.probation_successes = 0;
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_killed_upstream_loses_no_request_and_comes_back() {
    killed_upstream_loses_no_request_and_comes_back(StrategyKind::LeastRequest).await;
}

/// Round robin with the default probation: a tenth of the weight is still a share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_killed_upstream_loses_no_request_and_comes_back() {
    killed_upstream_loses_no_request_and_comes_back(StrategyKind::RoundRobin).await;
}

async fn killed_upstream_loses_no_request_and_comes_back(strategy: StrategyKind) {
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
    let running = proxy::start(&config(&addrs, strategy)).await.unwrap();
    let target = format!("http://{}/fault", running.addr);
    // Let the first probes mark every upstream healthy.
    tokio::time::sleep(PROBE_INTERVAL * 3).await;

    let start = Instant::now();
    let run_for = Duration::from_millis(6000);
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let target = target.clone();
        let outcomes = outcomes.clone();
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run_for {
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

    // Kill the victim after 1 s, bring it back (same address) after 2.5 s.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    drop(upstreams[1].take());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = Instant::now();
    let _back = spawn_demo_upstream(victim).await.unwrap();

    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let log = running.health_log.lock().unwrap().clone();

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
    assert!(outcomes.len() > 1000, "only {} requests", outcomes.len());

    // 2. The failure is detected; no 5xx for requests started after that, and few before.
    let detected = log
        .iter()
        .find(|(at, key, health)| {
            *key == victim
                && *at >= killed_at
                && matches!(health, Health::Ejected | Health::Unhealthy)
        })
        .map(|(at, _, _)| *at)
        .expect("the killed upstream was never ejected or marked unhealthy");
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
        "{strategy}: {} requests, {} answered 5xx (bound {bound}), detection after {:?}",
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

    // 3. Back within the configured time: the ejection, then `rise` successful probes.
    let victim_name = victim.to_string();
    let first_back = outcomes
        .iter()
        .filter(|o| o.started >= restarted_at && o.upstream == victim_name)
        .map(|o| o.answered)
        .min()
        .unwrap_or_else(|| {
            panic!(
                "the restarted upstream got no traffic; health changes since the kill: {:?}",
                log.iter()
                    .filter(|(at, _, _)| *at >= killed_at)
                    .map(|(at, key, health)| (*at - killed_at, key.port(), *health))
                    .collect::<Vec<_>>()
            )
        });
    let allowed = BASE_EJECTION + PROBE_INTERVAL * (RISE + 2) + Duration::from_millis(500);
    println!("{strategy}: back after {:?}", first_back - restarted_at);
    assert!(
        first_back - restarted_at <= allowed,
        "the upstream got traffic again after {:?}, more than {allowed:?}",
        first_back - restarted_at
    );
    running.shutdown().await;
}
