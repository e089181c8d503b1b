//! Prequal (feature `prequal`): the server layer on real hyper servers, the HTTP transport
//! and its bad answers, and the strategy's probing, pool and fallback under the paused clock.

#![cfg(feature = "prequal")]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::endpoint::EndpointState;
use tower_lb::health::{OutlierDetection, ProbeFailure, ProbeTarget};
use tower_lb::prequal::{
    AnswerError, HttpTransport, PrequalLayer, ProbeAnswer, ProbeError, ProbeTransport,
    ServiceTransport, LATENCY_HEADER, RIF_HEADER,
};
use tower_lb::strategy::Prequal;
use tower_lb::{discover, Balance};

/// A server behind `layer` whose application counts its calls; requests on `/slow` wait
/// until `release` is notified.
async fn app_server(
    layer: PrequalLayer,
    calls: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let calls = calls.clone();
        let release = release.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/slow" {
                release.notified().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"app"))))
        }
    });
    common::serve(listener, layer.layer(app));
    addr
}

fn transport() -> HttpTransport<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
    http_body_util::Empty<Bytes>,
> {
    HttpTransport::new(common::client())
}

#[tokio::test]
async fn probes_are_answered_by_the_layer_without_reaching_the_application() {
    let layer = PrequalLayer::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let addr = app_server(layer.clone(), calls.clone(), release.clone()).await;
    let target = ProbeTarget::new(addr.to_string());

    let answer = transport().probe(&target).await.unwrap();
    assert_eq!(
        answer,
        ProbeAnswer {
            rif: 0,
            latency_us: 0
        }
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the probe never reached the application"
    );

    // A request held in the application counts in the RIF the next probe reports.
    let client = common::client();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let uri = format!("http://{addr}/slow");
            client
                .request(Request::get(uri).body(Default::default()).unwrap())
                .await
                .unwrap()
        }
    });
    common::eventually("the slow request to arrive", async || {
        layer.estimator().rif() == 1
    })
    .await;
    let answer = transport().probe(&target).await.unwrap();
    assert_eq!(answer.rif, 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the slow request reached it"
    );
    release.notify_one();
    let response = slow.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response.headers().contains_key(RIF_HEADER),
        "not asked to report"
    );
    common::eventually("the slow request to leave", async || {
        layer.estimator().rif() == 0
    })
    .await;
    // Its latency (at RIF 0) is now the estimate at RIF 0.
    let answer = transport().probe(&target).await.unwrap();
    assert_eq!(answer.rif, 0);
    assert!(answer.latency_us > 0, "{answer:?}");
}

#[tokio::test]
async fn ordinary_responses_carry_the_numbers_when_asked() {
    let layer = PrequalLayer::new().report_on_responses(true);
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = app_server(layer, calls, Arc::default()).await;
    let response = common::client()
        .request(
            Request::get(format!("http://{addr}/work"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let answer = ProbeAnswer::from_headers(response.headers()).unwrap();
    // Sent when the request had left the RIF: 0 in flight, and its own latency recorded.
    assert_eq!(answer.rif, 0);
    assert!(response.headers().contains_key(LATENCY_HEADER));
}

/// A server that answers every request with this status and these header values.
async fn answering(status: u16, headers: &'static [(&'static str, &'static str)]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, http::HeaderValue::from_static(value));
        }
        Ok::<_, Infallible>(response)
    });
    common::serve(listener, service);
    addr
}

