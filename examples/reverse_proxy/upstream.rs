//! One upstream as a tower service ([`Upstream`]): pooled HTTP/1.1 connections (the
//! keep-alive pool of each worker thread, `pool.rs`) or one multiplexed h2c connection per
//! worker thread, the connect and request timeouts (here, per upstream, so that the balancer
//! sees a timeout as the upstream's failure), and the errors that say whether a request was
//! sent ([`NotSent`] is safe to retry).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Body;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tower::Service;
use tower_lb::error::BoxError;
use tower_lb::http::key::PreviousEndpoints;

use super::config::{HostMode, Protocol};
use super::fast;
use super::pool::{Conn, PooledBody, Pools, ReturnToPool};
use super::server::WORKER;
use super::upload::Upload;

pub(super) struct PoolSettings {
    pub(super) workers: usize,
    pub(super) connect_timeout: Duration,
    /// From sending a request to its response head.
    pub(super) request_timeout: Duration,
    pub(super) protocol: Protocol,
    /// The idle HTTP/1.1 connections of every upstream, per worker.
    pub(super) idle: Pools,
}

/// What goes to an HTTP/1.1 upstream: the client's body, or none for a request kept for a
/// replay (see [`UpstreamInner::send_http1`]).
pub(super) type SendBody = Either<Upload, Empty<Bytes>>;

/// The service that sends requests to one upstream.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

pub(super) struct UpstreamInner {
    /// Its place in the config: its connections' key in the pool.
    pub(super) index: usize,
    addr: SocketAddr,
    authority: Authority,
    pub(super) host: Option<HeaderValue>,
    pub(super) settings: Arc<PoolSettings>,
    /// The h2c connection of each worker thread, shared by all its requests.
    h2: Vec<Mutex<Option<client2::SendRequest<Upload>>>>,
}

impl Upstream {
    pub(super) fn new(
        index: usize,
        addr: SocketAddr,
        host: HostMode,
        settings: Arc<PoolSettings>,
    ) -> Result<Self, BoxError> {
        let authority = Authority::try_from(addr.to_string())?;
        let host = match host {
            HostMode::Upstream => Some(HeaderValue::from_str(authority.as_str())?),
            HostMode::Pass => None,
        };
        let h2 = (0..settings.workers).map(|_| Mutex::default()).collect();
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                index,
                addr,
                authority,
                host,
                settings,
                h2,
            }),
        })
    }
}

/// The request did not leave the proxy (connecting failed, or the pooled connection closed
/// before it was written, or lost it before any answer): the request (`R`: hyper's, or the
/// fast path's) is handed back for a retry. The mutex makes it `Sync`, as `BoxError` must
/// be; the request is only ever moved.
pub struct NotSent<R> {
    request: Mutex<Option<R>>,
    cause: BoxError,
}

impl<R: Send + 'static> NotSent<R> {
    pub(super) fn boxed(request: R, cause: impl Into<BoxError>) -> BoxError {
        Box::new(NotSent {
            request: Mutex::new(Some(request)),
            cause: cause.into(),
        })
    }

    pub(super) fn take(self) -> (Option<R>, BoxError) {
        (self.request.into_inner().unwrap_or(None), self.cause)
    }
}

impl<R> fmt::Debug for NotSent<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotSent")
            .field("cause", &self.cause)
            .finish()
    }
}

impl<R> fmt::Display for NotSent<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request could not be sent")
    }
}

impl<R: Send + 'static> std::error::Error for NotSent<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

#[derive(Debug)]
pub(super) struct ConnectTimeout(SocketAddr);

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to {} timed out", self.0)
    }
}

impl std::error::Error for ConnectTimeout {}

/// The upstream sent no response head within the request timeout: its failure, which the
/// balancer counts (a timeout around the balancer would be a cancellation, which outlier
/// detection ignores, so a black-hole upstream would never be ejected).
#[derive(Debug)]
pub struct ResponseTimeout(SocketAddr, Duration);

impl fmt::Display for ResponseTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not answer within {:?}", self.0, self.1)
    }
}

impl std::error::Error for ResponseTimeout {}

/// A connection to an upstream could not be made. The I/O error stays the source, so that
/// the balancer sees a refused connection as proof that the upstream is unreachable.
#[derive(Debug)]
struct ConnectFailed(SocketAddr, std::io::Error);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to {}: {}", self.0, self.1)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

impl Service<Request<Upload>> for Upstream {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<PooledBody>, BoxError>>;

    /// Always ready: connections are made per request when the pool has none idle, and the
    /// balancer's health checks keep requests away from upstreams that are down.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Upload>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(request).await })
    }
}

impl Service<fast::FastRequest> for Upstream {
    type Response = Response<fast::FastBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<fast::FastBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: fast::FastRequest) -> Self::Future {
        Box::pin(self.inner.clone().send_fast(request))
    }
}

impl UpstreamInner {
    /// The error for a request that did not leave the proxy, or was lost before any
    /// answer: the request comes back to be tried again, marked as having been here, so
    /// that a hashing strategy passes over this upstream for the retry.
    fn not_sent(&self, mut request: Request<Upload>, cause: impl Into<BoxError>) -> BoxError {
        let extensions = request.extensions_mut();
        let mut previous = extensions.remove::<PreviousEndpoints>().unwrap_or_default();
        previous.0.push(self.addr.to_string());
        extensions.insert(previous);
        NotSent::boxed(request, cause)
    }

    pub(super) fn response_timeout(&self) -> BoxError {
        Box::new(ResponseTimeout(self.addr, self.settings.request_timeout))
    }

    /// This worker's h2c connection slot.
    fn h2(&self) -> &Mutex<Option<client2::SendRequest<Upload>>> {
        let worker = WORKER.with(|w| w.get());
        &self.h2[worker % self.h2.len()]
    }

