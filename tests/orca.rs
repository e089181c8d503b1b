//! Server-reported load (feature `orca`): weighted round robin's exact sequences, its
//! blackout, expiry and recovery under the paused clock, the driver's timed rebuild, reports
//! and bad reports in the endpoint stats, gRPC reports in trailers, and real hyper servers
//! behind `OrcaLayer`.

#![cfg(feature = "orca")]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tower::{Layer, Service, ServiceExt};
use tower_lb::endpoint::Load;
use tower_lb::http::OnBodyEnd;
use tower_lb::orca::{
    CallMetricRecorder, HeaderForm, LoadReport, OrcaLayer, RateWindow, ENDPOINT_LOAD_METRICS_BIN,
};
use tower_lb::strategy::{Context, EndpointList, RoundRobin, Strategy, WeightedRoundRobin};
use tower_lb::{discover, Balance};

/// A report that gives weight `w` (qps `w`, utilization 1).
fn weight(w: f64) -> LoadReport {
    LoadReport {
        rps_fractional: w,
        cpu_utilization: 1.0,
        ..LoadReport::default()
    }
}

/// Endpoints keeping reports; those with a weight above 0 have reported it (now).
fn reporting(weights: &[f64]) -> EndpointList {
    let mut list = EndpointList::default();
    for &w in weights {
        let load = Arc::new(Load::default().with_load_reports());
        if w > 0.0 {
            load.record_load_report(Ok(weight(w)));
        }
        list.push(1, load);
    }
    list
}

fn picks(wrr: &WeightedRoundRobin, list: &EndpointList, n: usize) -> Vec<usize> {
    let table = wrr.build(&list.endpoints());
    (0..n)
        .map(|_| wrr.pick(&table, &list.endpoints(), &Context::default()))
        .collect()
}

fn counts(picks: &[usize], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| picks.iter().filter(|&&p| p == i).count())
        .collect()
}

