//! The server side: a tower layer that attaches a load report to every response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::cpu::CpuSampler;
use super::headers::{HeaderForm, ENDPOINT_LOAD_METRICS_BIN};
use super::recorder::{CallMetricRecorder, ServerMetricRecorder};
use super::report::LoadReport;
use super::window::RateWindow;
use crate::classify::{grpc, status_outcome, GrpcCodes, Outcome};

/// A tower [`Layer`] for servers (hyper, axum, tonic): every response carries an ORCA load
/// report of the server, for clients that balance by it (gRFC A51).
///
/// Each report holds:
///
/// - `rps_fractional` and `eps`: the requests the service answered, and those that failed
///   (an `Err`, HTTP 5xx or 429, or a gRPC status among
///   [`GrpcCodes::DEFAULT_FAILURES`]), per second over a sliding [`RateWindow`] (1 s by
///   default, [`window`](Self::window));
/// - `cpu_utilization`: the [`CpuSampler`]'s latest sample, if one was given
///   ([`cpu`](Self::cpu));
/// - whatever the application set server-wide in [`server_metrics`](Self::server_metrics),
///   and the handler in the [`CallMetricRecorder`] the layer puts in each request's
///   extensions (the call's values win).
///
/// Where it goes: an HTTP response gets the header in the chosen [`HeaderForm`]
/// ([`form`](Self::form), `TEXT ` by default). A gRPC response (`content-type:
/// application/grpc...`) gets `endpoint-load-metrics-bin` in its trailers, written when the
/// trailers pass, so a streaming handler's last recorded values are in it; a gRPC response
/// whose status is in its head (trailers-only) gets it in the head.
///
/// ```no_run
/// # async fn demo() {
/// use tower_lb::orca::{CpuSampler, OrcaLayer};
/// use std::time::Duration;
///
/// let layer = OrcaLayer::new().cpu(CpuSampler::spawn(Duration::from_secs(1)));
/// let service = tower::ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// # drop(service);
/// # }
/// ```
#[derive(Clone)]
pub struct OrcaLayer {
    shared: Arc<Shared>,
}

struct Shared {
    requests: RateWindow,
    errors: RateWindow,
    cpu: Option<CpuSampler>,
    server: ServerMetricRecorder,
    form: HeaderForm,
}

impl Shared {
    /// The report for one response, with what its call recorded.
    fn report(&self, call: Option<&CallMetricRecorder>) -> LoadReport {
        let mut report = LoadReport {
            cpu_utilization: self.cpu.as_ref().map_or(0.0, CpuSampler::get),
            rps_fractional: self.requests.rate(),
            eps: self.errors.rate(),
            ..LoadReport::default()
        };
        self.server.merge_into(&mut report);
        if let Some(call) = call {
            call.merge_into(&mut report);
        }
        report
    }
}

impl Default for OrcaLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl OrcaLayer {
    /// A layer with a 1 s window, `TEXT ` headers, and no CPU sampling.
    pub fn new() -> Self {
        Self::build(
            Duration::from_secs(1),
            None,
            ServerMetricRecorder::new(),
            HeaderForm::Text,
        )
    }

    fn build(
        window: Duration,
        cpu: Option<CpuSampler>,
        server: ServerMetricRecorder,
        form: HeaderForm,
    ) -> Self {
        OrcaLayer {
            shared: Arc::new(Shared {
                requests: RateWindow::new(window),
                errors: RateWindow::new(window),
                cpu,
                server,
                form,
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut (Duration, Option<CpuSampler>, HeaderForm))) -> Self {
        let s = &self.shared;
        let mut parts = (s.requests.length(), s.cpu.clone(), s.form);
        f(&mut parts);
        Self::build(parts.0, parts.1, s.server.clone(), parts.2)
    }

    /// The length of the sliding window of `rps_fractional` and `eps` (at least 10 ms).
    /// Counts so far start over.
    pub fn window(self, length: Duration) -> Self {
        self.rebuild(|p| p.0 = length)
    }

    /// Reports the CPU utilization this sampler measures.
    pub fn cpu(self, sampler: CpuSampler) -> Self {
        self.rebuild(|p| p.1 = Some(sampler))
    }

    /// The header form of HTTP responses (gRPC responses always get
    /// `endpoint-load-metrics-bin`).
    pub fn form(self, form: HeaderForm) -> Self {
        self.rebuild(|p| p.2 = form)
    }

    /// The server-wide metrics every report carries; set them from anywhere, at any time.
    pub fn server_metrics(&self) -> ServerMetricRecorder {
        self.shared.server.clone()
    }

    /// The report a response would carry now (without a call's values).
    pub fn report(&self) -> LoadReport {
        self.shared.report(None)
    }
}

impl fmt::Debug for OrcaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrcaLayer")
            .field("window", &self.shared.requests.length())
            .field("form", &self.shared.form)
            .field("cpu", &self.shared.cpu.is_some())
            .finish()
    }
}

impl<S> Layer<S> for OrcaLayer {
    type Service = OrcaService<S>;

