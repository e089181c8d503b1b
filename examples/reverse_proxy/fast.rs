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
//! a request with a body, `Transfer-Encoding` or `Expect`, a protocol upgrade or `CONNECT`,
//! HTTP/1.0, a non-idempotent method, a target that is not a path, no `Host`, more than 100
//! headers, a head larger than the limit, or anything httparse refuses. From then on hyper
//! serves the connection: every rule of the proxy's HTTP handling (400, 431, smuggling,
//! absolute URIs) keeps living in one place. The fast path is off for h2c upstreams and for
//! the hashing strategies.
//!
//! What the fast path does like the hyper path: hop-by-hop headers (and those `Connection`
//! names) are removed both ways, `X-Forwarded-For` and `X-Forwarded-Proto` are set, Host is
//! passed or set to the upstream's, the head must arrive within `header_read_timeout`, the
//! response head within the request timeout (else 504), failures give the same 502, 503
//! and 504 answers, and a request the upstream connection lost before any answer is tried
//! again (on a fresh connection, then through the balancer within the retry budget).
//!
//! Where it differs from the hyper path: header names keep the case they came in; its own
//! 502, 503 and 504 answers carry no `Date`; a body delimited by the upstream closing the
//! connection closes the client connection too (hyper re-frames it as chunked); and a
//! client that disconnects while its request waits for the upstream is noticed when the
//! answer comes or the request timeout passes, not at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::retry::budget::Budget;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::framing::Chunked;
use super::{
    error_response, is_connection_loss, proxy_error, ClientConn, HostMode, Limits, NotSent,
    ProxyBody, State, UpstreamInner, HOP_BY_HOP,
};

/// The balancer, for fast-path requests.
pub type FastService = BoxCloneSyncService<FastRequest, Response<FastTracked>, super::BoxError>;
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
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE" | "TRACE") || !origin_form(path) {
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
            if host {
                return Parsed::Hyper; // two Host headers: rare, left to hyper's path
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
    // Timers (for heads, for answers) and the shutdown wait made once per connection, not
    // per request: moving a timer's deadline later is an atomic update, making one is not.
    let stop = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let timer = tokio::time::sleep(header_read_timeout);
    tokio::pin!(timer);
    let request_timer = tokio::time::sleep(state.request_timeout);
    tokio::pin!(request_timer);
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
        let keep = match exchange(
            &mut stream,
            request,
            &state,
            &mut service,
            request_timer.as_mut(),
        )
        .await
        {
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

/// One request through the balancer and back to the client. `Ok(false)`: the connection
/// must close after it.
async fn exchange(
    stream: &mut TcpStream,
    mut request: FastRequest,
    state: &State,
    service: &mut FastService,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> io::Result<bool> {
    let mut attempt = 1;
    let head_method = request.head_method;
    let response = loop {
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + state.request_timeout);
        let call = async {
            let ready = service.ready().await?;
            ready.call(request).await
        };
        let called = tokio::select! {
            biased;
            result = call => Ok(result),
            _ = timer.as_mut() => Err(()),
        };
        let error = match called {
            Ok(Ok(response)) => {
                if attempt == 1 {
                    state.budget.deposit();
                }
                break response;
            }
            Ok(Err(error)) => error,
            Err(_) => {
                let reason = format!(
                    "the upstream did not answer within {:?}",
                    state.request_timeout
                );
                return write_answer(
                    stream,
                    proxy_error(StatusCode::GATEWAY_TIMEOUT, &reason),
                    head_method,
                )
                .await;
            }
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
                        return write_answer(stream, error_response(&*cause, attempt), head_method)
                            .await
                    }
                }
            }
            Err(error) => {
                return write_answer(stream, error_response(&*error, attempt), head_method).await
            }
        }
    };
    let keep = !response.headers().contains_key(http::header::CONNECTION);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            stream.write_all(&data).await?;
        }
    }
    Ok(keep)
}

/// Writes one of the proxy's own answers (with no body after a HEAD request); the
/// connection is kept open.
async fn write_answer(
    stream: &mut TcpStream,
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
    stream.write_all(head.as_bytes()).await?;
    if !head_method {
        stream.write_all(&body).await?;
    }
    Ok(true)
}

// ----------------------------------------------------------------------------------------
// The upstream side
// ----------------------------------------------------------------------------------------

/// An idle upstream connection of the fast path, with what it read past the last response.
pub struct FastConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl std::fmt::Debug for FastRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastRequest")
    }
}

fn not_sent(request: FastRequest, cause: impl Into<super::BoxError>) -> super::BoxError {
    NotSent::boxed(request, cause)
}

