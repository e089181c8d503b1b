//! The cost of ORCA load reports per response (feature `orca`): parsing each form on the
//! client, and the server layer's work per response.
//!
//! ```text
//! cargo bench --features orca --bench orca
//! cargo bench --features orca --bench orca -- parse   # a criterion filter (a regex)
//! ```
//!
//! Each group has a baseline measured in the same run, so that the figures can be given as
//! ratios on a shared, noisy host:
//!
//! | id | what |
//! |---|---|
//! | `parse/baseline_no_report` | `LoadReport::from_headers` on a response with no report (what every response costs a balancer that reads reports) |
//! | `parse/text`, `parse/json`, `parse/bin`, `parse/grpc_bin` | `from_headers` of a typical report (cpu, application utilization, qps, eps, one named metric) in each form |
//! | `parse/*_small` | the same with only `cpu_utilization` and `rps_fractional` |
//! | `parse/text_value_only`, `parse/bin_value_only`, `parse/text_small_value_only` | the parser alone on the header's value (no header lookups) |
//! | `parse/encode_text`, `parse/encode_bin`, `parse/encode_json` | writing the typical report in each form (the server's side) |
//! | `parse/baseline_parse_f64` | one `str::parse::<f64>` of `0.4375`: the floor of any text form |
//! | `layer/baseline` | a `service_fn` answering `http::Response<Full<Bytes>>`, called directly |
//! | `layer/orca_text`, `layer/orca_bin` | the same behind `OrcaLayer` (TEXT or BIN header): recorder in the extensions, rates, report, header |
//! | `layer/orca_grpc` | a gRPC answer behind `OrcaLayer`: the report goes into the trailers when the body is read (the baseline being `layer/grpc_baseline`) |
//!
//! The per-response overhead of the layer is `layer/orca_text - layer/baseline`.

mod server_layer;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tower::{Layer, Service, ServiceExt};
use tower_lb::orca::{HeaderForm, LoadReport, OrcaLayer};

fn typical() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.4375,
        application_utilization: 0.61,
        rps_fractional: 1234.5,
        eps: 2.25,
        ..LoadReport::default()
    }
    .with_named_metric("queue", 7.0)
}

fn small() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.4375,
        rps_fractional: 1234.5,
        ..LoadReport::default()
    }
}

/// The headers of a plain response, with a report in `form` when given.
fn headers(report: &LoadReport, form: Option<HeaderForm>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from_static("42"));
    headers.insert(
        "date",
        HeaderValue::from_static("Thu, 03 Dec 2026 10:00:00 GMT"),
    );
    if let Some(form) = form {
        report.write_headers(&mut headers, form);
    }
    headers
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let none = headers(&typical(), None);
    g.bench_function("baseline_no_report", |b| {
        b.iter(|| LoadReport::from_headers(black_box(&none)))
    });
    for (name, form) in [
        ("text", HeaderForm::Text),
        ("json", HeaderForm::Json),
        ("bin", HeaderForm::Bin),
        ("grpc_bin", HeaderForm::GrpcBin),
    ] {
        for (suffix, report) in [("", typical()), ("_small", small())] {
            let map = headers(&report, Some(form));
            assert_eq!(LoadReport::from_headers(&map), Some(Ok(report)));
            g.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| LoadReport::from_headers(black_box(&map)))
            });
        }
    }
    // The parsers alone, without the header lookups.
    let text = typical().to_text().unwrap();
    g.bench_function("text_value_only", |b| {
        b.iter(|| LoadReport::parse_text(black_box(&text)))
    });
    let bin = typical().to_bin();
    g.bench_function("bin_value_only", |b| {
        b.iter(|| LoadReport::parse_bin(black_box(bin.as_bytes())))
    });
    let small_text = small().to_text().unwrap();
    g.bench_function("text_small_value_only", |b| {
        b.iter(|| LoadReport::parse_text(black_box(&small_text)))
    });
    // The encoders, for the server's side.
    let report = typical();
    g.bench_function("encode_text", |b| b.iter(|| black_box(&report).to_text()));
    g.bench_function("encode_bin", |b| b.iter(|| black_box(&report).to_bin()));
    g.bench_function("encode_json", |b| b.iter(|| black_box(&report).to_json()));
    g.bench_function("baseline_parse_f64", |b| {
        b.iter(|| black_box("0.4375").parse::<f64>())
    });
    g.finish();
}

fn layer(c: &mut Criterion) {
    let rt = server_layer::runtime();
    let mut g = server_layer::group(c, "layer");
    server_layer::baseline(&mut g, &rt);
    let handler = server_layer::handler();
    for (name, form) in [
        ("orca_text", HeaderForm::Text),
        ("orca_bin", HeaderForm::Bin),
    ] {
        let service = OrcaLayer::new().form(form).layer(handler);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = service.clone();
                let response = s.call(Request::new(())).await.unwrap();
                black_box(response)
            })
        });
    }

    type GrpcBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;
    let grpc = tower::service_fn(|_req: Request<()>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let response: Response<GrpcBody> = Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    g.bench_function("grpc_baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let response = grpc.oneshot(Request::new(())).await.unwrap();
            black_box(response.into_body().collect().await.unwrap())
        })
    });
    let service = OrcaLayer::new().layer(grpc);
    g.bench_function("orca_grpc", |b| {
        b.to_async(&rt).iter(|| async {
            let response = service.clone().oneshot(Request::new(())).await.unwrap();
            black_box(response.into_body().collect().await.unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, layer);
criterion_main!(benches);
