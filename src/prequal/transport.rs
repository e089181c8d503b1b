//! How a client asks an endpoint for its load: the [`ProbeTransport`] trait, an HTTP
//! transport, and one for any `tower::Service`.

use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;

use http::header::HOST;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::wire::{AnswerError, ProbeAnswer, PROBE_PATH};
use crate::error::{BoxError, BuildError};
use crate::health::http_probe::{read_body, transport_failure};
use crate::health::{ProbeFailure, ProbeTarget};

/// The most bytes of a probe answer's body read (and discarded, so that a pooling client can
/// reuse the connection): 1 KiB. Answers have empty bodies.
const BODY_LIMIT: usize = 1024;

/// Asks one endpoint for its requests in flight and latency.
///
/// The [`Prequal`](super::Prequal) strategy calls it from its probe task, never on a
/// request's path, and applies its own timeout around each probe.
///
/// ```
/// use std::future::{ready, Ready};
/// use tower_lb::health::ProbeTarget;
/// use tower_lb::prequal::{ProbeAnswer, ProbeError, ProbeTransport};
///
/// /// Every endpoint idle (a stand-in for a real transport).
/// struct AllIdle;
///
/// impl ProbeTransport for AllIdle {
///     type Future = Ready<Result<ProbeAnswer, ProbeError>>;
///
///     fn probe(&self, _target: &ProbeTarget) -> Self::Future {
///         ready(Ok(ProbeAnswer { rif: 0, latency_us: 0 }))
///     }
/// }
/// ```
pub trait ProbeTransport: Send + Sync + 'static {
    /// The probe in progress.
    type Future: Future<Output = Result<ProbeAnswer, ProbeError>> + Send + 'static;

    /// Starts a probe of `target`.
    fn probe(&self, target: &ProbeTarget) -> Self::Future;
}

/// Why a probe brought no answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeError {
    /// The probe failed: no answer in time, no connection, a transport error, or a status
    /// other than 2xx.
    Failed(ProbeFailure),
    /// The endpoint answered, but not with a readable answer (a server that does not speak
    /// Prequal, or a broken one).
    Answer(AnswerError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Failed(e) => e.fmt(f),
            ProbeError::Answer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeError::Failed(e) => Some(e),
            ProbeError::Answer(e) => Some(e),
        }
    }
}

impl From<AnswerError> for ProbeError {
    fn from(e: AnswerError) -> Self {
        ProbeError::Answer(e)
    }
}

impl From<ProbeFailure> for ProbeError {
    fn from(e: ProbeFailure) -> Self {
        ProbeError::Failed(e)
    }
}

/// Probes over HTTP: `GET http://{name}{path}` through any `tower::Service<http::Request<B>>`
/// (a hyper-util client, your own TLS client), read from the answer's `x-prequal-rif` and
/// `x-prequal-latency-us` headers.
///
/// As [`HttpProbe`](crate::health::HttpProbe), it brings no HTTP client of its own: the
/// transport is cloned for each probe, and the request carries the endpoint's
/// [name](ProbeTarget::name) (`ip:port` for `SocketAddr` keys) in its URI and `Host` header,
/// and an empty body, `B::default()`.
///
/// The answer must have a 2xx status ([`ProbeFailure::Status`] otherwise) and both headers
/// ([`ProbeError::Answer`] otherwise); its body is read up to 1 KiB and discarded.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_lb::prequal::{HttpTransport, Prequal};
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
/// let prequal = Prequal::new(HttpTransport::new(client));
/// # drop(prequal);
/// ```
pub struct HttpTransport<T, B> {
    transport: T,
    path: String,
    _body: PhantomData<fn() -> B>,
}

impl<T: Clone, B> Clone for HttpTransport<T, B> {
    fn clone(&self) -> Self {
        HttpTransport {
            transport: self.transport.clone(),
            path: self.path.clone(),
            _body: PhantomData,
        }
    }
}

impl<T: fmt::Debug, B> fmt::Debug for HttpTransport<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("transport", &self.transport)
            .field("path", &self.path)
            .finish()
    }
}

impl<T, B> HttpTransport<T, B> {
    /// Probes `/prequal/probe` through `transport`.
    pub fn new(transport: T) -> Self {
        HttpTransport {
            transport,
            path: PROBE_PATH.to_owned(),
            _body: PhantomData,
        }
    }

    /// Probes this path instead (`/path`, with an optional `?query`); anything else is
    /// [`BuildError::InvalidConfig`].
    pub fn path(mut self, path: &str) -> Result<Self, BuildError> {
        match path.parse::<http::uri::PathAndQuery>() {
            Ok(_) if path.starts_with('/') => {
                self.path = path.to_owned();
                Ok(self)
            }
            _ => Err(BuildError::invalid(
                "HttpTransport::path",
                path,
                "an absolute path such as /prequal/probe",
            )),
        }
    }
}

impl<T, B, RB> ProbeTransport for HttpTransport<T, B>
where
    T: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send + 'static,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Future = Pin<Box<dyn Future<Output = Result<ProbeAnswer, ProbeError>> + Send + 'static>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        let request = Request::get(format!("http://{}{}", target.name(), self.path))
            .header(HOST, target.name())
            .body(B::default());
        let mut transport = self.transport.clone();
        Box::pin(async move {
            let request = request.map_err(|e| ProbeFailure::Transport(e.into()))?;
            poll_fn(|cx| transport.poll_ready(cx))
                .await
                .map_err(transport_failure)?;
            let response = transport.call(request).await.map_err(transport_failure)?;
            if !response.status().is_success() {
                return Err(ProbeFailure::Status(response.status()).into());
            }
            let answer = ProbeAnswer::from_headers(response.headers())?;
            read_body(response.into_body(), BODY_LIMIT).await?;
            Ok(answer)
        })
    }
}

/// Probes through any `tower::Service` that takes a [`ProbeTarget`] and answers with a
/// [`ProbeAnswer`]: a gRPC client, a custom protocol, or a simulated backend.
///
/// The service is cloned for each probe; its errors become [`ProbeFailure::Transport`] (or
/// [`ProbeFailure::Connect`] when they hold a connection error).
///
/// ```
/// use tower_lb::health::ProbeTarget;
/// use tower_lb::prequal::{Prequal, ProbeAnswer, ServiceTransport};
///
/// let answers = tower::service_fn(|target: ProbeTarget| async move {
///     let rif = target.name().len() as u64; // a stand-in for asking the endpoint
///     Ok::<_, std::io::Error>(ProbeAnswer { rif, latency_us: 1000 })
/// });
/// let prequal = Prequal::new(ServiceTransport::new(answers));
/// # drop(prequal);
/// ```
#[derive(Debug, Clone)]
pub struct ServiceTransport<S> {
    service: S,
}

impl<S> ServiceTransport<S> {
    /// Probes through `service`.
    pub fn new(service: S) -> Self {
        ServiceTransport { service }
    }
}

impl<S> ProbeTransport for ServiceTransport<S>
where
    S: Service<ProbeTarget, Response = ProbeAnswer> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<ProbeAnswer, ProbeError>> + Send + 'static>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        let mut service = self.service.clone();
        let target = target.clone();
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(transport_failure)?;
            Ok(service.call(target).await.map_err(transport_failure)?)
        })
    }
}
