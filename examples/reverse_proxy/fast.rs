//! The fast path: plain HTTP/1.1 requests without a body, proxied without hyper.
//!
//! Most requests a reverse proxy sees are `GET`s with a small head and no body. For those,
//! hyper's generality costs more than the proxying itself: its server and client each run
//! their own state machine, the client connection is a separate task fed through channels,
//! and every head is parsed into a `HeaderMap` and encoded again. Here one task per client
//! connection does the whole exchange: it parses the request head in place (httparse),
//! writes the rewritten head to a pooled upstream connection chosen by the tower-lb
//! balancer, reads the response head, and relays the response to the client as it comes,
//! its framing (`Content-Length` or chunked) passed through. That is four socket calls per
//! request and no task switch.
//!
//! Anything else goes to hyper, which reads the same bytes from the start of that request:
//! a request with a body, `Transfer-Encoding` or `Expect`, a protocol upgrade, HTTP/1.0, a
//! method other than `GET`, `HEAD`, `OPTIONS` and `DELETE`, a target that is not a path or
//! has a `..` segment, no `Host`, two, or one that is no host name, more than 100 headers,
//! a head larger than the limit, or anything httparse refuses. From then on hyper serves
//! the connection: every rule of the proxy's HTTP handling (400, 405, 431, smuggling,
//! absolute URIs, `rules.rs`) keeps living in one place. The fast path is off for h2c
//! upstreams and for the hashing strategies.
//!
//! What the fast path does like the hyper path: hop-by-hop headers (and those `Connection`
//! names) and header names with `_` are removed, `X-Forwarded-For` and `X-Forwarded-Proto`
//! are set, Host is passed or set to the upstream's, the head must arrive within
//! `header_read_timeout`, the response head within the request timeout (else 504, and a
//! failure of the upstream), each write to the client within `send_timeout` (else the
//! connection closes), failures give the same 502, 503 and 504 answers, a body delimited by
//! the upstream closing the connection is re-framed as chunked (so that a client can tell
//! a cut body from a whole one: the last chunk is missing), trailers are dropped, and a
//! request the upstream connection lost before any answer is tried again (on a fresh
//! connection, then through the balancer within the retry budget).
//!
//! Where it differs from the hyper path: header names keep the case they came in; its own
//! 502, 503 and 504 answers carry no `Date`; and a client that disconnects while its
//! request waits for the upstream is noticed when the answer comes or the request timeout
//! passes, not at once.
//!
//! The client connection ([`serve`]) is here; `fast/request.rs` parses and rewrites the
//! request head, `fast/upstream.rs` exchanges it with the upstream, and `fast/body.rs`
//! relays the response body.

#[path = "fast/body.rs"]
mod body;
#[path = "fast/request.rs"]
mod request;
#[path = "fast/upstream.rs"]
mod upstream;

pub use body::FastBody;
pub use request::FastRequest;
pub use upstream::FastConn;

use super::config::{HostMode, Limits};
use super::forward::{error_response, ProxyBody, HOP_BY_HOP};
use super::framing::Chunked;
use super::pool::Conn;
use super::rules;
use super::server::{ClientConn, State};
use super::upstream::{is_connection_loss, NotSent, UpstreamInner};
use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower::retry::budget::Budget;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_lb::error::BoxError;

use request::{parse, Parsed};

/// The balancer, for fast-path requests.
pub type FastService = BoxCloneSyncService<FastRequest, Response<FastTracked>, BoxError>;

pub type FastTracked = tower_lb::http::TrackedBody<FastBody>;

/// How a client connection ended on the fast path.
pub enum Ended {
    /// Closed (by either side, a timeout or shutdown).
    Closed,
    /// Hyper is to serve the rest: the socket, and the bytes read from it so far, from the
    /// start of a request.
    Hyper(TcpStream, Bytes),
}

