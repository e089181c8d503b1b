//! Demo upstreams ([`spawn_demo_upstream`]): small fast servers (HTTP/1.1 and h2c) that
//! answer every request with their own address, for the demo, the self-test, benchmarks and
//! tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower_lb::error::BoxError;

/// A running demo upstream; dropping it (or [`DemoUpstream::stop`]) closes its listener and
/// every connection at once, like a crashed process.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DemoUpstream {
    pub fn stop(self) {}
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The upstream that answered, from the demo upstreams' `x-upstream` header ("" if none).
pub fn answered_by<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Starts a demo upstream on `addr` (HTTP/1.1 and h2c on the same port). It answers every
/// request with its own address, in the body and in an `x-upstream` header, and says what
/// it received so that forwarded headers and streamed bodies can be checked with curl.
pub async fn spawn_demo_upstream(addr: SocketAddr) -> Result<DemoUpstream, BoxError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let x_upstream = HeaderValue::try_from(addr.to_string()).expect("an address");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let x_upstream = x_upstream.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| demo_upstream(x_upstream.clone(), request));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(DemoUpstream { addr, task })
}

async fn demo_upstream(
    x_upstream: HeaderValue,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
    };
    let received = match count_body_bytes(body).await {
        Ok(bytes) => format!("{bytes} body bytes"),
        Err(error) => format!("body error: {error}"),
    };
    let text = format!(
        "hello from upstream {} ({} {}, host: {}, {received}, x-forwarded-for: {})\n",
        x_upstream.to_str().unwrap_or("?"),
        parts.method,
        parts.uri,
        header("host"),
        header("x-forwarded-for"),
    );
    let mut response = Response::new(Full::from(text));
    response.headers_mut().insert("x-upstream", x_upstream);
    Ok(response)
}

/// Reads a body frame by frame, keeping only the count.
async fn count_body_bytes(mut body: Incoming) -> Result<usize, hyper::Error> {
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len();
        }
    }
    Ok(bytes)
}