#[tokio::test]
async fn bad_answers_are_typed_errors() {
    let probe = |addr: SocketAddr| async move {
        transport().probe(&ProbeTarget::new(addr.to_string())).await
    };
    let none = answering(200, &[]).await;
    assert!(matches!(
        probe(none).await,
        Err(ProbeError::Answer(AnswerError::Missing {
            header: "x-prequal-rif"
        }))
    ));
    let text = answering(
        200,
        &[("x-prequal-rif", "many"), ("x-prequal-latency-us", "1")],
    )
    .await;
    assert!(matches!(
        probe(text).await,
        Err(ProbeError::Answer(AnswerError::NotANumber { .. }))
    ));
    let negative = answering(
        200,
        &[("x-prequal-rif", "1"), ("x-prequal-latency-us", "-5")],
    )
    .await;
    assert!(matches!(
        probe(negative).await,
        Err(ProbeError::Answer(AnswerError::NotANumber { .. }))
    ));
    let huge = answering(
        200,
        &[
            ("x-prequal-rif", "99999999999"),
            ("x-prequal-latency-us", "1"),
        ],
    )
    .await;
    assert!(matches!(
        probe(huge).await,
        Err(ProbeError::Answer(AnswerError::OutOfRange { .. }))
    ));
    let error = answering(
        503,
        &[("x-prequal-rif", "1"), ("x-prequal-latency-us", "1")],
    )
    .await;
    assert!(matches!(
        probe(error).await,
        Err(ProbeError::Failed(ProbeFailure::Status(s))) if s == 503
    ));
    // Nothing listens on a port just closed: refused.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    assert!(matches!(
        probe(closed).await,
        Err(ProbeError::Failed(ProbeFailure::Connect(_)))
    ));
    let good = answering(
        200,
        &[("x-prequal-rif", "4"), ("x-prequal-latency-us", "2500")],
    )
    .await;
    assert_eq!(
        probe(good).await.unwrap(),
        ProbeAnswer {
            rif: 4,
            latency_us: 2500
        }
    );
}

/// Answers by endpoint name from a table the test changes; a name missing from the table
/// fails its probe.
#[derive(Clone, Default)]
struct Answers(Arc<Mutex<HashMap<String, ProbeAnswer>>>, Arc<AtomicUsize>);

impl Answers {
    fn set(&self, name: &str, rif: u64, latency_us: u64) {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_owned(), ProbeAnswer { rif, latency_us });
    }

    fn fail(&self, name: &str) {
        self.0.lock().unwrap().remove(name);
    }

    fn transport(&self) -> impl ProbeTransport {
        let answers = self.clone();
        ServiceTransport::new(tower::service_fn(move |target: ProbeTarget| {
            let answers = answers.clone();
            async move {
                answers.1.fetch_add(1, Ordering::SeqCst);
                let found = answers.0.lock().unwrap().get(target.name()).copied();
                found.ok_or_else(|| std::io::Error::other("no answer"))
            }
        }))
    }
}

fn backend(
    name: &'static str,
) -> impl Service<(), Response = &'static str, Error = std::io::Error, Future: Send> + Clone + Send + Sync
{
    tower::service_fn(move |()| async move { Ok::<_, std::io::Error>(name) })
}

