//! Outlier detection and retries over real hyper servers on 127.0.0.1 (real clock): servers
//! that answer 500 or 503 or refuse connections are ejected and return.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceExt};
use tower_lb::balance::HealthEvents;
use tower_lb::discover;
use tower_lb::endpoint::EndpointState;
use tower_lb::error::BoxError;
use tower_lb::health::{HealthEvent, OutlierDetection};
use tower_lb::strategy::{LeastRequest, RoundRobin, Strategy};
use tower_lb::Balance;

use super::support::{drain, expect_events, secs, summaries};
use crate::common::{endpoints, eventually, stats_of, Server, ToEndpoint, PATIENCE};

/// Sends `GET /` and returns the status and the body (the server's address).
async fn get<S>(balance: &mut S) -> Result<(StatusCode, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let request = Request::get("/").body(Empty::new()).unwrap();
    let response = tokio::time::timeout(PATIENCE, async {
        balance.ready().await?.call(request).await
    })
    .await
    .map_err(|_| "request timed out")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    // The body is `"{addr} {path}"`: the server's address is what the tests compare.
    let addr = body.split_once(' ').map_or(&*body, |(addr, _)| addr);
    Ok((status, addr.to_string()))
}

pub(super) fn real_state<P: Strategy>(
    balance: &Balance<SocketAddr, ToEndpoint, P>,
    addr: SocketAddr,
) -> EndpointState {
    stats_of(balance, &addr).state
}

