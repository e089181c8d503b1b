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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower::retry::budget::Budget;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_lb::error::BoxError;

use super::config::{HostMode, Limits};
use super::forward::{error_response, ProxyBody, HOP_BY_HOP};
use super::framing::Chunked;
use super::pool::Conn;
use super::rules;
use super::server::{ClientConn, State};
use super::upstream::{is_connection_loss, NotSent, UpstreamInner};

/// The balancer, for fast-path requests.
pub type FastService = BoxCloneSyncService<FastRequest, Response<FastTracked>, BoxError>;
pub type FastTracked = tower_lb::http::TrackedBody<FastBody>;

/// Most headers httparse reads in one head (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// A request on the fast path: its head, rewritten for the upstream.
pub struct FastRequest {
    /// Request line and headers, without `Host` when the upstream's is used, and without the
    /// blank line that ends the head.
    head: BytesMut,
    /// A HEAD request: the response has no body, whatever its headers say.
    head_method: bool,
    /// The client asked to close the connection after this exchange.
    close: bool,
}

/// What became of one request head in the buffer.
enum Parsed {
    /// A fast-path request, and the length of its head in the buffer.
    Fast(FastRequest, usize),
    /// Not for the fast path: hyper takes the connection from here.
    Hyper,
    /// The head is not complete yet.
    Partial,
}

/// Reads the request head at the start of `buf`.
fn parse(buf: &[u8], client: &ClientConn, host_mode: HostMode, max_head: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        // Larger than the limit: hyper answers 431.
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(_)) | Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Hyper;
    };
    let head_method = method == "HEAD";
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE")
        || !origin_form(path)
        || rules::has_dot_segment(path)
    {
        return Parsed::Hyper;
    }
    // Hop-by-hop headers, and those `Connection` names.
    let mut close = false;
    let mut named: Vec<&[u8]> = Vec::new();
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade")
                    || token.eq_ignore_ascii_case(b"host")
                    || token.len() >= 11 && token[..11].eq_ignore_ascii_case(b"x-forwarded")
                {
                    // Rare, and the headers this path rewrites: hyper's path decides.
                    return Parsed::Hyper;
                }
                named.push(token);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("content-length") && header.value != b"0")
        {
            return Parsed::Hyper;
        }
    }
    let mut head = BytesMut::with_capacity(len + 64);
    head.extend_from_slice(method.as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            if host || !rules::valid_host(header.value) {
                return Parsed::Hyper; // two Host headers, or a bad one: hyper's path refuses
            }
            host = true;
            if host_mode == HostMode::Pass {
                push_header(&mut head, b"host", header.value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let chain = forwarded_for.get_or_insert_with(Vec::new);
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(header.value);
            continue;
        }
        if is_hop_by_hop(name.as_bytes(), &named)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("content-length")
            || rules::has_underscore(name.as_bytes())
        {
            continue;
        }
        push_header(&mut head, name.as_bytes(), header.value);
    }
    if !host {
        return Parsed::Hyper;
    }
    match forwarded_for {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client.forwarded_for.as_bytes());
            push_header(&mut head, b"x-forwarded-for", &chain);
        }
        None => push_header(
            &mut head,
            b"x-forwarded-for",
            client.forwarded_for.as_bytes(),
        ),
    }
    head.extend_from_slice(b"x-forwarded-proto: http\r\n");
    Parsed::Fast(
        FastRequest {
            head,
            head_method,
            close,
        },
        len,
    )
}

/// A target in origin form that hyper (the `http` crate) takes as it is: a path, no
/// fragment, no byte it refuses.
fn origin_form(target: &str) -> bool {
    if !target.starts_with('/') {
        return false;
    }
    // The common case, decided without copying the target: bytes that `http` takes in a
    // path and in a query alike (see the test below). Others are rare: `http` decides, and
    // as it drops a fragment, the equality refuses targets with one.
    target.bytes().all(plain_target_byte)
        || http::uri::PathAndQuery::try_from(target).is_ok_and(|p| p.as_str() == target)
}

fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:@?".contains(&b)
}

fn push_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// RFC 9110, section 7.6.1, plus the names the message's `Connection` header lists.
fn is_hop_by_hop(name: &[u8], named: &[&[u8]]) -> bool {
    std::iter::once(&http::header::CONNECTION)
        .chain(&HOP_BY_HOP)
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
        || named.iter().any(|h| h.eq_ignore_ascii_case(name))
}

// ----------------------------------------------------------------------------------------
// The client connection
// ----------------------------------------------------------------------------------------

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

// ----------------------------------------------------------------------------------------
// The upstream side
// ----------------------------------------------------------------------------------------

