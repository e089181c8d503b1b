//! The fast path's response body: the upstream's bytes relayed as they come, delimited by
//! `Content-Length`, chunked framing, or the upstream closing (then re-framed as chunked),
//! with trailers dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::upstream::FastConn;
use super::{Chunked, UpstreamInner};

/// How the rest of a response body is delimited.
pub(super) enum Framing {
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
    pub(super) head: Option<BytesMut>,
    pub(super) conn: Option<FastConn>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) upstream: Arc<UpstreamInner>,
    /// An error found after bytes that were still sent.
    pub(super) failed: Option<io::Error>,
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