#[tokio::test(start_paused = true)]
async fn picks_follow_the_probes_and_fall_back_when_the_pool_is_empty() {
    let answers = Answers::default();
    answers.set("a", 5, 100);
    answers.set("b", 0, 900);
    answers.set("c", 1, 50);
    let prequal = Prequal::new(answers.transport()).with_seed(7);
    let monitor = prequal.monitor();
    let mut balance = Balance::builder()
        .strategy(prequal)
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("a", backend("a")),
            ("b", backend("b")),
            ("c", backend("c")),
        ]))
        .unwrap();

    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(balance.ready().await.unwrap().call(()).await.unwrap());
        // Lets the probe task send the pick's 3 probes and file the answers.
        common::settle().await;
    }
    // The first pick found an empty pool (a fallback); every later one found all three
    // answers fresh, none hot (the 0.84 quantile of {0, 1, 5, ...} is 5), and took the cold
    // one with the lowest latency: c.
    assert_eq!(&picks[1..], ["c"; 5]);
    let stats = monitor.stats();
    assert_eq!((stats.fallbacks, stats.picks), (1, 5));
    assert_eq!(
        stats.probes_sent, 18,
        "3 per pick, all 3 endpoints each time"
    );
    assert_eq!(stats.probes_answered, 18);
    assert_eq!(monitor.pool().first().map(|p| &*p.endpoint), Some("c"));

    // c slows down: a (100 µs, RIF 5, not above the quantile 5) is now the fastest cold one.
    answers.set("c", 1, 5000);
    balance.ready().await.unwrap().call(()).await.unwrap();
    common::settle().await;
    assert_eq!(balance.ready().await.unwrap().call(()).await.unwrap(), "a");

    // At rest (once the last pick's probes are out) nothing is sent; probes age out, and
    // the next pick falls back.
    common::settle().await;
    let sent = monitor.stats().probes_sent;
    tokio::time::sleep(Duration::from_secs(10)).await;
    common::settle().await;
    assert_eq!(monitor.stats().probes_sent, sent, "no probes at rest");
    balance.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(monitor.stats().fallbacks, 2);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_drop_the_endpoint_and_count_for_outlier_detection() {
    let answers = Answers::default();
    answers.set("a", 0, 100);
    answers.set("b", 0, 100);
    answers.set("c", 0, 10);
    let prequal = Prequal::new(answers.transport()).with_seed(3);
    let monitor = prequal.monitor();
    let mut balance = Balance::builder()
        .strategy(prequal)
        .classify(ErrorsAsFailures)
        .outlier_detection(OutlierDetection::new().consecutive_failures(Some(3)))
        .build(discover::static_list([
            ("a", backend("a")),
            ("b", backend("b")),
            ("c", backend("c")),
        ]))
        .unwrap();
    balance.ready().await.unwrap().call(()).await.unwrap();
    common::settle().await;
    assert_eq!(balance.ready().await.unwrap().call(()).await.unwrap(), "c");
    common::settle().await;

    // c's probes fail from now on: its probes leave the pool at the first failure, and its
    // third failure in a row ejects it.
    answers.fail("c");
    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(balance.ready().await.unwrap().call(()).await.unwrap());
        common::settle().await;
    }
    assert!(monitor.stats().probes_failed >= 3, "{:?}", monitor.stats());
    assert!(monitor.pool().iter().all(|p| &*p.endpoint != "c"));
    let c = balance
        .endpoints()
        .into_iter()
        .find(|e| e.key == "c")
        .unwrap();
    assert_eq!(c.state, EndpointState::Ejected);
    // After the first failure filed, no pick went to c.
    assert!(picks[2..].iter().all(|&p| p != "c"), "{picks:?}");
}

/// A transport that records which endpoints each probe went to and never answers: every
/// probe stays in flight until its timeout.
#[derive(Clone, Default)]
struct Silent(Arc<Mutex<Vec<String>>>);

impl ProbeTransport for Silent {
    type Future = std::future::Pending<Result<ProbeAnswer, ProbeError>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        self.0.lock().unwrap().push(target.name().to_owned());
        std::future::pending()
    }
}