/// An upstream connection of the fast path, with what it read past the last response,
/// and its timer for the request timeout (made once per connection, moved per request).
pub struct FastConn {
    stream: TcpStream,
    buf: BytesMut,
    timer: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for FastRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastRequest")
    }
}

fn not_sent(request: FastRequest, cause: impl Into<BoxError>) -> BoxError {
    NotSent::boxed(request, cause)
}

impl UpstreamInner {
    /// Sends a fast-path request: a pooled connection (or a new one), the head written,
    /// the response head read. A reused connection that the upstream had closed is
    /// replaced by a new one once.
    pub(super) async fn send_fast(
        self: Arc<Self>,
        request: FastRequest,
    ) -> Result<Response<FastBody>, BoxError> {
        let mut out = BytesMut::with_capacity(request.head.len() + 64);
        out.extend_from_slice(&request.head);
        if let Some(host) = &self.host {
            push_header(&mut out, b"host", host.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let mut fresh_tried = false;
        loop {
            let (mut conn, reused) = match self.take_fast() {
                Some(conn) => (conn, true),
                None => match self.connect().await {
                    Ok(stream) => (
                        FastConn {
                            stream,
                            buf: BytesMut::with_capacity(4096),
                            timer: Box::pin(tokio::time::sleep(self.settings.request_timeout)),
                        },
                        false,
                    ),
                    Err(error) => return Err(not_sent(request, error)),
                },
            };
            match self.round_trip(&mut conn, &out, request.head_method).await {
                Ok((mut head, framing, keep_alive, status)) => {
                    // The client connection closes after this response when the client
                    // asked. (A body that the end of the connection ends is re-framed as
                    // chunked: the client connection goes on.)
                    let close = request.close;
                    if close {
                        head.extend_from_slice(b"connection: close\r\n");
                    }
                    head.extend_from_slice(b"\r\n");
                    let mut response = Response::new(FastBody {
                        head: Some(head),
                        conn: Some(conn),
                        framing,
                        keep_alive,
                        upstream: self.clone(),
                        failed: None,
                    });
                    *response.status_mut() = status;
                    if close {
                        // The same, for the client side.
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    return Ok(response);
                }
                // A pooled connection the upstream had closed: once more on a new
                // connection (the pool may hold more such: they go).
                Err(RoundTrip::Lost(_)) if reused => {
                    fresh_tried = true;
                    self.drain_fast();
                }
                // Lost on the new connection too: back to the balancer, as the hyper path
                // does with a pooled connection's loss. Lost on a first new connection: the
                // upstream failed it (no retry, as on the hyper path).
                Err(RoundTrip::Lost(error)) if fresh_tried => return Err(not_sent(request, error)),
                Err(RoundTrip::Lost(error) | RoundTrip::Failed(error)) => return Err(error.into()),
                // The upstream's failure, which the balancer counts.
                Err(RoundTrip::TimedOut) => return Err(self.response_timeout()),
            }
        }
    }

    /// Writes the head and reads the response head within the request timeout: the head
    /// rewritten for the client, how the body is framed, whether the connection can be
    /// reused, and the status.
    async fn round_trip(
        &self,
        conn: &mut FastConn,
        out: &[u8],
        head_method: bool,
    ) -> Result<(BytesMut, Framing, bool, StatusCode), RoundTrip> {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        conn.timer.as_mut().reset(deadline);
        let FastConn { stream, buf, timer } = conn;
        tokio::select! {
            biased;
            result = exchange_heads(stream, buf, out, head_method) => result,
            _ = timer.as_mut() => Err(RoundTrip::TimedOut),
        }
    }
}

/// Writes the request head and reads the response head (see [`UpstreamInner::round_trip`]).
async fn exchange_heads(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &[u8],
    head_method: bool,
) -> Result<(BytesMut, Framing, bool, StatusCode), RoundTrip> {
    stream.write_all(out).await.map_err(RoundTrip::lost)?;
    buf.clear();
    // Once any byte of an answer came (a 1xx included), a loss is a failure.
    let mut answered = false;
    loop {
        // What is already read first: a 1xx answer may have come with the real one.
        match response_head(buf, head_method) {
            Ok(Some((len, head, framing, keep_alive, status))) => {
                buf.advance(len);
                if status.is_informational() {
                    continue; // 100 Continue and the like: the answer follows
                }
                return Ok((head, framing, keep_alive, status));
            }
            Ok(None) => {}
            Err(error) => return Err(RoundTrip::Failed(error)),
        }
        if buf.len() >= 64 * 1024 {
            return Err(RoundTrip::Failed(io::Error::other(
                "the upstream's response head is larger than 64 KiB",
            )));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if !answered => return Err(RoundTrip::Lost(io::ErrorKind::UnexpectedEof.into())),
            Ok(0) => {
                return Err(RoundTrip::Failed(io::Error::other(
                    "the upstream closed the connection in the response head",
                )))
            }
            Ok(_) => answered = true,
            Err(error) if !answered => return Err(RoundTrip::lost(error)),
            Err(error) => return Err(RoundTrip::Failed(error)),
        }
    }
}

impl UpstreamInner {
    /// An idle connection to reuse: not idle too long, and silent since its last answer.
    /// Bytes or an end that came while it was idle (a late body, an answer nobody asked
    /// for, the upstream closing it) rule it out, so that they are never taken for the next
    /// request's answer.
    fn take_fast(&self) -> Option<FastConn> {
        loop {
            if let Conn::Fast(conn) = self.settings.idle.take(self.index, true)? {
                if silent(&conn.stream) {
                    return Some(conn);
                }
            }
        }
    }

    fn drain_fast(&self) {
        self.settings.idle.drop_fast(self.index);
    }

    fn give_back(&self, conn: FastConn) {
        self.settings.idle.put(self.index, Conn::Fast(conn));
    }
}

/// Whether nothing came on an idle connection. `try_read` looks at tokio's readiness first
/// and makes no system call while the socket is known drained (the common case); it uses
/// no cooperative budget and registers no waker, so its answer is always a real one.
fn silent(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// How a round trip failed.
enum RoundTrip {
    /// Before any byte of an answer: the request can be sent again.
    Lost(io::Error),
    /// Later, or by a malformed answer.
    Failed(io::Error),
    /// No response head within the request timeout.
    TimedOut,
}

impl RoundTrip {
    fn lost(error: io::Error) -> Self {
        if is_connection_loss(error.kind()) {
            RoundTrip::Lost(error)
        } else {
            RoundTrip::Failed(error)
        }
    }
}

/// The head's length in the buffer; the head for the client without its final blank line;
/// the body's framing; whether the upstream connection can be reused; the status.
type ResponseHead = (usize, BytesMut, Framing, bool, StatusCode);

/// Parses a response head at the start of `buf` and rewrites it for the client.
fn response_head(buf: &[u8], head_method: bool) -> io::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
    };
    let malformed = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let code = response.code.ok_or_else(|| malformed("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| malformed("bad status"))?;
    if code == 101 {
        return Err(malformed("an upgrade the request did not ask for"));
    }
    let mut keep_alive = response.version == Some(1);
    let mut named: Vec<&[u8]> = Vec::new();
    let (mut length, mut transfer_encoding, mut chunked) = (None, false, false);
    let mut lengths: Vec<&[u8]> = Vec::new();
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                }
                named.push(token);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last such header decides.
            transfer_encoding = true;
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(header.value);
        }
    }
    // As hyper's client reads an answer: no body whatever the headers say for HEAD, 1xx,
    // 204 and 304; otherwise Transfer-Encoding (HTTP/1.1 only) overrides Content-Length,
    // whose values must be digits and all equal (a list of equal values included).
    let no_body = head_method || status.is_informational() || code == 204 || code == 304;
    if !no_body && transfer_encoding && response.version != Some(1) {
        return Err(malformed("transfer-encoding in an HTTP/1.0 answer"));
    }
    if !no_body && !transfer_encoding {
        for value in lengths.iter().flat_map(|v| v.split(|&b| b == b',')) {
            let digits = value.trim_ascii();
            let value = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| malformed("bad content-length"))?;
            if length.is_some_and(|l| l != value) {
                return Err(malformed("different content-lengths"));
            }
            length = Some(value);
        }
    }
    // RFC 9112, section 6.3: Transfer-Encoding overrides Content-Length; a coding other than
    // chunked last means the body ends with the connection.
    let framing = if no_body {
        Framing::Length(0)
    } else if transfer_encoding && chunked {
        Framing::Chunked(Chunked::default())
    } else if let (false, Some(length)) = (transfer_encoding, length) {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    // The head for the client: HTTP/1.1, hop-by-hop headers out. The framing headers stay
    // as the body is relayed as framed (`Content-Length` only without Transfer-Encoding),
    // whatever `Connection` names; a body that the end of the connection ends is re-framed
    // as chunked, its codings kept before `chunked`.
    let rechunk = matches!(framing, Framing::UntilClose);
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut head = BytesMut::with_capacity(len + 32);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        let keep = if name.eq_ignore_ascii_case(b"content-length") {
            !transfer_encoding
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if rechunk {
                codings.push(header.value);
            }
            !no_body && !rechunk
        } else {
            !is_hop_by_hop(name, &named)
        };
        if keep {
            push_header(&mut head, name, header.value);
        }
    }
    if rechunk {
        codings.push(b"chunked");
        push_header(&mut head, b"transfer-encoding", &codings.join(&b", "[..]));
    }
    Ok(Some((len, head, framing, keep_alive, status)))
}