    pub(super) async fn connect(&self) -> Result<TcpStream, BoxError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr))
            .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(error)) => Err(Box::new(ConnectFailed(self.addr, error))),
            Err(_) => Err(Box::new(ConnectTimeout(self.addr))),
        }
    }

    async fn send(
        self: Arc<Self>,
        mut request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        if let Some(host) = &self.host {
            request.headers_mut().insert(HOST, host.clone());
        }
        match self.settings.protocol {
            Protocol::Http1 => {
                // HTTP/1.1 upstreams get the origin form: the path and query.
                if request.uri().scheme().is_some() || request.uri().authority().is_some() {
                    let path = request
                        .uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/"));
                    *request.uri_mut() = Uri::from(path);
                }
                self.send_http1(request).await
            }
            Protocol::H2c => {
                let mut parts = std::mem::take(request.uri_mut()).into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(self.authority.clone());
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                *request.uri_mut() = Uri::from_parts(parts)?;
                *request.version_mut() = http::Version::HTTP_2;
                self.send_h2(request).await
            }
        }
    }

    /// A pooled connection to reuse, ready for a request within the connect timeout (one
    /// that is not may still be busy with an earlier exchange: it is closed).
    async fn take_idle(&self) -> Option<client1::SendRequest<SendBody>> {
        loop {
            let Conn::Hyper(mut sender) = self.settings.idle.take(self.index, false)? else {
                continue;
            };
            if sender.is_closed() {
                continue;
            }
            match tokio::time::timeout(self.settings.connect_timeout, sender.ready()).await {
                Ok(Ok(())) => return Some(sender),
                _ => continue, // closed while idle, or stuck: take another
            }
        }
    }

    async fn send_http1(
        self: Arc<Self>,
        mut request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(sender) => (sender, true),
                None => {
                    let stream = match self.connect().await {
                        Ok(stream) => stream,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                    let (sender, connection) = match client1::handshake(TokioIo::new(stream)).await
                    {
                        Ok(handshake) => handshake,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    (sender, false)
                }
            };
            if !reused && sender.ready().await.is_err() {
                return Err(self.not_sent(request, "the new connection closed at once"));
            }
            // An idempotent request without a body, sent on a reused connection, is kept (its
            // head copied, its empty body set aside): if the upstream resets or closes the
            // connection before any answer (it died, or closed the idle connection just as it
            // was taken), it goes back to the balancer for another try, as nginx's
            // `proxy_next_upstream error` does. Other requests cannot be replayed once sent.
            let written = request.body().written();
            let (outgoing, kept) =
                if reused && request.method().is_idempotent() && request.body().is_end_stream() {
                    let mut copy = Request::new(Either::Right(Empty::new()));
                    *copy.method_mut() = request.method().clone();
                    *copy.uri_mut() = request.uri().clone();
                    *copy.version_mut() = request.version();
                    *copy.headers_mut() = request.headers().clone();
                    (copy, Some(request))
                } else {
                    (request.map(Either::Left), None)
                };
            let sent = sender.try_send_request(outgoing);
            let Ok(sent) = tokio::time::timeout(self.settings.request_timeout, sent).await else {
                return Err(self.response_timeout());
            };
            match sent {
                Ok(response) => {
                    let back = ReturnToPool::new(sender, self.clone(), written);
                    return Ok(response.map(|body| PooledBody::new(body, Some(back))));
                }
                Err(mut error) => {
                    let returned = error.take_message();
                    let unsent = returned.is_some();
                    let back = returned.and_then(|back| {
                        let (parts, body) = back.into_parts();
                        match body {
                            Either::Left(body) => Some(Request::from_parts(parts, body)),
                            Either::Right(_) => None, // the copy; the original is kept
                        }
                    });
                    match back.or(kept) {
                        // A pooled connection the upstream had closed, and the request was
                        // not written: try another connection.
                        Some(again) if unsent && reused => request = again,
                        // Not written, or a kept request the connection lost unanswered.
                        Some(again) if unsent || lost(error.error()) => {
                            return Err(self.not_sent(again, error.into_error()))
                        }
                        _ => return Err(error.into_error().into()),
                    }
                }
            }
        }
    }

    async fn send_h2(
        self: Arc<Self>,
        request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let existing = self.h2().lock().unwrap().clone().filter(|s| !s.is_closed());
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let stream = match self.connect().await {
                    Ok(stream) => stream,
                    Err(error) => return Err(self.not_sent(request, error)),
                };
                let (sender, connection) =
                    match client2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await {
                        Ok(handshake) => handshake,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                *self.h2().lock().unwrap() = Some(sender.clone());
                sender
            }
        };
        // A stream on the shared connection, within the connect timeout (the connection
        // may have no room for one).
        match tokio::time::timeout(self.settings.connect_timeout, sender.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(self.not_sent(request, error)),
            Err(_) => return Err(self.not_sent(request, ConnectTimeout(self.addr))),
        }
        let sent = sender.try_send_request(request);
        let Ok(sent) = tokio::time::timeout(self.settings.request_timeout, sent).await else {
            return Err(self.response_timeout());
        };
        match sent {
            Ok(response) => Ok(response.map(|body| PooledBody::new(body, None))),
            Err(mut error) => match error.take_message() {
                Some(back) => Err(self.not_sent(back, error.into_error())),
                None => Err(error.into_error().into()),
            },
        }
    }
}

/// Whether a connection failed by being closed or reset (before any answer, when the
/// request future fails), rather than by a malformed answer or a timeout.
fn lost(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return is_connection_loss(io.kind());
        }
        source = cause.source();
    }
    false
}

/// The I/O errors of a connection the other side closed or reset.
pub(super) fn is_connection_loss(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}
