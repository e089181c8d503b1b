//! [`HttpEndpoint`]: the endpoint service for HTTP clients. It sends each request through
//! a shared client to one endpoint's address, and says which endpoint answered.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;

/// The service for one HTTP endpoint: it points each request at the endpoint (its scheme
/// and authority), keeps the request's path and query, and sends it through a client
/// shared by every endpoint.
///
/// The client is any `Service<http::Request<B>>` that answers with `http::Response`: a
/// hyper-util legacy `Client` (one keep-alive pool for all endpoints), a
/// `BoxCloneSyncService`, a tower stack. Cloning an `HttpEndpoint` clones the client, as the
/// balancer does for each request; hyper-util's client is a cheap handle.
///
/// Each response carries the endpoint in its extensions, as [`ServedBy`], and each error is
/// an [`EndpointError`] naming it: for logs, and for retries that should go elsewhere (see
/// [`PreviousEndpoints::add`](super::key::PreviousEndpoints::add)).
///
/// The `Host` header is left as the request has it; hyper-util's client sets it from the
/// URI (the endpoint's authority) when the request has none.
///
/// ```no_run
/// use std::net::SocketAddr;
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use tower::{Service, ServiceExt};
/// use tower_lb::http::{HttpEndpoint, ServedBy};
/// use tower_lb::{discover, Balance};
///
/// /// The balancer's whole type, nameable in a struct field.
/// type Upstreams = Balance<SocketAddr, HttpEndpoint<Client<HttpConnector, Empty<Bytes>>>>;
///
/// # #[tokio::main] async fn main() -> Result<(), tower_lb::error::BoxError> {
/// let client = Client::builder(TokioExecutor::new()).build_http();
/// let addrs: [SocketAddr; 2] = ["10.0.0.1:8080".parse()?, "10.0.0.2:8080".parse()?];
/// let mut upstreams: Upstreams = Balance::builder().build_with(
///     discover::static_list(addrs.map(|addr| (addr, ()))),
///     HttpEndpoint::factory(client),
/// )?;
/// let request = http::Request::get("/search?q=rust").body(Empty::new())?;
/// let response = upstreams.ready().await?.call(request).await?;
/// let served_by = response.extensions().get::<ServedBy>().unwrap();
/// println!("{} answered {}", served_by.name(), response.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpEndpoint<C> {
    client: C,
    scheme: Scheme,
    authority: Authority,
    served_by: ServedBy,
}

impl<C> HttpEndpoint<C> {
    /// Sends requests through `client` to `http://{authority}`, keeping their path and
    /// query. The endpoint's name (in [`ServedBy`]) is the authority.
    pub fn new(client: C, authority: Authority) -> Self {
        let served_by = ServedBy(authority.as_str().into());
        HttpEndpoint {
            client,
            scheme: Scheme::HTTP,
            authority,
            served_by,
        }
    }

    /// Sends requests through `client` to `http://{addr}`: the endpoint of a `SocketAddr`
    /// key, named as the balancer names it (`10.0.0.1:8080`, `[::1]:8080`).
    pub fn from_addr(client: C, addr: SocketAddr) -> Self {
        // A socket address always makes a valid authority.
        let authority = Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0"));
        HttpEndpoint::new(client, authority)
    }

    /// A factory for [`Builder::build_with`](crate::Builder::build_with) and
    /// [`BalanceLayer`](crate::BalanceLayer): each discovered address becomes an
    /// `HttpEndpoint` over a clone of `client` (one shared connection pool).
    pub fn factory(client: C) -> impl FnMut(&SocketAddr) -> HttpEndpoint<C> + Clone
    where
        C: Clone,
    {
        move |addr: &SocketAddr| HttpEndpoint::from_addr(client.clone(), *addr)
    }

    /// Uses `scheme` (`https`, say) instead of `http`.
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Names the endpoint `name` in [`ServedBy`] and [`EndpointError`], instead of its
    /// authority: the balancer's name for it ([`Metadata::name`](crate::Metadata::name)
    /// when discovery sets one), so that [`PreviousEndpoints`](super::key::PreviousEndpoints)
    /// passes over it.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.served_by = ServedBy(name.into());
        self
    }

    /// The endpoint's authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The client requests go through.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// The request's URI, pointed at this endpoint: its scheme and authority, the
    /// request's path and query (`/` when it has none, or has the `*` of `OPTIONS *`, which
    /// an absolute URI cannot carry).
    fn target(&self, uri: Uri) -> Result<Uri, http::Error> {
        let mut parts = uri.into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if !parts
            .path_and_query
            .as_ref()
            .is_some_and(|p| p.as_str().starts_with('/'))
        {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        Ok(Uri::from_parts(parts)?)
    }
}