/// Serves plain requests of one client connection until it closes or a request needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    client: Arc<ClientConn>,
    state: Arc<State>,
    mut service: FastService,
    limits: &Limits,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Ended {
    let mut buf = BytesMut::with_capacity(4096);
    let (max_head, header_read_timeout) = (limits.max_header_bytes, limits.header_read_timeout);
    // The timer (for heads, and for writes that wait) and the shutdown wait made once per
    // connection, not per request: moving a timer's deadline later is an atomic update,
    // making one is not.
    let stop = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let timer = tokio::time::sleep(header_read_timeout);
    tokio::pin!(timer);
    loop {
        // The next head, within the header read timeout (counted from the first wait, as
        // hyper does), unless the proxy shuts down meanwhile.
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + header_read_timeout);
        let (request, len) = loop {
            if !buf.is_empty() {
                match parse(&buf, &client, state.host, max_head) {
                    Parsed::Fast(request, len) => break (request, len),
                    Parsed::Hyper => return Ended::Hyper(stream, buf.freeze()),
                    Parsed::Partial if buf.len() >= max_head => {
                        return Ended::Hyper(stream, buf.freeze())
                    }
                    Parsed::Partial => {}
                }
            }
            buf.reserve(4096);
            let read = tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => read,
                _ = &mut timer => return Ended::Closed,
                _ = &mut stop => return Ended::Closed,
            };
            match read {
                Ok(n) if n > 0 => {}
                // Closed or failed: hyper would close it too.
                _ => return Ended::Closed,
            }
        };
        buf.advance(len);
        client
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = request.close;
        let client = Client {
            stream: &mut stream,
            timer: timer.as_mut(),
            send_timeout: limits.send_timeout,
        };
        let keep = match exchange(client, request, &state, &mut service).await {
            Ok(keep) => keep,
            Err(_) => return Ended::Closed,
        };
        let stopping = futures::FutureExt::now_or_never(stop.as_mut()).is_some();
        if close || !keep || stopping {
            let _ = stream.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// The client side of an exchange: its socket, and the connection's timer for writes that
/// wait.
struct Client<'a> {
    stream: &'a mut TcpStream,
    timer: Pin<&'a mut Sleep>,
    send_timeout: Duration,
}

impl Client<'_> {
    /// Writes `data`; a write that waits longer than the send timeout (nginx:
    /// `send_timeout`, between two writes) fails with `TimedOut`. Most writes complete at
    /// once: the timer is moved only for one that waits.
    async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let deadline = tokio::time::Instant::now() + self.send_timeout;
                    self.timer.as_mut().reset(deadline);
                    tokio::select! {
                        biased;
                        writable = self.stream.writable() => writable?,
                        _ = self.timer.as_mut() => return Err(io::ErrorKind::TimedOut.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One request through the balancer and back to the client. `Ok(false)`: the connection
/// must close after it.
async fn exchange(
    mut client: Client<'_>,
    mut request: FastRequest,
    state: &State,
    service: &mut FastService,
) -> io::Result<bool> {
    let mut attempt = 1;
    let head_method = request.head_method;
    // The request timeout is the upstream's (`UpstreamInner::send_fast`), inside the
    // balancer, which counts it as the upstream's failure; the wait for an upstream is the
    // balancer's fail-fast timeout.
    let response = loop {
        let called = async {
            let ready = service.ready().await?;
            ready.call(request).await
        };
        let error = match called.await {
            Ok(response) => {
                if attempt == 1 {
                    state.budget.deposit();
                }
                break response;
            }
            Err(error) => error,
        };
        match error.downcast::<NotSent<FastRequest>>() {
            Ok(not_sent) => {
                let retry = attempt < state.attempts && state.budget.withdraw();
                let (back, cause) = not_sent.take();
                match back {
                    Some(back) if retry => {
                        request = back;
                        attempt += 1;
                    }
                    _ => {
                        let answer = error_response(&*cause, attempt);
                        return write_answer(client, answer, head_method).await;
                    }
                }
            }
            Err(error) => {
                return write_answer(client, error_response(&*error, attempt), head_method).await
            }
        }
    };
    let keep = !response.headers().contains_key(http::header::CONNECTION);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            client.send(&data).await?;
        }
    }
    Ok(keep)
}

/// Writes one of the proxy's own answers (with no body after a HEAD request); the
/// connection is kept open.
async fn write_answer(
    mut client: Client<'_>,
    response: Response<ProxyBody>,
    head_method: bool,
) -> io::Result<bool> {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    client.send(head.as_bytes()).await?;
    if !head_method {
        client.send(&body).await?;
    }
    Ok(true)
}
