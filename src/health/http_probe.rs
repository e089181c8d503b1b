//! The HTTP probe, [`HttpProbe`] (feature `http`; re-exported as `health::HttpProbe`, where its
//! docs are).

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::pin::{pin, Pin};
use std::str::FromStr;
use std::time::Duration;

use bytes::Buf;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::probe::{Probe, ProbeFailure, ProbeTarget};
use crate::error::{BoxError, BuildError};

/// The default [`HttpProbe::timeout`]: 1 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default [`HttpProbe::body_limit`]: 16 KiB.
const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// Healthy when an HTTP request sent through the transport `T` answers with an accepted
/// status, within the timeout and the body limit.
///
/// It sends its request through any `tower::Service<http::Request<B>>`: a
/// hyper-util client, a tonic channel's HTTP stack, your own TLS-enabled client, or a mock in
/// tests. It brings no HTTP client of its own, so it adds no dependency and uses the same
/// connection settings (TLS, proxies, pools) as your traffic.
///
/// `B` is the transport's request body type (for example `http_body_util::Empty<Bytes>` or
/// `Full<Bytes>`); the request's body is `B::default()`. It is usually inferred from the
/// transport where the probe is used.
///
/// # The request
///
/// `{method} http://{name}{path}`, where `name` is the endpoint's
/// [name](super::ProbeTarget::name) (`ip:port` for `SocketAddr` keys). The URI is in absolute
/// form, which hyper-util's legacy client needs to know where to connect; a transport bound
/// to one endpoint can ignore the authority. The request carries a `Host` header (the name, or
/// the value set with [`host`](HttpProbe::host)) and an empty body, `B::default()`.
///
/// # Settings and defaults
///
/// | setting | default | why |
/// |---|---|---|
/// | [`method`](HttpProbe::method) | `GET` | what health endpoints answer |
/// | [`path`](HttpProbe::path) | `/` | |
/// | [`host`](HttpProbe::host) | the endpoint's name (`ip:port` for `SocketAddr` keys) | the endpoint's own authority, as a client would send it |
/// | [`accept_status`](HttpProbe::accept_status) | `200..=399` | HAProxy's rule (2xx and 3xx pass): redirects are not followed, and a server that redirects is up. Envoy accepts only 200; set `200..=200` for that |
/// | [`timeout`](HttpProbe::timeout) | 1 s | the whole check, from the transport's readiness to the body's end |
/// | [`body_limit`](HttpProbe::body_limit) | 16 KiB | room for verbose JSON health documents; bounds the time spent reading |
///
/// The setters take any value; [`Probe::validate`] checks them (a path that is not
/// `/path?query`, a `Host` that is not an authority, a zero timeout, an empty or
/// out-of-range status range), so that the balancer's `build` fails with
/// [`BuildError::InvalidConfig`], as for every other setting.
///
/// # What it checks, in order
///
/// 1. The transport becomes ready and answers. Its errors become [`ProbeFailure::Connect`]
///    when their [source chain](std::error::Error::source) holds an [`io::Error`] of a
///    connection kind (refused, reset, aborted, unreachable, ...), and
///    [`ProbeFailure::Transport`] otherwise: an answer that is not HTTP at all is a transport
///    error of the client that tried to parse it.
/// 2. The status is in the accepted range, or the probe fails with [`ProbeFailure::Status`].
///    Redirects are never followed: a 3xx is judged by its status alone. A rejected status
///    fails the probe without reading the body.
/// 3. The body ends within the limit. The body is read frame by frame and discarded; it fails
///    with [`ProbeFailure::BodyTooLarge`] as soon as it passes the limit (or at once when its
///    announced length, such as `Content-Length`, is over it), without reading the rest.
///    Reading a small body to its end lets a pooling client reuse the connection. A body that
///    fails to read fails the probe like the transport does (step 1).
///
/// All of it must finish within the timeout, or the probe fails with
/// [`ProbeFailure::Timeout`]. A request that cannot be built from the key (a key that is not
/// a valid URI authority) fails with [`ProbeFailure::Transport`] holding the `http::Error`
/// (and one of a probe whose settings are invalid, with the [`BuildError`]).
///
/// The transport is cloned for each probe (`poll_ready`, then `call`), as the balancer does
/// for requests; hyper-util clients are cheap handles. The probe must run inside a tokio
/// runtime with its time driver enabled (the balancer's background task is one).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_lb::health::{HttpProbe, Probe, ProbeTarget};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
/// let probe = HttpProbe::new(client)
///     .method(http::Method::HEAD)
///     .path("/healthz")
///     .host("api.internal")
///     .accept_status(200..300)
///     .timeout(Duration::from_millis(500));
/// probe.validate()?; // the balancer checks it when it is built
///
/// // Probes run inside the balancer; called by hand, they take the endpoint's name.
/// let endpoint = ProbeTarget::new("10.0.0.7:8080");
/// match probe.probe(&endpoint).await {
///     Ok(()) => println!("{} is healthy", endpoint.name()),
///     Err(why) => println!("{} is unhealthy: {why}", endpoint.name()),
/// }
/// # Ok(()) }
/// ```
///
/// # Invalid settings are errors, not panics
///
/// ```
/// use std::time::Duration;
/// use tower_lb::error::BuildError;
/// use tower_lb::health::{HttpProbe, Probe};
///
/// let client = tower::service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::io::Error>(http::Response::new(String::new()))
/// });
/// let probe = HttpProbe::new(client)
///     .path("/healthz")
///     .accept_status(200..=200); // Envoy's rule: only 200 passes
/// assert!(probe.validate().is_ok());
///
/// // Invalid settings are errors when the balancer is built (or `validate` is called).
/// let field = |p: &dyn Fn() -> Result<(), BuildError>| match p() {
///     Err(BuildError::InvalidConfig(invalid)) => invalid.field(),
///     _ => "accepted",
/// };
/// assert_eq!(field(&|| probe.clone().path("healthz").validate()), "HttpProbe::path");
/// assert_eq!(field(&|| probe.clone().timeout(Duration::ZERO).validate()), "HttpProbe::timeout");
/// assert_eq!(field(&|| probe.clone().accept_status(300..200).validate()), "HttpProbe::accept_status");
/// assert_eq!(field(&|| probe.clone().host("not a host").validate()), "HttpProbe::host");
/// ```
pub struct HttpProbe<T, B> {
    transport: T,
    method: Method,
    /// The settings that are parsed are kept as parsed, or as the error that
    /// [`Probe::validate`] reports.
    path: Result<PathAndQuery, BuildError>,
    host: Option<Result<HeaderValue, BuildError>>,
    accept: Result<(u16, u16), BuildError>,
    timeout: Duration,
    body_limit: usize,
    _body: PhantomData<fn() -> B>,
}

