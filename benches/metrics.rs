//! The cost of the `metrics` feature per request: the same balancer without a recorder and
//! with metrics-exporter-prometheus's recorder, in the same run.
//!
//! ```text
//! cargo bench --features metrics --bench metrics
//! ```
//!
//! One request = `poll_ready` + `call` + one poll of the response future (ready at once),
//! driven by hand on one thread over 10 always-ready endpoints, as in `benches/balance.rs`.
//!
//! | id | balancer |
//! |---|---|
//! | `STRATEGY/no_recorder` | built before any recorder is installed: it registers no handle, and a request pays a branch on an absent pointer per hook |
//! | `STRATEGY/prometheus` | built after `PrometheusBuilder::new().install_recorder()`: a request reads the clock twice and adds one to a latency bucket of its endpoint; the counters and the histogram reach the recorder from the balancer's background task once a second |
//!
//! STRATEGY is `least_request` (the default) and `round_robin`; `peak_ewma` tracks latency
//! itself, so its histogram shares the clock reads. The cost without a recorder against a
//! build without the feature is counted in instructions (`scripts/hot-path-instructions.sh`
//! with `FEATURES=metrics`), since two builds cannot be timed in one run.

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tower::Service;
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::strategy::{LeastRequest, PeakEwma, RoundRobin, Strategy};
use tower_lb::{discover, Balance};

/// Endpoints per balancer.
const ENDPOINTS: usize = 10;

/// An endpoint that is always ready and answers at once with the request.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

type Bench<P> = Balance<usize, Echo, P, ErrorsAsFailures>;

fn balancer<P: Strategy>(name: &str, strategy: P) -> Bench<P> {
    tower_lb::Builder::new()
        .name(name)
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(discover::static_list((0..ENDPOINTS).map(|i| (i, Echo))))
        .expect("valid configuration")
}

/// One request, driven by hand.
#[inline(always)]
fn request<P: Strategy>(svc: &mut Bench<P>, cx: &mut Context<'_>, req: u64) -> u64 {
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => response,
        _ => panic!("an immediate response was not ready"),
    }
}

fn run<P: Strategy>(c: &mut Criterion, group: &str, pair: &mut [(&str, Bench<P>); 2]) {
    let mut g = c.benchmark_group(group);
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut cx = Context::from_waker(Waker::noop());
    for (id, svc) in pair.iter_mut() {
        g.bench_function(*id, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(request(svc, &mut cx, black_box(i)))
            })
        });
        let stats = svc.endpoints();
        assert!(
            stats.iter().all(|e| e.in_flight == 0),
            "requests left in flight"
        );
    }
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();
    // Without a recorder first, then the same with Prometheus's installed.
    let plain = (
        balancer("least_request", LeastRequest::new()),
        balancer("round_robin", RoundRobin::new()),
        balancer("peak_ewma", PeakEwma::new()),
    );
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder in this process");
    let recorded = (
        balancer("least_request", LeastRequest::new()),
        balancer("round_robin", RoundRobin::new()),
        balancer("peak_ewma", PeakEwma::new()),
    );
    run(
        c,
        "least_request",
        &mut [("no_recorder", plain.0), ("prometheus", recorded.0)],
    );
    run(
        c,
        "round_robin",
        &mut [("no_recorder", plain.1), ("prometheus", recorded.1)],
    );
    run(
        c,
        "peak_ewma",
        &mut [("no_recorder", plain.2), ("prometheus", recorded.2)],
    );
    // The recorded balancers did record.
    let text = handle.render();
    assert!(
        text.contains("tower_lb_requests_total{balancer=\"round_robin\",endpoint=\"0\"}"),
        "nothing recorded:\n{text}"
    );
}

criterion_group!(benches, metrics);
criterion_main!(benches);