    fn layer(&self, inner: S) -> OrcaService<S> {
        OrcaService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of an [`OrcaLayer`].
#[derive(Clone)]
pub struct OrcaService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for OrcaService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrcaService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for OrcaService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Body,
{
    type Response = http::Response<OrcaBody<ResB>>;
    type Error = S::Error;
    type Future = OrcaFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqB>) -> Self::Future {
        let recorder = CallMetricRecorder::new();
        request.extensions_mut().insert(recorder.clone());
        OrcaFuture {
            inner: self.inner.call(request),
            call: Some((self.shared.clone(), recorder)),
        }
    }
}

pin_project! {
    /// The response future of [`OrcaService`].
    pub struct OrcaFuture<F> {
        #[pin]
        inner: F,
        call: Option<(Arc<Shared>, CallMetricRecorder)>,
    }
}

impl<F> fmt::Debug for OrcaFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrcaFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for OrcaFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<OrcaBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some((shared, recorder)) = this.call.take() else {
            // Polled again after completion: whatever the inner future says, unreported.
            return Poll::Ready(result.map(|r| r.map(|inner| OrcaBody { inner, call: None })));
        };
        shared.requests.record();
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                shared.errors.record();
                return Poll::Ready(Err(e));
            }
        };
        let headers = response.headers();
        let is_grpc = response.status() == http::StatusCode::OK && grpc::is_grpc(headers);
        if is_grpc && grpc::grpc_status(headers).is_none() {
            // The status and the report go in the trailers.
            return Poll::Ready(Ok(response.map(|inner| OrcaBody {
                inner,
                call: Some((shared, recorder)),
            })));
        }
        let failed = if is_grpc {
            grpc::response_outcome(&response, GrpcCodes::DEFAULT_FAILURES) == Outcome::Failure
        } else {
            status_outcome(response.status()) == Outcome::Failure
        };
        if failed {
            shared.errors.record();
        }
        let report = shared.report(Some(&recorder));
        let form = if is_grpc {
            HeaderForm::GrpcBin
        } else {
            shared.form
        };
        report.write_headers(response.headers_mut(), form);
        Poll::Ready(Ok(response.map(|inner| OrcaBody { inner, call: None })))
    }
}

pin_project! {
    /// The response body of [`OrcaService`]: the service's body, with the report added to
    /// a gRPC response's trailers.
    pub struct OrcaBody<B> {
        #[pin]
        inner: B,
        call: Option<(Arc<Shared>, CallMetricRecorder)>,
    }
}

impl<B> OrcaBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for OrcaBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrcaBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for OrcaBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut result = ready!(this.inner.poll_frame(cx));
        match &mut result {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    if let Some((shared, recorder)) = this.call.take() {
                        let failed =
                            grpc::trailers_outcome(Some(trailers), GrpcCodes::DEFAULT_FAILURES)
                                == Outcome::Failure;
                        if failed {
                            shared.errors.record();
                        }
                        let report = shared.report(Some(&recorder));
                        let (name, value) = report.header(HeaderForm::GrpcBin);
                        debug_assert_eq!(name, ENDPOINT_LOAD_METRICS_BIN);
                        trailers.insert(name, value);
                    }
                }
            }
            // A gRPC body that fails, or ends without trailers: an error of the call.
            Some(Err(_)) | None => {
                if let Some((shared, _)) = this.call.take() {
                    shared.errors.record();
                }
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn http_responses_carry_the_rate_and_the_handlers_metrics() {
        let layer = OrcaLayer::new().window(Duration::from_secs(1));
        layer.server_metrics().set_named_metric("region_load", 0.25);
        let service = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
            let recorder = req.extensions().get::<CallMetricRecorder>().unwrap();
            recorder.set_application_utilization(0.6);
            let status = if req.uri().path() == "/fail" {
                500
            } else {
                200
            };
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(response)
        }));
        let mut last = None;
        for i in 0..20 {
            let path = if i % 4 == 0 { "/fail" } else { "/" };
            let request = http::Request::get(path).body(()).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            last = Some(
                LoadReport::from_headers(response.headers())
                    .unwrap()
                    .unwrap(),
            );
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        let report = last.unwrap();
        // 20 requests in 1 s, 5 of them failures.
        assert!((report.rps_fractional - 20.0).abs() < 2.0, "{report:?}");
        assert!((report.eps - 5.0).abs() < 1.0, "{report:?}");
        assert_eq!(report.application_utilization, 0.6);
        assert_eq!(report.named_metrics["region_load"], 0.25);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_responses_carry_it_in_the_trailers() {
        let layer = OrcaLayer::new();
        let service = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
            let recorder = req
                .extensions()
                .get::<CallMetricRecorder>()
                .unwrap()
                .clone();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            // The handler records after the head, while it streams.
            let frames = futures_util::stream::iter(vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ]);
            recorder.set_cpu_utilization(0.75);
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(frames))
                .unwrap();
            Ok::<_, Infallible>(response)
        }));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        assert!(LoadReport::from_headers(response.headers()).is_none());
        let trailers = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap();
        assert!(trailers.contains_key(ENDPOINT_LOAD_METRICS_BIN));
        let report = LoadReport::from_headers(&trailers).unwrap().unwrap();
        assert_eq!(report.cpu_utilization, 0.75);
        assert!(report.rps_fractional > 0.0);
    }
}