impl<T, B> HttpProbe<T, B> {
    /// A probe that sends `GET /` through `transport`, accepts statuses 200 to 399, waits up
    /// to 1 s and reads up to 16 KiB of body.
    pub fn new(transport: T) -> Self {
        HttpProbe {
            transport,
            method: Method::GET,
            path: Ok(PathAndQuery::from_static("/")),
            host: None,
            accept: Ok((200, 399)),
            timeout: DEFAULT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            _body: PhantomData,
        }
    }

    /// The request method (default `GET`). With `HEAD` the answer has no body to read.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// The request's path and query (default `/`), such as `/healthz` or `/status?full=1`.
    /// Must start with `/` and be a valid path and query (no spaces, no fragment).
    pub fn path(mut self, path: &str) -> Self {
        self.path = parse_path(path);
        self
    }

    /// Sends `host` as the `Host` header of every probe, instead of the endpoint's name.
    /// Must be an authority (`host` or `host:port`, without user information).
    ///
    /// For virtual hosts: the endpoint is reached at its own address, and the server picks
    /// the site by this name.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(parse_host(host));
        self
    }

    /// The statuses that pass (default `200..=399`). Any range of `u16` works:
    /// `200..300`, `200..=200`, `200..`. Must not be empty, and must lie within the valid
    /// statuses, 100 to 999.
    ///
    /// An unbounded start means 100, an unbounded end 999.
    pub fn accept_status(mut self, statuses: impl RangeBounds<u16>) -> Self {
        self.accept = status_range(statuses);
        self
    }

    /// The whole check (readiness, answer, body) must finish within `timeout` (default
    /// 1 s), or the probe fails with [`ProbeFailure::Timeout`]. Must be greater than zero
    /// (every probe would fail).
    ///
    /// The balancer also bounds every probe with its own timeout; the shorter one applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most body bytes the probe reads (default 16 KiB); a longer body fails the probe
    /// with [`ProbeFailure::BodyTooLarge`]. `0` requires an empty body.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The transport the probe sends through.
    pub fn transport(&self) -> &T {
        &self.transport
    }
}

impl<T: Clone, B> Clone for HttpProbe<T, B> {
    fn clone(&self) -> Self {
        HttpProbe {
            transport: self.transport.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            accept: self.accept.clone(),
            timeout: self.timeout,
            body_limit: self.body_limit,
            _body: PhantomData,
        }
    }
}