fn no_blackout() -> WeightedRoundRobin {
    WeightedRoundRobin::new().blackout_period(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn weights_one_two_three_give_one_two_three_picks_in_six() {
    let list = reporting(&[1.0, 2.0, 3.0]);
    let p = picks(&no_blackout(), &list, 6);
    assert_eq!(p, [1, 2, 2, 0, 1, 2]);
    assert_eq!(counts(&p, 3), [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_without_a_weight_takes_the_mean() {
    let list = reporting(&[3.0, 0.0, 1.0]);
    assert_eq!(counts(&picks(&no_blackout(), &list, 6), 3), [3, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn equal_weights_and_an_unknown_one_are_exact_round_robin() {
    let list = reporting(&[300.0, 300.0, 0.0]);
    assert_eq!(picks(&no_blackout(), &list, 9), [0, 1, 2, 0, 1, 2, 0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn fewer_than_two_usable_weights_is_round_robin() {
    let wrr = no_blackout();
    let list = reporting(&[5.0, 0.0, 0.0]);
    assert!(wrr.build(&list.endpoints()).is_round_robin());
    // Unusable reports: zero utilization, zero qps.
    let list = reporting(&[0.0, 0.0]);
    list.endpoints().load(0).record_load_report(Ok(LoadReport {
        rps_fractional: 10.0,
        ..LoadReport::default()
    }));
    list.endpoints().load(1).record_load_report(Ok(LoadReport {
        application_utilization: 0.5,
        ..LoadReport::default()
    }));
    let table = wrr.build(&list.endpoints());
    assert!(table.is_round_robin());
    assert_eq!(table.weights(), [0.0, 0.0]);
    assert_eq!(picks(&wrr, &list, 4), [0, 1, 0, 1]);
}

#[test]
fn the_weight_formula_of_a58_with_a114s_utilization() {
    let wrr = WeightedRoundRobin::new();
    let report = LoadReport {
        rps_fractional: 100.0,
        eps: 10.0,
        cpu_utilization: 0.5,
        ..LoadReport::default()
    };
    // 100 / (0.5 + 10/100 × 1.0)
    assert!((wrr.weight_of(&report) - 100.0 / 0.6).abs() < 1e-9);
    // application_utilization wins when above 0.
    let app = LoadReport {
        application_utilization: 0.25,
        ..report.clone()
    };
    assert!((wrr.weight_of(&app) - 100.0 / 0.35).abs() < 1e-9);
    // A configured named metric wins over cpu_utilization (not over application's).
    let named = WeightedRoundRobin::new()
        .error_utilization_penalty(0.0)
        .metric_names_for_computing_utilization(["named_metrics.queue", "utilization.disk"]);
    let queue = report
        .clone()
        .with_named_metric("queue", 0.2)
        .with_utilization("disk", 0.4);
    assert!((named.weight_of(&queue) - 100.0 / 0.4).abs() < 1e-9);
}

#[test]
fn a_negative_penalty_is_rejected() {
    for penalty in [-1.0, f64::NAN, f64::INFINITY] {
        let error = Balance::builder()
            .strategy(WeightedRoundRobin::new().error_utilization_penalty(penalty))
            .build(discover::static_list(Vec::<(u8, common::Http)>::new()))
            .err()
            .unwrap();
        assert!(matches!(
            error,
            tower_lb::error::BuildError::InvalidConfig(_)
        ));
    }
    assert_eq!(
        WeightedRoundRobin::new()
            .weight_update_period(Duration::from_millis(5))
            .rebuild_every(),
        Some(Duration::from_millis(100))
    );
}

#[tokio::test(start_paused = true)]
async fn blackout_expiry_and_recovery() {
    let wrr = WeightedRoundRobin::new(); // blackout 10 s, expiration 180 s
    let list = reporting(&[0.0, 0.0]);
    let (a, b) = (list.endpoints().load(0), list.endpoints().load(1));
    let report = |both: bool| {
        a.record_load_report(Ok(weight(1.0)));
        if both {
            b.record_load_report(Ok(weight(3.0)));
        }
    };
    let second = Duration::from_secs(1);

    // Reports every second; for the first 10 s the weights are in their blackout.
    for _ in 0..10 {
        report(true);
        assert!(wrr.build(&list.endpoints()).is_round_robin());
        tokio::time::advance(second).await;
    }
    report(true);
    let table = wrr.build(&list.endpoints());
    assert_eq!(table.weights(), [1.0, 3.0]);
    assert_eq!(counts(&picks(&wrr, &list, 400), 2), [100, 300]);

    // `b` stops reporting: its weight lasts 3 minutes, then expires.
    for _ in 0..179 {
        tokio::time::advance(second).await;
        report(false);
        assert!(!wrr.build(&list.endpoints()).is_round_robin());
    }
    tokio::time::advance(second).await;
    report(false);
    let table = wrr.build(&list.endpoints());
    assert!(table.is_round_robin());
    assert_eq!(table.weights(), [1.0, 0.0]);

    // It reports again: a new blackout of 10 s before its weight counts.
    for _ in 0..10 {
        report(true);
        assert!(wrr.build(&list.endpoints()).is_round_robin());
        tokio::time::advance(second).await;
    }
    report(true);
    assert_eq!(wrr.build(&list.endpoints()).weights(), [1.0, 3.0]);
}

/// A backend answering 200 with whatever report header `header` holds (none: no report).
#[derive(Clone)]
struct Reporting {
    name: &'static str,
    header: Arc<Mutex<Option<(&'static str, String)>>>,
}

impl Reporting {
    fn new(name: &'static str) -> Self {
        Reporting {
            name,
            header: Arc::default(),
        }
    }

    fn report(&self, report: &LoadReport) {
        let (name, value) = report.header(HeaderForm::Text);
        let _ = name;
        *self.header.lock().unwrap() =
            Some(("endpoint-load-metrics", value.to_str().unwrap().to_owned()));
    }

    fn raw(&self, name: &'static str, value: &str) {
        *self.header.lock().unwrap() = Some((name, value.to_owned()));
    }
}

impl Service<()> for Reporting {
    type Response = Response<&'static str>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<&'static str>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let mut response = Response::new(self.name);
        if let Some((name, value)) = self.header.lock().unwrap().clone() {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_str(&value).unwrap());
        }
        std::future::ready(Ok(response))
    }
}

async fn send_n<S>(balance: &mut S, n: usize) -> HashMap<&'static str, usize>
where
    S: Service<(), Response = Response<&'static str>>,
    S::Error: std::fmt::Debug,
{
    let mut seen = HashMap::new();
    for _ in 0..n {
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        *seen.entry(*response.body()).or_default() += 1;
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn the_driver_rebuilds_the_schedule_on_its_timer_without_traffic() {
    let (a, b) = (Reporting::new("a"), Reporting::new("b"));
    let report = |util: f64| LoadReport {
        rps_fractional: 100.0,
        application_utilization: util,
        ..LoadReport::default()
    };
    a.report(&report(0.1));
    b.report(&report(0.9));
    let mut balance = Balance::builder()
        .strategy(no_blackout())
        .build(discover::static_list([("a", a.clone()), ("b", b.clone())]))
        .unwrap();
    // Before a rebuild has seen a report: round robin.
    let seen = send_n(&mut balance, 10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5));
    // No request for 1.5 s: the timer rebuilds the schedule from the reports.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = send_n(&mut balance, 1000).await;
    // Weights 1000 and 111: a takes 9/10.
    assert!((880..=920).contains(&seen["a"]), "{seen:?}");

    // The loads swap; after the next rebuild, so do the shares.
    a.report(&report(0.9));
    b.report(&report(0.1));
    send_n(&mut balance, 10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = send_n(&mut balance, 1000).await;
    assert!((880..=920).contains(&seen["b"]), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn reports_and_bad_reports_show_in_the_endpoint_stats() {
    let a = Reporting::new("a");
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .load_reports(true)
        .build(discover::static_list([("a", a.clone())]))
        .unwrap();
    send_n(&mut balance, 1).await;
    let stats = &balance.endpoints()[0];
    assert_eq!((stats.load_reports, stats.load_report_errors), (0, 0));
    assert_eq!(stats.load_report, None);

    let good = LoadReport {
        cpu_utilization: 0.3,
        rps_fractional: 12.0,
        ..LoadReport::default()
    };
    a.report(&good);
    send_n(&mut balance, 1).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let stats = &balance.endpoints()[0];
    assert_eq!(stats.load_report.as_ref(), Some(&good));
    assert_eq!(stats.load_report_age, Some(Duration::from_secs(2)));

    // Every kind of bad report is counted and ignored: the good one stays.
    let bin_nan = LoadReport {
        eps: f64::NAN,
        ..LoadReport::default()
    }
    .to_bin();
    let huge = format!("TEXT eps=1{}", " ".repeat(tower_lb::orca::MAX_HEADER_LEN));
    let bad = [
        ("endpoint-load-metrics", "TEXT cpu_utilization=NaN"),
        ("endpoint-load-metrics", "TEXT cpu_utilization=inf"),
        ("endpoint-load-metrics", "TEXT eps=-1"),
        (
            "endpoint-load-metrics",
            "JSON {\"cpu_utilization\": 1, \"x\": 2}",
        ),
        ("endpoint-load-metrics", "BIN %%%"),
        ("endpoint-load-metrics-bin", "AAAA"),
        ("endpoint-load-metrics-bin", &bin_nan),
        ("endpoint-load-metrics", &huge),
        ("endpoint-load-metrics", "XML <load/>"),
    ];
    for (name, value) in bad {
        a.raw(name, value);
        send_n(&mut balance, 1).await;
    }
    let stats = &balance.endpoints()[0];
    assert_eq!(stats.load_report_errors, bad.len() as u64);
    assert_eq!(stats.load_reports, 1);
    assert_eq!(stats.load_report.as_ref(), Some(&good));
    assert_eq!(stats.failures, 0, "a bad report is not a failed request");
}

#[tokio::test(start_paused = true)]
async fn a_balancer_that_reads_no_reports_keeps_none() {
    let a = Reporting::new("a");
    a.report(&weight(3.0));
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .build(discover::static_list([("a", a.clone())]))
        .unwrap();
    send_n(&mut balance, 3).await;
    let stats = &balance.endpoints()[0];
    assert_eq!((stats.load_reports, stats.load_report.as_ref()), (0, None));
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A gRPC answer whose status and load report come in its trailers.
fn grpc_answer(report: &LoadReport) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let (name, value) = report.header(HeaderForm::GrpcBin);
    trailers.insert(name, value);
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_reports_are_read_from_the_trailers_with_on_body_end() {
    let report = LoadReport {
        cpu_utilization: 0.4,
        rps_fractional: 50.0,
        ..LoadReport::default()
    };
    let server = {
        let report = report.clone();
        tower::service_fn(move |_: ()| {
            let answer = grpc_answer(&report);
            async move { Ok::<_, Infallible>(answer) }
        })
    };
    let mut balance = Balance::builder()
        .strategy(no_blackout())
        .track_completion(OnBodyEnd)
        .build(discover::static_list([("s", server)]))
        .unwrap();
    let response = balance.ready().await.unwrap().call(()).await.unwrap();
    // Nothing in the head; the trailers carry it when the body is read.
    assert_eq!(balance.endpoints()[0].load_reports, 0);
    let trailers = response.into_body().collect().await.unwrap();
    assert!(trailers
        .trailers()
        .unwrap()
        .contains_key(ENDPOINT_LOAD_METRICS_BIN));
    let stats = &balance.endpoints()[0];
    assert_eq!(stats.load_reports, 1);
    assert_eq!(stats.load_report.as_ref(), Some(&report));
}

/// A hyper HTTP/1 server on 127.0.0.1 behind `OrcaLayer`, whose handler records an
/// application utilization of `cost` × its own request rate: weight = qps / utilization =
/// 1 / cost whatever traffic it gets.
async fn orca_server(name: &'static str, cost: f64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rate = Arc::new(RateWindow::new(Duration::from_secs(1)));
    let layer = OrcaLayer::new().window(Duration::from_secs(1));
    let handler = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let rate = rate.clone();
        async move {
            rate.record();
            if let Some(recorder) = req.extensions().get::<CallMetricRecorder>() {
                recorder.set_application_utilization(rate.rate() * cost);
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))
        }
    });
    common::serve(listener, layer.layer(handler));
    addr
}

#[tokio::test]
async fn real_servers_behind_the_layer_get_shares_by_their_cost() {
    let costs = [("cheap", 1.0), ("middle", 2.0), ("dear", 4.0)];
    let client = common::client();
    let mut endpoints = Vec::new();
    for (name, cost) in costs {
        let addr = orca_server(name, cost).await;
        endpoints.push((name, common::ToEndpoint::from_addr(client.clone(), addr)));
    }
    let wrr = WeightedRoundRobin::new()
        .blackout_period(Duration::ZERO)
        .weight_update_period(Duration::from_millis(100));
    let balance = Balance::builder()
        .strategy(wrr)
        .build(discover::static_list(endpoints))
        .unwrap();

    // Shares of 4/7, 2/7 and 1/7 over the last 700 requests, once the weights settle.
    common::eventually("shares by cost", async || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..700 {
            let mut b = balance.clone();
            let request = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
            let response = b.ready().await.unwrap().call(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            *seen
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
        let share = |n: &str| seen.get(n).copied().unwrap_or(0) as f64 / 700.0;
        (share("cheap") - 4.0 / 7.0).abs() < 0.07
            && (share("middle") - 2.0 / 7.0).abs() < 0.05
            && (share("dear") - 1.0 / 7.0).abs() < 0.04
    })
    .await;
    for stats in balance.endpoints() {
        assert!(stats.load_reports > 0, "{stats:?}");
        assert_eq!(stats.load_report_errors, 0);
        let report = stats.load_report.unwrap();
        assert!(report.rps_fractional > 0.0 && report.application_utilization > 0.0);
    }
}

#[test]
fn the_default_classifier_reads_reports_and_a_classify_fn_needs_read_reports() {
    use tower_lb::classify::{classify_fn, Classify, DefaultClassifier, Outcome};
    use tower_lb::orca::ReadReports;
    let mut response = Response::new(());
    weight(2.0).write_headers(response.headers_mut(), HeaderForm::Json);
    let ok: Result<Response<()>, Infallible> = Ok(response);
    let closure = classify_fn(|_: &Result<Response<()>, Infallible>| Outcome::Success);
    let Ok(response) = &ok else { unreachable!() };
    assert_eq!(
        Classify::<_, Infallible>::load_report(&DefaultClassifier, response),
        Some(Ok(weight(2.0)))
    );
    assert_eq!(
        Classify::<_, Infallible>::load_report(&closure, response),
        None
    );
    assert_eq!(
        Classify::<_, Infallible>::load_report(&ReadReports(closure), response),
        Some(Ok(weight(2.0)))
    );
}
