//! What the server-layer benches (`orca`, `prequal`) share: a current-thread runtime, a
//! criterion group with short settings, the handler every layer wraps, and the baseline
//! that calls the handler directly in the same run.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;

/// The runtime the layers' futures run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A group of 30 samples, 0.5 s of warm-up and 2 s of measurement.
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// The application every layer wraps: answers "hello" at once.
pub fn handler() -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
> + Copy {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    })
}

/// `baseline`: the handler called directly.
pub fn baseline(g: &mut BenchmarkGroup<'_, WallTime>, rt: &tokio::runtime::Runtime) {
    let handler = handler();
    g.bench_function("baseline", |b| {
        b.to_async(rt).iter(|| async {
            let mut s = handler;
            black_box(s.call(Request::new(())).await.unwrap())
        })
    });
}