impl<T: fmt::Debug, B> fmt::Debug for HttpProbe<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("transport", &self.transport)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("accept", &self.accept.as_ref().map(|a| a.0..=a.1))
            .field("timeout", &self.timeout)
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl<T, B, RB> Probe for HttpProbe<T, B>
where
    T: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send + 'static,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Future = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send + 'static>>;

    /// A probe whose settings are invalid fails with [`ProbeFailure::Transport`] holding
    /// the [`BuildError`]; the balancer checks them before it probes.
    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        let request = self.request(target.name());
        let mut transport = self.transport.clone();
        let timeout = self.timeout;
        let limit = self.body_limit;
        let accept = self.accept.clone();
        Box::pin(async move {
            let check = async move {
                let request = request.map_err(ProbeFailure::Transport)?;
                let accept = accept.map_err(|e| ProbeFailure::Transport(e.into()))?;
                poll_fn(|cx| transport.poll_ready(cx))
                    .await
                    .map_err(transport_failure)?;
                let response = transport.call(request).await.map_err(transport_failure)?;
                let status = response.status();
                if !(accept.0..=accept.1).contains(&status.as_u16()) {
                    return Err(ProbeFailure::Status(status));
                }
                read_body(response.into_body(), limit).await
            };
            match tokio::time::timeout(timeout, check).await {
                Ok(result) => result,
                Err(_) => Err(ProbeFailure::Timeout(timeout)),
            }
        })
    }

    fn validate(&self) -> Result<(), BuildError> {
        self.path.as_ref().map_err(Clone::clone)?;
        if let Some(host) = &self.host {
            host.as_ref().map_err(Clone::clone)?;
        }
        self.accept.as_ref().map_err(Clone::clone)?;
        BuildError::reject_if(
            self.timeout.is_zero(),
            "HttpProbe::timeout",
            self.timeout,
            "greater than zero",
        )?;
        Ok(())
    }
}

/// `path` as a request's path and query.
fn parse_path(path: &str) -> Result<PathAndQuery, BuildError> {
    let invalid = || {
        BuildError::invalid(
            "HttpProbe::path",
            path,
            "a path and query starting with `/`",
        )
    };
    if !path.starts_with('/') || path.contains('#') {
        return Err(invalid());
    }
    PathAndQuery::from_str(path).map_err(|_| invalid())
}

/// `host` as a `Host` header: `host` or `host:port`.
fn parse_host(host: &str) -> Result<HeaderValue, BuildError> {
    let invalid = || BuildError::invalid("HttpProbe::host", host, "`host` or `host:port`");
    let authority = Authority::from_str(host).map_err(|_| invalid())?;
    // `Authority` accepts user information and leaves the port unchecked.
    let port = &host[authority.host().len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok());
    if authority.host().is_empty() || host.contains('@') || !port_ok {
        return Err(invalid());
    }
    HeaderValue::from_str(host).map_err(|_| invalid())
}

/// `statuses` as the lowest and highest accepted status.
fn status_range(statuses: impl RangeBounds<u16>) -> Result<(u16, u16), BuildError> {
    let low = match statuses.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(100),
    };
    let high = match statuses.end_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_sub(1),
        Bound::Unbounded => Some(999),
    };
    match (low, high) {
        (Some(low), Some(high)) if 100 <= low && low <= high && high <= 999 => Ok((low, high)),
        _ => Err(BuildError::invalid(
            "HttpProbe::accept_status",
            (
                statuses.start_bound().cloned(),
                statuses.end_bound().cloned(),
            ),
            "a non-empty range within 100..=999",
        )),
    }
}

impl<T, B: Default> HttpProbe<T, B> {
    /// The probe's request to the endpoint whose key formats as `authority`.
    fn request(&self, authority: &str) -> Result<Request<B>, BoxError> {
        let path = self.path.as_ref().map_err(Clone::clone)?;
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(format!("http://{authority}{path}"));
        builder = match &self.host {
            Some(host) => builder.header(HOST, host.as_ref().map_err(Clone::clone)?.clone()),
            None => builder.header(HOST, authority),
        };
        Ok(builder.body(B::default())?)
    }
}

/// Reads `body` to its end and discards it; fails as soon as it is longer than `limit`.
async fn read_body<RB>(body: RB, limit: usize) -> Result<(), ProbeFailure>
where
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let too_large = ProbeFailure::BodyTooLarge { limit };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large);
    }
    let mut body = pin!(body);
    let mut read = 0usize;
    while !body.is_end_stream() {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.remaining());
                    if read > limit {
                        return Err(too_large);
                    }
                }
            }
            Some(Err(e)) => return Err(transport_failure(e)),
        }
    }
    Ok(())
}

/// [`ProbeFailure::Connect`] when `error`'s source chain holds an [`io::Error`] of a
/// connection kind, [`ProbeFailure::Transport`] otherwise.
fn transport_failure(error: impl Into<BoxError>) -> ProbeFailure {
    let error = error.into();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if is_connection_error(io.kind()) {
                let kind = io.kind();
                let message = io.to_string();
                return ProbeFailure::Connect(io::Error::new(
                    kind,
                    ConnectionError {
                        message,
                        source: error,
                    },
                ));
            }
        }
        next = e.source();
    }
    ProbeFailure::Transport(error)
}

fn is_connection_error(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | AddrNotAvailable
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// A transport error that is a connection failure: displays as the [`io::Error`] found in
/// the chain (such as "Connection refused"), and keeps the whole transport error as its
/// source.
#[derive(Debug)]
struct ConnectionError {
    message: String,
    source: BoxError,
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