fn ten_backends() -> Vec<(
    &'static str,
    impl Service<(), Response = &'static str, Error = std::io::Error, Future: Send>
        + Clone
        + Send
        + Sync,
)> {
    ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .into_iter()
        .map(|n| (n, backend(n)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn probes_go_to_distinct_endpoints_time_out_and_stay_under_the_concurrency_bound() {
    let silent = Silent::default();
    let prequal = Prequal::new(silent.clone())
        .with_seed(11)
        .max_concurrent_probes(7)
        .probe_timeout(Duration::from_millis(500));
    let monitor = prequal.monitor();
    let mut balance = Balance::builder()
        .strategy(prequal)
        .classify(ErrorsAsFailures)
        .outlier_detection(None)
        .build(discover::static_list(ten_backends()))
        .unwrap();

    // One pick: its 3 probes go to 3 distinct endpoints (sampled without replacement).
    balance.ready().await.unwrap().call(()).await.unwrap();
    common::settle().await;
    let first: Vec<String> = silent.0.lock().unwrap().clone();
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((first.len(), distinct.len()), (3, 3), "{first:?}");

    // Three more picks ask for 9 more; only 4 fit under the bound of 7 in flight.
    for _ in 0..3 {
        balance.ready().await.unwrap().call(()).await.unwrap();
        common::settle().await;
    }
    let stats = monitor.stats();
    assert_eq!(
        (
            stats.probes_sent,
            stats.probes_in_flight,
            stats.probes_skipped
        ),
        (7, 7, 5),
        "{stats:?}"
    );
    assert_eq!(stats.fallbacks, 4, "no answer, so every pick fell back");

    // The timeout fails all seven; nothing stays in flight.
    tokio::time::sleep(Duration::from_millis(501)).await;
    common::settle().await;
    let stats = monitor.stats();
    assert_eq!(
        (stats.probes_failed, stats.probes_in_flight),
        (7, 0),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_probe_rate_is_bounded() {
    let answers = Answers::default();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
        answers.set(n, 0, 100);
    }
    // 50 probes a second: a burst of 5 (a tenth of a second's worth), then 5 every 0.1 s.
    let prequal = Prequal::new(answers.transport())
        .with_seed(5)
        .max_probe_rate(50.0);
    let monitor = prequal.monitor();
    let mut balance = Balance::builder()
        .strategy(prequal)
        .classify(ErrorsAsFailures)
        .build(discover::static_list(ten_backends()))
        .unwrap();
    // Ten picks at one instant ask for 30 probes.
    for _ in 0..10 {
        balance.ready().await.unwrap().call(()).await.unwrap();
    }
    common::settle().await;
    let stats = monitor.stats();
    assert!(stats.probes_sent <= 5, "{stats:?}");
    assert_eq!(stats.probes_sent + stats.probes_skipped, 30, "{stats:?}");
    // A second later, ten more picks: at most the burst again (the bucket holds no more).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..10 {
        balance.ready().await.unwrap().call(()).await.unwrap();
    }
    common::settle().await;
    let later = monitor.stats();
    assert!(later.probes_sent - stats.probes_sent <= 5, "{later:?}");
    assert_eq!(later.probes_sent + later.probes_skipped, 60, "{later:?}");
}

#[test]
fn invalid_settings_are_build_errors() {
    let answers = Answers::default();
    let cases = [
        Prequal::new(answers.transport()).probes_per_query(0.0),
        Prequal::new(answers.transport()).probes_per_query(f64::NAN),
        Prequal::new(answers.transport()).pool_size(0),
        Prequal::new(answers.transport()).q_rif(1.5),
        Prequal::new(answers.transport()).max_age(Duration::ZERO),
        Prequal::new(answers.transport()).reuse_delta(-1.0),
        Prequal::new(answers.transport()).max_probe_rate(0.0),
        Prequal::new(answers.transport()).max_concurrent_probes(0),
    ];
    for prequal in cases {
        let built = Balance::builder()
            .strategy(prequal)
            .classify(ErrorsAsFailures)
            .build(discover::static_list([("a", backend("a"))]));
        assert!(built.is_err());
    }
}

mod answers_never_panic {
    use proptest::prelude::*;
    use tower_lb::prequal::{ProbeAnswer, LATENCY_HEADER, RIF_HEADER};

    proptest! {
        #[test]
        fn any_header_bytes(rif in proptest::collection::vec(any::<u8>(), 0..30),
                            latency in proptest::collection::vec(any::<u8>(), 0..30)) {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&rif) {
                headers.insert(RIF_HEADER, v);
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&latency) {
                headers.insert(LATENCY_HEADER, v);
            }
            let _ = ProbeAnswer::from_headers(&headers);
        }

        #[test]
        fn valid_answers_round_trip(rif in 0u64..=u32::MAX as u64, latency_us in 0u64..=3_600_000_000) {
            let answer = ProbeAnswer { rif, latency_us };
            let mut headers = http::HeaderMap::new();
            answer.write_headers(&mut headers);
            prop_assert_eq!(ProbeAnswer::from_headers(&headers), Ok(answer));
        }

        #[test]
        fn numbers_out_of_range_are_errors(rif in (u32::MAX as u64 + 1)..=u64::MAX) {
            let mut headers = http::HeaderMap::new();
            headers.insert(RIF_HEADER, rif.into());
            headers.insert(LATENCY_HEADER, 1u64.into());
            prop_assert!(ProbeAnswer::from_headers(&headers).is_err());
        }
    }
}
