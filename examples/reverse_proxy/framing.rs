//! A watch over the raw bytes a client sends, for the one framing fault hyper repairs
//! instead of reporting: a request head with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112, section 6.3 for such a request: chunked framing wins, the
//! `Content-Length` header is dropped before the service sees the request, and the
//! connection is closed after the answer. That is safe, but the proxy cannot tell the
//! request from an honest chunked one, and the RFC's other choice, refusing it with 400, is
//! what an operator expects from a proxy (nginx and HAProxy both do so): such a request is
//! nearly always a smuggling attempt.
//!
//! [`Scanned`] wraps the client's socket and follows the message framing of what is read
//! through it: each request head line by line (only the start of each line is kept), then
//! the body as the head frames it (`Content-Length` bytes skipped at once, chunked bodies
//! followed chunk by chunk, their data skipped at once). It records the ordinal of the
//! first head that carries both headers in [`Conflict`]; the proxy answers that request
//! with 400. Anything it does not follow (a malformed chunk size, an unreadable length)
//! stops the scan: hyper refuses such input itself and closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which request on a connection (0 for the first) had conflicting framing headers, if any.
#[derive(Debug, Default)]
pub struct Conflict(AtomicUsize);

const NONE: usize = usize::MAX;

impl Conflict {
    pub fn new() -> Self {
        Conflict(AtomicUsize::new(NONE))
    }

    /// Whether request number `index` of the connection had both headers.
    pub fn is(&self, index: usize) -> bool {
        self.0.load(Ordering::Relaxed) == index
    }

    fn set(&self, index: usize) {
        self.0.store(index, Ordering::Relaxed);
    }
}

/// A client socket whose incoming bytes are followed by a [`Scanner`].
pub struct Scanned<IO> {
    io: IO,
    scanner: Scanner,
    conflict: Arc<Conflict>,
}

impl<IO> Scanned<IO> {
    pub fn new(io: IO, conflict: Arc<Conflict>) -> Self {
        Scanned {
            io,
            scanner: Scanner::default(),
            conflict,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Scanned<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Some(index) = this.scanner.feed(&buf.filled()[before..]) {
                this.conflict.set(index);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Scanned<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How many bytes of each head line are kept: enough for `transfer-encoding:` and a
/// `content-length:` line with any sane value.
const LINE: usize = 64;

/// Where the scan is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: blank lines before a request line are skipped, as httparse does.
    Start,
    /// Inside a head.
    Head,
    /// `n` body bytes still to skip.
    Body(u64),
    /// Reading a chunk-size line; `size` so far, `ext` once past the digits.
    ChunkSize {
        size: u64,
        digits: bool,
        ext: bool,
    },
    /// `n` chunk-data bytes to skip, then the CRLF after them.
    ChunkData(u64),
    ChunkEnd,
    /// The trailer section after the last chunk (ends at a blank line).
    Trailers {
        blank: bool,
    },
    /// Nothing more is followed.
    Stopped,
}

/// Follows HTTP/1.1 request framing over a stream of bytes fed in pieces.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// The start of the current head line and its full length.
    line: [u8; LINE],
    line_len: usize,
    /// What the current head has shown so far.
    content_length: Option<Option<u64>>,
    chunked: bool,
    /// Ordinal of the current (or next) request.
    index: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Start,
            line: [0; LINE],
            line_len: 0,
            content_length: None,
            chunked: false,
            index: 0,
        }
    }
}