// ----------------------------------------------------------------------------------------
// The response body
// ----------------------------------------------------------------------------------------

/// How the rest of a response body is delimited.
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection: relayed chunked.
    UntilClose,
}

fn malformed_chunks() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed chunked response body",
    )
}

impl Framing {
    /// Moves the body bytes in `buf` (up to the end of the body) to `out`, framed for the
    /// client: as they came, but for the trailers of a chunked body, which are dropped (as
    /// nginx drops them), and a body that the connection's end delimits, whose bytes go in
    /// chunks. Whether the body ended. A malformed chunked body is an error.
    fn relay(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> io::Result<bool> {
        match self {
            Framing::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                out.extend_from_slice(&buf[..n as usize]);
                buf.advance(n as usize);
                Ok(*left == 0)
            }
            Framing::Chunked(chunked) => {
                if !chunked.in_trailers() {
                    let n = chunked
                        .feed_until_trailers(buf)
                        .map_err(|_| malformed_chunks())?;
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                if !chunked.in_trailers() {
                    return Ok(false);
                }
                // Read, not relayed: after the last chunk's line, the empty line alone.
                let (n, done) = chunked.feed(buf).map_err(|_| malformed_chunks())?;
                buf.advance(n);
                if done {
                    out.extend_from_slice(b"\r\n");
                }
                Ok(done)
            }
            Framing::UntilClose => {
                if !buf.is_empty() {
                    out.put_slice(format!("{:x}\r\n", buf.len()).as_bytes());
                    out.extend_from_slice(buf);
                    out.extend_from_slice(b"\r\n");
                    buf.clear();
                }
                Ok(false)
            }
        }
    }
}

/// A response relayed as it arrives: the first frame is the rewritten head (with whatever
/// body bytes came with it), the next ones the body bytes as [relayed](Framing::relay).
/// Only the fast path's client side reads it. At its end the upstream connection goes back
/// to the pool, if it can be reused.
pub struct FastBody {
    head: Option<BytesMut>,
    conn: Option<FastConn>,
    framing: Framing,
    keep_alive: bool,
    upstream: Arc<UpstreamInner>,
    /// An error found after bytes that were still sent.
    failed: Option<io::Error>,
}

impl FastBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.upstream.give_back(conn);
            }
        }
    }

    /// Ends the body with `error`, after `out` if there is anything in it: what came before
    /// the fault still goes out, and the error comes next. The client connection then
    /// closes, with the body visibly incomplete (no last chunk, or fewer bytes than its
    /// length).
    fn fail(
        &mut self,
        out: BytesMut,
        error: io::Error,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        if out.is_empty() {
            return Poll::Ready(Some(Err(error)));
        }
        self.failed = Some(error);
        Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
    }
}

