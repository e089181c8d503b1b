//! The cost of Prequal's server layer per request (feature `prequal`): what a server pays
//! to count its requests in flight and keep its latency estimate, and what a probe costs.
//!
//! ```text
//! cargo bench --features prequal --bench prequal
//! ```
//!
//! A baseline is measured in the same run, so that the figures can be given as
//! differences on a shared, noisy host:
//!
//! | id | what |
//! |---|---|
//! | `layer/baseline` | a `service_fn` answering `http::Response<Full<Bytes>>`, called directly |
//! | `layer/prequal` | the same behind `PrequalLayer`: the request counted in flight on arrival, its latency filed by RIF on completion (the estimator's mutex, taken twice, uncontended here) |
//! | `layer/prequal_report` | the same with `report_on_responses`: the two headers written on the response |
//! | `layer/probe` | a probe answered by the layer (the estimator read under its mutex, the two headers, no call to the application) |
//!
//! The per-request overhead of the layer is `layer/prequal - layer/baseline`.

mod server_layer;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::Request;
use tower::{Layer, Service};
use tower_lb::prequal::{PrequalLayer, PROBE_PATH};

fn layer(c: &mut Criterion) {
    let rt = server_layer::runtime();
    let mut g = server_layer::group(c, "layer");
    server_layer::baseline(&mut g, &rt);
    let handler = server_layer::handler();
    for (name, report) in [("prequal", false), ("prequal_report", true)] {
        let service = PrequalLayer::new()
            .report_on_responses(report)
            .layer(handler);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = service.clone();
                black_box(s.call(Request::new(())).await.unwrap())
            })
        });
    }
    let service = PrequalLayer::new().layer(handler);
    g.bench_function("probe", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = service.clone();
            let probe = Request::get(PROBE_PATH).body(()).unwrap();
            black_box(s.call(probe).await.unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
