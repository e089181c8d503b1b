//! Real hyper servers on 127.0.0.1 behind a balancer of hyper-util legacy clients.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tower::{Service, ServiceExt};
use tower_lb::discover;
use tower_lb::error::BoxError;
use tower_lb::strategy::{LeastRequest, PeakEwma, RoundRobin, Strategy};
use tower_lb::Balance;

use common::{client, endpoints, Server, ToEndpoint};

/// A balancer without outlier detection, so that every request reaches the server it
/// was sent to and the counters show the classifier's verdicts as they are.
fn balancer<P: Strategy>(strategy: P, servers: &[&Server]) -> Balance<SocketAddr, ToEndpoint, P> {
    Balance::builder()
        .strategy(strategy)
        .outlier_detection(None)
        .build(discover::static_list(endpoints(servers)))
        .unwrap()
}

/// Sends `GET path` and returns the status and the body.
async fn get<S>(balance: &mut S, path: &str) -> Result<(StatusCode, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let request = Request::get(path).body(Empty::new()).unwrap();
    let response = balance.ready().await?.call(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

#[tokio::test]
async fn round_robin_alternates_exactly_across_three_servers() {
    let servers = [
        Server::start(200).await,
        Server::start(200).await,
        Server::start(200).await,
    ];
    let mut balance = balancer(RoundRobin::new(), &servers.iter().collect::<Vec<_>>());
    for round in 0..10 {
        for server in &servers {
            let (status, body) = get(&mut balance, "/hello?round=x").await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body,
                format!("{} /hello?round=x", server.addr),
                "round {round}"
            );
        }
    }
    for e in balance.endpoints() {
        assert_eq!((e.completed, e.failures, e.in_flight), (10, 0, 0), "{e:?}");
    }
}

#[tokio::test]
async fn server_errors_are_counted_as_failures_by_the_default_classifier() {
    let ok1 = Server::start(200).await;
    let broken = Server::start(500).await;
    let ok2 = Server::start(200).await;
    let mut balance = balancer(RoundRobin::new(), &[&ok1, &broken, &ok2]);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, body) = get(&mut balance, "/").await.unwrap();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            assert!(body.starts_with(&broken.addr.to_string()));
        }
        statuses.push(status.as_u16());
    }
    // The response itself is passed through unchanged.
    assert_eq!(statuses, [200, 500, 200].repeat(10));
    for e in balance.endpoints() {
        let expected_failures = if e.key == broken.addr { 10 } else { 0 };
        assert_eq!((e.completed, e.failures), (10, expected_failures), "{e:?}");
    }
}

#[tokio::test]
async fn a_server_that_shuts_down_fails_while_the_others_keep_serving() {
    let a = Server::start(200).await;
    let mut b = Server::start(200).await;
    let c = Server::start(200).await;
    let mut balance = balancer(RoundRobin::new(), &[&a, &b, &c]);
    for _ in 0..9 {
        get(&mut balance, "/").await.unwrap();
    }
    let _tombstone = b.stop().await;

    let mut errors = 0;
    for i in 0..30 {
        match get(&mut balance, "/").await {
            Ok((status, body)) => {
                assert_eq!(status, StatusCode::OK);
                assert!(
                    !body.starts_with(&b.addr.to_string()),
                    "request {i}: {body}"
                );
            }
            Err(_) => {
                assert_eq!(i % 3, 1, "only b's turns fail (request {i})");
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 10);
    for e in balance.endpoints() {
        let (completed, failures) = if e.key == b.addr { (13, 10) } else { (13, 0) };
        assert_eq!(
            (e.completed, e.failures, e.in_flight),
            (completed, failures, 0),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_through_build_with_reach_every_server() {
    let servers = [
        Server::start(200).await,
        Server::start(200).await,
        Server::start(200).await,
    ];
    let client = client();
    let balance = Balance::builder()
        .strategy(LeastRequest::new())
        .build_with(
            discover::static_list(servers.iter().map(|s| (s.addr, ()))),
            ToEndpoint::factory(client),
        )
        .unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut b = balance.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    let request = Request::get("/").body(Empty::new()).unwrap();
                    let r: Result<Response<Incoming>, BoxError> =
                        async { b.ready().await?.call(request).await }.await;
                    let body = r.unwrap().into_body().collect().await.unwrap();
                    assert!(!body.to_bytes().is_empty());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let eps = balance.endpoints();
    assert_eq!(eps.iter().map(|e| e.completed).sum::<u64>(), 300);
    for e in &eps {
        assert!(e.completed > 0, "{e:?}");
        assert_eq!((e.in_flight, e.failures), (0, 0), "{e:?}");
    }
}

/// One server answers 503 at once, the other 200: before any ejection (outlier detection
/// off), least request and peak-EWMA send the failing one less traffic than the healthy
/// one, where an in-flight count alone would favour it (it has nothing in flight).
async fn fast_failing_server_draws_less<P: Strategy + Clone>(strategy: P) -> (usize, usize) {
    let healthy = Server::start(200).await;
    let failing = Server::start(503).await;
    let balance = balancer(strategy, &[&healthy, &failing]);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mut balance = balance.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    let _ = get(&mut balance, "/").await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (failing.hits(), healthy.hits())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_a_fast_failing_server_less_than_a_healthy_one() {
    let (failing, healthy) = fast_failing_server_draws_less(LeastRequest::new()).await;
    eprintln!("least request: the 503 server got {failing} requests, the healthy one {healthy}");
    assert_eq!(failing + healthy, 1000);
    assert!(failing * 4 < healthy, "{failing} vs {healthy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_a_fast_failing_server_less_than_a_healthy_one() {
    let (failing, healthy) = fast_failing_server_draws_less(PeakEwma::new()).await;
    eprintln!("peak-EWMA: the 503 server got {failing} requests, the healthy one {healthy}");
    assert_eq!(failing + healthy, 1000);
    assert!(failing * 4 < healthy, "{failing} vs {healthy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_penalty_least_request_would_favour_the_fast_failing_server() {
    // The contrast: failures weigh nothing, and both servers answer at once, so the 503
    // server draws about half (with real latency on the healthy one, more than half).
    let strategy = LeastRequest::new().failure_penalty(std::time::Duration::ZERO);
    let (failing, healthy) = fast_failing_server_draws_less(strategy).await;
    eprintln!("least request without penalty: 503 server {failing}, healthy {healthy}");
    assert!(failing * 4 >= healthy, "{failing} vs {healthy}");
}