impl Scanner {
    /// Follows `bytes`; returns the ordinal of a request whose head has both
    /// `Content-Length` and `Transfer-Encoding`, if these bytes complete one.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<usize> {
        while !bytes.is_empty() {
            match self.state {
                State::Stopped => return None,
                State::Body(n) => {
                    let skip = n.min(bytes.len() as u64);
                    bytes = &bytes[skip as usize..];
                    self.state = if skip == n {
                        self.next_message()
                    } else {
                        State::Body(n - skip)
                    };
                }
                State::ChunkData(n) => {
                    let skip = n.min(bytes.len() as u64);
                    bytes = &bytes[skip as usize..];
                    if skip == n {
                        self.state = State::ChunkEnd;
                    } else {
                        self.state = State::ChunkData(n - skip);
                    }
                }
                _ => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(index) = self.byte(byte) {
                        return Some(index);
                    }
                }
            }
        }
        None
    }

    fn next_message(&mut self) -> State {
        self.index += 1;
        State::Start
    }

    /// One byte in a state that reads lines.
    fn byte(&mut self, byte: u8) -> Option<usize> {
        match self.state {
            State::Start => {
                if byte != b'\r' && byte != b'\n' {
                    self.state = State::Head;
                    self.line_len = 0;
                    self.content_length = None;
                    self.chunked = false;
                    self.push(byte);
                }
            }
            State::Head => match byte {
                b'\r' => {}
                b'\n' if self.line_len == 0 => return self.end_of_head(),
                b'\n' => {
                    self.header_line();
                    self.line_len = 0;
                }
                _ => self.push(byte),
            },
            State::ChunkSize { size, digits, ext } => match byte {
                b'\r' => {}
                b'\n' if !digits => self.state = State::Stopped,
                b'\n' if size == 0 => self.state = State::Trailers { blank: true },
                b'\n' => self.state = State::ChunkData(size),
                _ if ext => {}
                b';' | b' ' | b'\t' => {
                    self.state = State::ChunkSize {
                        size,
                        digits,
                        ext: true,
                    }
                }
                _ => match (byte as char).to_digit(16) {
                    Some(d) if size < 1 << 59 => {
                        self.state = State::ChunkSize {
                            size: size * 16 + u64::from(d),
                            digits: true,
                            ext,
                        }
                    }
                    _ => self.state = State::Stopped,
                },
            },
            State::ChunkEnd => match byte {
                b'\r' => {}
                b'\n' => {
                    self.state = State::ChunkSize {
                        size: 0,
                        digits: false,
                        ext: false,
                    }
                }
                _ => self.state = State::Stopped,
            },
            State::Trailers { blank } => match byte {
                b'\r' => {}
                b'\n' if blank => self.state = self.next_message(),
                b'\n' => self.state = State::Trailers { blank: true },
                _ => self.state = State::Trailers { blank: false },
            },
            State::Body(_) | State::ChunkData(_) | State::Stopped => {}
        }
        None
    }

    fn push(&mut self, byte: u8) {
        if self.line_len < LINE {
            self.line[self.line_len] = byte;
        }
        self.line_len += 1;
    }

    /// Notes the framing headers of one complete head line.
    fn header_line(&mut self) {
        let kept = &self.line[..self.line_len.min(LINE)];
        let Some(colon) = kept.iter().position(|&b| b == b':') else {
            return; // the request line, or a line longer than LINE before its colon
        };
        let (name, value) = (&kept[..colon], &kept[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = value.trim_ascii();
            let parsed = (self.line_len <= LINE && !value.is_empty())
                .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                .flatten();
            self.content_length = match self.content_length {
                None => Some(parsed),
                Some(previous) if previous == parsed => Some(parsed),
                Some(_) => Some(None), // different lengths: hyper refuses the request
            };
        }
    }

    fn end_of_head(&mut self) -> Option<usize> {
        self.state = match (self.content_length, self.chunked) {
            (Some(_), true) => {
                // hyper closes the connection after this request: nothing more to follow.
                self.state = State::Stopped;
                return Some(self.index);
            }
            (None, true) => State::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            },
            (Some(Some(0)), false) | (None, false) => self.next_message(),
            (Some(Some(n)), false) => State::Body(n),
            (Some(None), false) => State::Stopped,
        };
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of every size from 1 to its length; each run must find the
    /// same conflicts.
    fn conflicts(input: &[u8]) -> Vec<usize> {
        let mut found = Vec::new();
        for piece in 1..=input.len() {
            let mut scanner = Scanner::default();
            let mut run = Vec::new();
            for chunk in input.chunks(piece) {
                run.extend(scanner.feed(chunk));
            }
            if piece == 1 {
                found = run;
            } else {
                assert_eq!(run, found, "pieces of {piece} bytes");
            }
        }
        found
    }

    #[test]
    fn both_headers_in_one_head_is_found_in_either_order() {
        assert_eq!(
            conflicts(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            [0]
        );
        assert_eq!(
            conflicts(
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n"
            ),
            [0]
        );
    }

    #[test]
    fn honest_framings_are_followed_to_the_next_request() {
        // A fixed body that looks like a head, a chunked body with extensions and
        // trailers, blank lines between messages, and then the conflict in request 4.
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /a HTTP/1.1\r\nContent-Length: 49\r\n\r\n\
            X: 1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n10\r\nContent-Length: \r\n0\r\nTrailer: 1\r\n\r\n\
            \r\n\
            GET /c HTTP/1.1\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(input), [4]);
    }

    #[test]
    fn unfollowable_input_stops_the_scan() {
        // A chunk size that is not hex: hyper refuses the request and closes.
        assert_eq!(
            conflicts(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Vec::<usize>::new()
        );
        // Two different lengths, or one that is not a number.
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ] {
            let mut scanner = Scanner::default();
            assert_eq!(scanner.feed(head), None);
            assert_eq!(scanner.state, State::Stopped);
        }
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let mut scanner = Scanner::default();
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n";
        assert_eq!(scanner.feed(head), None);
        assert_eq!(scanner.state, State::Stopped);
        let mut scanner = Scanner::default();
        let head = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nabc";
        assert_eq!(scanner.feed(head), None);
        assert_eq!(scanner.state, State::Body(u64::MAX - 3));
    }
}