impl UpstreamInner {
    /// Sends a fast-path request: a pooled connection (or a new one), the head written,
    /// the response head read. A reused connection that the upstream had closed is
    /// replaced by a new one once.
    pub(super) async fn send_fast(
        self: Arc<Self>,
        request: FastRequest,
    ) -> Result<Response<FastBody>, super::BoxError> {
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
                        },
                        false,
                    ),
                    Err(error) => return Err(not_sent(request, error)),
                },
            };
            match self.round_trip(&mut conn, &out, request.head_method).await {
                Ok((mut head, framing, keep_alive, status)) => {
                    // The client connection closes after this response when the client
                    // asked, or when only the end of the connection ends the body.
                    let close = request.close || matches!(framing, Framing::UntilClose);
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
            }
        }
    }

    /// Writes the head and reads the response head: the head rewritten for the client, how
    /// the body is framed, whether the connection can be reused, and the status.
    async fn round_trip(
        &self,
        conn: &mut FastConn,
        out: &[u8],
        head_method: bool,
    ) -> Result<(BytesMut, Framing, bool, StatusCode), RoundTrip> {
        conn.stream.write_all(out).await.map_err(RoundTrip::lost)?;
        conn.buf.clear();
        // Once any byte of an answer came (a 1xx included), a loss is a failure.
        let mut answered = false;
        loop {
            // What is already read first: a 1xx answer may have come with the real one.
            match response_head(&conn.buf, head_method) {
                Ok(Some((len, head, framing, keep_alive, status))) => {
                    conn.buf.advance(len);
                    if status.is_informational() {
                        continue; // 100 Continue and the like: the answer follows
                    }
                    return Ok((head, framing, keep_alive, status));
                }
                Ok(None) => {}
                Err(error) => return Err(RoundTrip::Failed(error)),
            }
            if conn.buf.len() >= 64 * 1024 {
                return Err(RoundTrip::Failed(io::Error::other(
                    "the upstream's response head is larger than 64 KiB",
                )));
            }
            conn.buf.reserve(4096);
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) if !answered => {
                    return Err(RoundTrip::Lost(io::ErrorKind::UnexpectedEof.into()))
                }
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

    /// An idle connection to reuse: not idle too long, and silent since its last answer.
    /// Bytes or an end that came while it was idle (a late body, an answer nobody asked
    /// for, the upstream closing it) rule it out, so that they are never taken for the next
    /// request's answer.
    fn take_fast(&self) -> Option<FastConn> {
        let now = Instant::now();
        loop {
            let (conn, since) = self.pool().lock().unwrap().fast.pop()?;
            if now - since < self.settings.idle_timeout && silent(&conn.stream) {
                return Some(conn);
            }
        }
    }

    fn drain_fast(&self) {
        self.pool().lock().unwrap().fast.clear();
    }

    fn give_back(&self, conn: FastConn) {
        let mut pool = self.pool().lock().unwrap();
        if pool.fast.len() < self.settings.keepalive {
            pool.fast.push((conn, Instant::now()));
        }
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
    // whatever `Connection` names.
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
            !no_body
        } else {
            !is_hop_by_hop(name, &named)
        };
        if keep {
            push_header(&mut head, name, header.value);
        }
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
    UntilClose,
}

/// A response relayed as it arrives: the first frame is the rewritten head (with whatever
/// body bytes came with it), the next ones the body bytes as framed on the wire. Only the
/// fast path's client side reads it. At its end the upstream connection goes back to the
/// pool, if it can be reused.
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
    /// Takes the body bytes that are in the buffer, up to the end of the body; whether the
    /// body ended. A malformed chunked body is an error.
    fn take_buffered(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(true);
        };
        let (n, done) = match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(conn.buf.len() as u64);
                *left -= n;
                (n as usize, *left == 0)
            }
            Framing::Chunked(chunked) => chunked.feed(&conn.buf).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed chunked response body",
                )
            })?,
            Framing::UntilClose => (conn.buf.len(), false),
        };
        out.extend_from_slice(&conn.buf[..n]);
        conn.buf.advance(n);
        Ok(done)
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.upstream.give_back(conn);
            }
        }
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
            let done = match this.take_buffered(&mut out) {
                Ok(done) => done,
                Err(error) => {
                    // What came before the fault still goes out; the error comes next.
                    this.conn = None;
                    if out.is_empty() {
                        return Poll::Ready(Some(Err(error)));
                    }
                    this.failed = Some(error);
                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                }
            };
            if done {
                this.finish();
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            if done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut conn.stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.conn = None;
                    return match this.framing {
                        Framing::UntilClose => Poll::Ready(None),
                        _ => Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into()))),
                    };
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