impl<C, B, RB> Service<Request<B>> for HttpEndpoint<C>
where
    C: Service<Request<B>, Response = Response<RB>>,
    C::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client
            .poll_ready(cx)
            .map_err(|e| self.served_by.error(e.into()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let served_by = self.served_by.clone();
        match self.target(std::mem::take(request.uri_mut())) {
            Ok(uri) => {
                *request.uri_mut() = uri;
                ResponseFuture {
                    state: State::Called {
                        future: self.client.call(request),
                    },
                    served_by,
                }
            }
            Err(error) => ResponseFuture {
                state: State::Failed {
                    error: Some(error.into()),
                },
                served_by,
            },
        }
    }
}

impl<C> fmt::Debug for HttpEndpoint<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("name", &self.served_by.name())
            .finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`HttpEndpoint`]: the client's, with the endpoint put in the
    /// response's extensions ([`ServedBy`]) or in the error ([`EndpointError`]).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        served_by: ServedBy,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            StateProj::Called { future } => ready!(future.poll(cx)).map_err(Into::into),
            StateProj::Failed { error } => Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into())),
        };
        Poll::Ready(match result {
            Ok(mut response) => {
                response.extensions_mut().insert(this.served_by.clone());
                Ok(response)
            }
            Err(error) => Err(this.served_by.error(error)),
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("served_by", &self.served_by)
            .finish_non_exhaustive()
    }
}

/// Which endpoint served a response: a response extension that [`HttpEndpoint`] inserts.
///
/// Its [`name`](ServedBy::name) is the endpoint's name as the balancer gives it (the
/// authority of an endpoint made from a `SocketAddr`, `10.0.0.1:8080`), for logs and for
/// [`PreviousEndpoints`](super::key::PreviousEndpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy(Arc<str>);

impl ServedBy {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The endpoint that answered `result`: the response's [`ServedBy`], or the
    /// [`EndpointError`]'s. `None` for a response or an error that no [`HttpEndpoint`]
    /// produced (the balancer's own [`Unavailable`](crate::error::Unavailable), say).
    pub fn of<RB>(result: &Result<Response<RB>, BoxError>) -> Option<&ServedBy> {
        match result {
            Ok(response) => response.extensions().get::<ServedBy>(),
            Err(error) => error.downcast_ref::<EndpointError>().map(|e| &e.served_by),
        }
    }

    fn error(&self, source: BoxError) -> BoxError {
        Box::new(EndpointError {
            served_by: self.clone(),
            source,
        })
    }
}

impl fmt::Display for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error of the client of an [`HttpEndpoint`], with the endpoint it was sending to.
///
/// The client's own error is the [`source`](Error::source) (and
/// [`into_source`](EndpointError::into_source)), so the balancer still sees a refused
/// connection through it.
#[derive(Debug)]
pub struct EndpointError {
    served_by: ServedBy,
    source: BoxError,
}

impl EndpointError {
    /// The endpoint the request was sent to.
    pub fn served_by(&self) -> &ServedBy {
        &self.served_by
    }

    /// The client's error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint {}: {}", self.served_by, self.source)
    }
}

impl Error for EndpointError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A client that answers with the URI it was sent to.
    fn echo_uri(
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(request.uri().to_string()))
        })
    }

    async fn send<S: Service<Request<()>>>(
        mut service: S,
        uri: &str,
    ) -> Result<S::Response, S::Error> {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(Request::get(uri).body(()).unwrap()).await
    }

    #[tokio::test]
    async fn requests_keep_their_path_and_query_and_take_the_endpoints_authority() {
        let endpoint = HttpEndpoint::from_addr(echo_uri(), "10.0.0.1:8080".parse().unwrap());
        for (sent, received) in [
            (
                "/search?q=a%20b&x=1",
                "http://10.0.0.1:8080/search?q=a%20b&x=1",
            ),
            ("/", "http://10.0.0.1:8080/"),
            ("*", "http://10.0.0.1:8080/"),
            (
                "https://elsewhere.example:9/p?q",
                "http://10.0.0.1:8080/p?q",
            ),
            ("http://elsewhere.example", "http://10.0.0.1:8080/"),
        ] {
            let response = send(endpoint.clone(), sent).await.unwrap();
            assert_eq!(response.body(), received, "{sent}");
            let served_by = response.extensions().get::<ServedBy>().unwrap();
            assert_eq!(served_by.name(), "10.0.0.1:8080");
        }
        let https = endpoint.scheme(Scheme::HTTPS).name("api-1");
        let response = send(https, "/x").await.unwrap();
        assert_eq!(response.body(), "https://10.0.0.1:8080/x");
        assert_eq!(
            response.extensions().get::<ServedBy>().unwrap().name(),
            "api-1"
        );
    }

    #[tokio::test]
    async fn errors_name_the_endpoint_and_keep_their_source() {
        let refused = tower::service_fn(|_: Request<()>| async {
            Err::<Response<()>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        });
        let endpoint = HttpEndpoint::from_addr(refused, "[::1]:81".parse().unwrap());
        let result = send(endpoint, "/").await;
        assert_eq!(ServedBy::of(&result).unwrap().name(), "[::1]:81");
        let error = result.unwrap_err();
        assert_eq!(error.to_string(), "endpoint [::1]:81: connection refused");
        assert!(crate::health::unreachable::is_unreachable(&*error));
    }
}