impl Body for FastBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        // The head, when it has not gone yet, is the start of the first frame.
        let mut out = this.head.take().unwrap_or_default();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out.freeze()))));
            };
            match this.framing.relay(&mut conn.buf, &mut out) {
                Ok(true) => {
                    this.finish();
                    continue;
                }
                Ok(false) => {}
                Err(error) => return this.fail(out, error),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut conn.stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return this.fail(out, error),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    if !matches!(this.framing, Framing::UntilClose) {
                        return this.fail(out, io::ErrorKind::UnexpectedEof.into());
                    }
                    // The end of a body the end of the connection delimits: the last chunk.
                    this.conn = None;
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                Poll::Ready(Ok(())) => conn.buf.extend_from_slice(read.filled()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.conn.is_none() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_target_bytes_are_ones_http_takes_in_paths_and_queries() {
        for b in (0..=255u8).filter(|&b| plain_target_byte(b)) {
            let c = b as char;
            for target in [format!("/a{c}b"), format!("/a?q{c}b"), format!("/{c}")] {
                let parsed = http::uri::PathAndQuery::try_from(target.as_str());
                assert!(parsed.is_ok_and(|p| p.as_str() == target), "{target:?}");
            }
        }
        // And the check as a whole refuses what http refuses or changes.
        for target in ["/a<b", "/a b", "/a#frag", "/a?q#f", "*", "http://x/"] {
            assert!(!origin_form(target), "{target:?}");
        }
        for target in ["/", "/a/b?c=d&e=%20", "/a{b}", "/a\"b\"", "/~user/x.html"] {
            assert_eq!(
                origin_form(target),
                http::uri::PathAndQuery::try_from(target).is_ok(),
                "{target:?}"
            );
        }
    }
}