/// Sends `n` requests (`GET /`), each of them answered with 200 by the server at `only`
/// (or by any server, if `None`).
pub(super) async fn get_ok<S>(balance: &mut S, n: usize, only: Option<SocketAddr>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    for _ in 0..n {
        let (status, body) = get(balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if let Some(addr) = only {
            assert_eq!(body, addr.to_string());
        }
    }
}

/// Sends `n` requests (`GET /`). Returns the failed ones in order (`Some` server address
/// for a 5xx answer, `None` for an error), and when the last of them was sent. Every other
/// answer must be 200.
async fn get_failures<S>(
    balance: &mut S,
    n: usize,
) -> (Vec<Option<String>>, Option<std::time::Instant>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let (mut failures, mut last) = (Vec::new(), None);
    for _ in 0..n {
        let sent_at = std::time::Instant::now();
        match get(balance).await {
            Ok((status, _)) if status == StatusCode::OK => continue,
            Ok((status, body)) if status.is_server_error() => failures.push(Some(body)),
            Ok((status, _)) => panic!("unexpected status {status}"),
            Err(_) => failures.push(None),
        }
        last = Some(sent_at);
    }
    (failures, last)
}

/// A balancer over `servers` with `strategy` and outlier detection `outliers`.
fn with_outliers<P: Strategy>(
    strategy: P,
    outliers: OutlierDetection,
    servers: &[&Server],
) -> Balance<SocketAddr, ToEndpoint, P> {
    Balance::builder()
        .strategy(strategy)
        .outlier_detection(outliers)
        .build(discover::static_list(endpoints(servers)))
        .unwrap()
}

/// How long [`quick_ejection`] ejects: far longer than the few requests the tests send
/// while it lasts take on a loaded machine.
const EJECTION: Duration = Duration::from_secs(1);

/// Ejection after 3 failures in a row, for [`EJECTION`] (at most 3 times that), then
/// `probation`.
fn quick_ejection(probation: Option<u32>) -> OutlierDetection {
    OutlierDetection::new()
        .consecutive_failures(Some(3))
        .base_ejection(EJECTION)
        .max_ejection(EJECTION * 3)
        .probation_successes(probation)
}

/// Waits (real clock) until at least `n` events have come, and returns them.
pub(super) async fn wait_for_events<K: Debug>(
    events: &mut HealthEvents<K>,
    what: &str,
    n: usize,
) -> Vec<HealthEvent<K>> {
    let mut seen = Vec::new();
    eventually(what, async || {
        seen.extend(drain(events));
        seen.len() >= n
    })
    .await;
    seen
}

#[tokio::test]
async fn a_server_answering_500_is_ejected_at_the_threshold_and_returns_after_the_ejection() {
    let ok1 = Server::start(200).await;
    let bad = Server::start(500).await;
    let ok2 = Server::start(200).await;
    let mut balance = with_outliers(
        RoundRobin::new(),
        quick_ejection(Some(2)),
        &[&ok1, &bad, &ok2],
    );
    let mut events = balance.health_events();

    // Exactly 3 answers of 500 reach the caller (the third ejects the server as it
    // completes), then the server gets nothing more.
    let (failures, last_failure_sent) = get_failures(&mut balance, 15).await;
    let ejected_after = last_failure_sent.unwrap();
    assert_eq!(failures, vec![Some(bad.addr.to_string()); 3]);
    assert_eq!(bad.hits(), 3);
    assert_eq!(real_state(&balance, bad.addr), EndpointState::Ejected);

    // While ejected, and after the server has recovered, it gets no traffic: every request
    // that is still answered during the ejection went elsewhere (the one that sees it end
    // may have gone to it).
    bad.set(200);
    for _ in 0..20 {
        let (status, body) = get(&mut balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if real_state(&balance, bad.addr) != EndpointState::Ejected {
            break;
        }
        assert_ne!(body, bad.addr.to_string());
        assert_eq!(bad.hits(), 3);
    }

    // Back on probation once the ejection is over (never before), then probation passes.
    eventually("the end of the ejection", async || {
        real_state(&balance, bad.addr) != EndpointState::Ejected
    })
    .await;
    let back_after = ejected_after.elapsed();
    assert!(back_after >= EJECTION, "back after {back_after:?}");
    eprintln!(
        "500 server: ejected after 3 failures, back after {back_after:?} (ejection {EJECTION:?})"
    );
    for _ in 0..200 {
        if bad.hits() >= 5 {
            break;
        }
        let (status, _) = get(&mut balance).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(bad.hits(), 5);
    // The completion path ends probation; the driver reports it.
    assert_eq!(real_state(&balance, bad.addr), EndpointState::Active);
    let seen = wait_for_events(&mut events, "the probation passed event", 3).await;
    let name = bad.addr.to_string();
    assert_eq!(
        summaries(&seen),
        [
            format!("{name}: healthy -> ejected (3 in a row)"),
            format!("{name}: ejected -> probation (ejection ended)"),
            format!("{name}: probation -> healthy (probation passed)"),
        ]
    );
}

#[tokio::test]
async fn a_server_refusing_connections_is_ejected_and_returns_when_it_listens_again() {
    let ok1 = Server::start(200).await;
    let mut down = Server::start(200).await;
    let ok2 = Server::start(200).await;
    let tombstone = down.stop().await;
    let mut balance = with_outliers(
        RoundRobin::new(),
        quick_ejection(None),
        &[&ok1, &down, &ok2],
    );
    let mut events = balance.health_events();
    // Connection errors reach the caller 3 times, then the endpoint is skipped.
    let (failures, last_error_sent) = get_failures(&mut balance, 15).await;
    assert_eq!(failures, [None, None, None]);
    assert_eq!(stats_of(&balance, &down.addr).failures, 3);
    assert_eq!(real_state(&balance, down.addr), EndpointState::Ejected);

    down.restart(tombstone);
    eventually("the end of the ejection", async || {
        real_state(&balance, down.addr) == EndpointState::Active
    })
    .await;
    let back_after = last_error_sent.unwrap().elapsed();
    assert!(back_after >= EJECTION, "back after {back_after:?}");
    // Without probation it is back at full weight at once.
    get_ok(&mut balance, 30, None).await;
    assert_eq!(down.hits(), 10);
    let name = down.addr.to_string();
    expect_events(
        &mut events,
        &[
            format!("{name}: healthy -> ejected (3 in a row)"),
            format!("{name}: ejected -> healthy (ejection ended)"),
        ],
    );
}

/// Retries idempotent requests that failed (an error or a 5xx), within a shared budget.
#[derive(Clone)]
struct RetryIdempotent {
    budget: Arc<TpsBudget>,
    attempts_left: usize,
    retries: Arc<AtomicUsize>,
}

impl RetryIdempotent {
    /// 10 % of requests may be retried, plus 10 retries per second, over a 10 s window;
    /// each request at most `attempts` times.
    fn new(attempts: usize) -> Self {
        RetryIdempotent {
            budget: Arc::new(TpsBudget::new(secs(10), 10, 0.1)),
            attempts_left: attempts,
            retries: Arc::default(),
        }
    }
}

impl<B: Clone, Res, E> Policy<Request<B>, Response<Res>, E> for RetryIdempotent {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<Res>, E>,
    ) -> Option<Self::Future> {
        let failed = result
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        if !failed {
            self.budget.deposit();
            return None;
        }
        if self.attempts_left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.attempts_left -= 1;
        self.retries.fetch_add(1, Ordering::SeqCst);
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if !request.method().is_idempotent() {
            return None;
        }
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

async fn ten_servers_one_answering_503() -> (Vec<Server>, usize) {
    let mut servers = Vec::new();
    for i in 0..10 {
        servers.push(Server::start(if i == 6 { 503 } else { 200 }).await);
    }
    (servers, 6)
}

#[tokio::test]
async fn scenario_ten_servers_one_503_fails_at_most_the_threshold_before_ejection() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let mut balance = with_outliers(RoundRobin::new(), OutlierDetection::new(), &all);
    let mut failed = 0;
    for _ in 0..300 {
        let (status, _) = get(&mut balance).await.unwrap();
        failed += usize::from(status.is_server_error());
    }
    eprintln!("scenario, no retries: {failed} failed requests of 300 before ejection");
    assert_eq!(failed, 5, "exactly the consecutive-failure threshold");
    assert_eq!(servers[bad].hits(), 5);
    assert_eq!(
        real_state(&balance, servers[bad].addr),
        EndpointState::Ejected
    );
    let others: usize = servers.iter().map(Server::hits).sum::<usize>() - 5;
    assert_eq!(others, 295);
}

#[tokio::test]
async fn scenario_ten_servers_one_503_with_retries_no_failure_reaches_the_caller() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let balance = with_outliers(RoundRobin::new(), OutlierDetection::new(), &all);
    let policy = RetryIdempotent::new(2);
    let retries = policy.retries.clone();
    let mut retrying = Retry::new(policy, balance.clone());
    for i in 0..300 {
        let (status, body) = get(&mut retrying).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} reached the caller failed"
        );
        assert_ne!(body, servers[bad].addr.to_string());
    }
    let retried = retries.load(Ordering::SeqCst);
    eprintln!(
        "scenario, with retries: 0 failed of 300; {} attempts failed at the 503 server, {retried} retries",
        servers[bad].hits()
    );
    assert_eq!((servers[bad].hits(), retried), (5, 5));
    assert_eq!(
        real_state(&balance, servers[bad].addr),
        EndpointState::Ejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_concurrent_callers_with_retries_see_no_failure() {
    let (servers, bad) = ten_servers_one_answering_503().await;
    let all: Vec<&Server> = servers.iter().collect();
    let balance = with_outliers(LeastRequest::new(), OutlierDetection::new(), &all);
    // Least request picks at random among two: a request can meet the 503 server again on
    // its retry. It can fail there at most 5 times (its fifth failure there ejects it at
    // the latest), so 5 retries always reach another server.
    let policy = RetryIdempotent::new(5);
    let retries = policy.retries.clone();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut retrying = Retry::new(policy.clone(), balance.clone());
            tokio::spawn(async move { get_ok(&mut retrying, 40, None).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let at_bad = servers[bad].hits();
    eprintln!(
        "scenario, 8 concurrent callers with retries: 0 failed of 320; {at_bad} attempts failed at the 503 server, {} retries",
        retries.load(Ordering::SeqCst)
    );
    // Least request counts each failure as a request in flight for a second, so the 503
    // server draws few requests and may not reach the five that eject it; if it does,
    // requests already in flight when the fifth failure ejects it may still fail: at
    // most one per other caller.
    assert!(at_bad <= 5 + 7, "{at_bad}");
    assert_eq!(retries.load(Ordering::SeqCst), at_bad);
}
