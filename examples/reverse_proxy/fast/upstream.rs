//! The fast path's upstream side: sending a rewritten head on a pooled connection (or a new
//! one), reading the response head within the request timeout, and trying again a request
//! that a pooled connection lost before any answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower_lb::error::BoxError;

use super::body::{FastBody, Framing};
use super::request::{is_hop_by_hop, push_header, FastRequest, MAX_HEADERS};
use super::{is_connection_loss, Chunked, Conn, NotSent, UpstreamInner};

/// An upstream connection of the fast path, with what it read past the last response,
/// and its timer for the request timeout (made once per connection, moved per request).
pub struct FastConn {
    pub(super) stream: TcpStream,
    pub(super) buf: BytesMut,
    timer: Pin<Box<Sleep>>,
}

pub(super) fn not_sent(request: FastRequest, cause: impl Into<BoxError>) -> BoxError {
    NotSent::boxed(request, cause)
}

impl UpstreamInner {
    /// Sends a fast-path request: a pooled connection (or a new one), the head written,
    /// the response head read. A reused connection that the upstream had closed is
    /// replaced by a new one once.
    pub(crate) async fn send_fast(
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

    pub(super) fn give_back(&self, conn: FastConn) {
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
