//! The server side: a tower layer that answers probes and counts requests in flight.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::estimator::{Arrival, LoadEstimator};
use super::wire::PROBE_PATH;

/// A tower [`Layer`] for HTTP servers (hyper, axum, tonic) that makes them Prequal servers.
///
/// - It counts the server's requests in flight (RIF) and the latency of each by the RIF it
///   found, in a [`LoadEstimator`] (see there for the latency estimate).
/// - It answers probes itself, without reaching the application: a `GET` or `HEAD` request
///   on the probe path ([`PROBE_PATH`], `/prequal/probe`, by default; [`path`](Self::path))
///   gets `200 OK`, an empty body (`B::default()`), and the headers `x-prequal-rif` and
///   `x-prequal-latency-us` (see [`wire`](super::wire)). Probes are not counted in the RIF.
/// - With [`report_on_responses`](Self::report_on_responses), it attaches the same two
///   headers to every other response, as they were when the response left.
///
/// A request counts in the RIF from the layer's `call` until its response future completes
/// (with a response or an error) or is dropped; a response whose body streams for long is
/// no longer counted while it streams. Latency samples are taken at completion only:
/// cancelled requests leave none.
///
/// **Where it sits.** Readiness passes through to the wrapped service, and a probe waits
/// for it like any request. Put the layer outside anything that holds requests back
/// (a concurrency limit, a load shed, a buffer): then probes are answered at once with
/// the RIF that includes the waiting requests, which is what clients should see. Inside
/// such a limit, a busy server's probes wait, may time out at the client, and count as
/// that server's failures.
///
/// ```no_run
/// use tower_lb::prequal::PrequalLayer;
///
/// let layer = PrequalLayer::new().report_on_responses(true);
/// let service = tower::ServiceBuilder::new().layer(layer.clone()).service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// // The layer's numbers, for logs or metrics.
/// println!("{} requests in flight", layer.estimator().rif());
/// # drop(service);
/// ```
#[derive(Clone)]
pub struct PrequalLayer {
    shared: Arc<Shared>,
}

struct Shared {
    estimator: Arc<LoadEstimator>,
    path: String,
    on_responses: bool,
}

impl Default for PrequalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PrequalLayer {
    /// A layer answering probes on `/prequal/probe`, without headers on other responses.
    pub fn new() -> Self {
        PrequalLayer {
            shared: Arc::new(Shared {
                estimator: Arc::new(LoadEstimator::new()),
                path: PROBE_PATH.to_owned(),
                on_responses: false,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            estimator: self.shared.estimator.clone(),
            path: self.shared.path.clone(),
            on_responses: self.shared.on_responses,
        };
        f(&mut shared);
        PrequalLayer {
            shared: Arc::new(shared),
        }
    }

    /// The path probes ask (default `/prequal/probe`). Requests on other paths go to the
    /// application.
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.with(|s| s.path = path)
    }

    /// Whether every response also carries the two headers (default `false`).
    pub fn report_on_responses(self, on: bool) -> Self {
        self.with(|s| s.on_responses = on)
    }

    /// Counts requests in this estimator (for example one shared with another layer, or
    /// one with a different sample age) instead of the layer's own.
    pub fn estimator_from(self, estimator: Arc<LoadEstimator>) -> Self {
        self.with(|s| s.estimator = estimator)
    }

    /// The layer's estimator: its RIF and latency estimate now.
    pub fn estimator(&self) -> &Arc<LoadEstimator> {
        &self.shared.estimator
    }
}

impl fmt::Debug for PrequalLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrequalLayer")
            .field("path", &self.shared.path)
            .field("report_on_responses", &self.shared.on_responses)
            .field("rif", &self.shared.estimator.rif())
            .finish()
    }
}

impl<S> Layer<S> for PrequalLayer {
    type Service = PrequalService<S>;

    fn layer(&self, inner: S) -> PrequalService<S> {
        PrequalService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of a [`PrequalLayer`].
#[derive(Clone)]
pub struct PrequalService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for PrequalService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrequalService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for PrequalService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = PrequalFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqB>) -> Self::Future {
        let is_probe = (request.method() == http::Method::GET
            || request.method() == http::Method::HEAD)
            && request.uri().path() == self.shared.path;
        if is_probe {
            let mut response = http::Response::new(());
            self.shared
                .estimator
                .answer()
                .write_headers(response.headers_mut());
            return PrequalFuture {
                state: State::Probe {
                    response: Some(response),
                },
            };
        }
        PrequalFuture {
            state: State::Call {
                inner: self.inner.call(request),
                arrival: Some(self.shared.estimator.arrive()),
                report: self.shared.on_responses,
            },
        }
    }
}

pin_project! {
    /// The response future of [`PrequalService`].
    pub struct PrequalFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // A probe, answered by the layer.
        Probe { response: Option<http::Response<()>> },
        // A request passed to the application, counted until it completes or is dropped.
        Call {
            #[pin]
            inner: F,
            arrival: Option<Arrival>,
            report: bool,
        },
    }
}

impl<F> fmt::Debug for PrequalFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrequalFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for PrequalFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Probe { response } => {
                let response = response
                    .take()
                    .expect("PrequalFuture polled after completion");
                Poll::Ready(Ok(response.map(|()| B::default())))
            }
            StateProj::Call {
                inner,
                arrival,
                report,
            } => {
                let result = ready!(inner.poll(cx));
                let Some(arrival) = arrival.take() else {
                    return Poll::Ready(result);
                };
                let estimator = arrival.estimator().clone();
                arrival.complete();
                Poll::Ready(result.map(|mut response| {
                    if *report {
                        estimator.answer().write_headers(response.headers_mut());
                    }
                    response
                }))
            }
        }
    }
}
