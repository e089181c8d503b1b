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

use bytes::Bytes;
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

/// A client socket whose incoming bytes are followed by a [`Scanner`]: first `prefix`
/// (bytes already read from it elsewhere), then the socket's own.
pub struct Scanned<IO> {
    prefix: Bytes,
    io: IO,
    scanner: Scanner,
    conflict: Arc<Conflict>,
}

impl<IO> Scanned<IO> {
    /// Scans `io` from the start of its first request.
    pub fn new(io: IO, conflict: Arc<Conflict>) -> Self {
        Self::from_request(Bytes::new(), io, conflict, 0)
    }

    /// Scans `prefix`, then `io`, from the start of a request that is number `index` of its
    /// connection (the earlier ones were served elsewhere, which read `prefix` ahead).
    pub fn from_request(prefix: Bytes, io: IO, conflict: Arc<Conflict>, index: usize) -> Self {
        Scanned {
            prefix,
            io,
            scanner: Scanner {
                index,
                ..Scanner::default()
            },
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
        let polled = if this.prefix.is_empty() {
            Pin::new(&mut this.io).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
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

/// The longest header name the scan compares (`transfer-encoding`).
const NAME: usize = 17;

/// Where the scan is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: blank lines before a request line are skipped, as httparse does.
    Start,
    /// Inside a head (lines end at LF, with or without CR, as in httparse).
    Head,
    /// `n` body bytes still to skip.
    Body(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// Nothing more is followed.
    Stopped,
}

/// The current line of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The request line.
    Request,
    /// A header name so far (the first `NAME` bytes kept) and its length.
    Name { kept: [u8; NAME], len: usize },
    /// The value of `Content-Length`, parsed as it arrives: `None` once it is not a number
    /// hyper would take (digits between optional whitespace).
    ContentLength {
        value: Option<u64>,
        digits: bool,
        after: bool,
    },
    /// Any other header's value.
    Value,
}

/// Follows HTTP/1.1 request framing over a stream of bytes fed in pieces.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    line: Line,
    /// Whether the current head line has any byte yet (an empty line ends the head).
    line_started: bool,
    /// What the current head has shown so far: `Content-Length` (its value when it is
    /// valid and consistent) and `Transfer-Encoding`.
    content_length: Option<Option<u64>>,
    transfer_encoding: bool,
    /// Ordinal of the current (or next) request.
    index: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Start,
            line: Line::Request,
            line_started: false,
            content_length: None,
            transfer_encoding: false,
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
                    self.state = match n - skip {
                        0 => self.next_message(),
                        left => State::Body(left),
                    };
                }
                State::Chunked(mut chunked) => match chunked.feed(bytes) {
                    Ok((used, done)) => {
                        bytes = &bytes[used..];
                        self.state = if done {
                            self.next_message()
                        } else {
                            State::Chunked(chunked)
                        };
                    }
                    Err(_) => self.state = State::Stopped,
                },
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

    /// One byte of a head, or between messages.
    fn byte(&mut self, byte: u8) -> Option<usize> {
        self.state = match (self.state, byte) {
            (State::Start, b'\r' | b'\n') => State::Start,
            (State::Start, _) => {
                self.line = Line::Request;
                self.line_started = true;
                self.content_length = None;
                self.transfer_encoding = false;
                State::Head
            }
            (State::Head, b'\r') => State::Head,
            (State::Head, b'\n') if !self.line_started => return self.end_of_head(),
            (State::Head, b'\n') => {
                self.end_of_line();
                State::Head
            }
            (State::Head, _) => {
                self.line_byte(byte);
                State::Head
            }
            // Anything else is malformed: hyper refuses it and closes the connection.
            _ => State::Stopped,
        };
        None
    }

    /// One byte of a head line other than CR and LF.
    fn line_byte(&mut self, byte: u8) {
        self.line_started = true;
        self.line = match self.line {
            Line::Request => Line::Request,
            Line::Name { kept, len } if byte == b':' => {
                let name = &kept[..len.min(NAME)];
                if len <= NAME && name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.transfer_encoding = true;
                    Line::Value
                } else if len <= NAME && name.eq_ignore_ascii_case(b"content-length") {
                    Line::ContentLength {
                        value: Some(0),
                        digits: false,
                        after: false,
                    }
                } else {
                    Line::Value
                }
            }
            Line::Name { mut kept, len } => {
                if len < NAME {
                    kept[len] = byte;
                }
                Line::Name { kept, len: len + 1 }
            }
            Line::ContentLength {
                value,
                digits,
                after,
            } => match byte {
                b' ' | b'\t' => Line::ContentLength {
                    value,
                    digits,
                    after: digits,
                },
                b'0'..=b'9' if !after => Line::ContentLength {
                    value: value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(byte - b'0'))),
                    digits: true,
                    after,
                },
                _ => Line::ContentLength {
                    value: None,
                    digits,
                    after,
                },
            },
            Line::Value => Line::Value,
        };
    }

    /// Notes the framing header a complete head line carried, if any.
    fn end_of_line(&mut self) {
        if let Line::ContentLength { value, digits, .. } = self.line {
            let parsed = value.filter(|_| digits);
            self.content_length = match self.content_length {
                None => Some(parsed),
                Some(previous) if previous == parsed => Some(parsed),
                Some(_) => Some(None), // different lengths: hyper refuses the request
            };
        }
        self.line = Line::Name {
            kept: [0; NAME],
            len: 0,
        };
        self.line_started = false;
    }

    fn end_of_head(&mut self) -> Option<usize> {
        self.state = match (self.content_length, self.transfer_encoding) {
            (Some(_), true) => {
                // hyper closes the connection after this request: nothing more to follow.
                self.state = State::Stopped;
                return Some(self.index);
            }
            (None, true) => State::Chunked(Chunked::default()),
            (Some(Some(0)), false) | (None, false) => self.next_message(),
            (Some(Some(n)), false) => State::Body(n),
            (Some(None), false) => State::Stopped,
        };
        None
    }
}

/// Follows a chunked body to its end with the states of hyper's decoder
/// (`proto/h1/decode.rs`): hex size digits, optional spaces or tabs, `;extensions`, CR LF;
/// the data, CR LF; after the last (size 0) chunk, trailer lines each ending in CR LF, then
/// CR LF. A bare LF ends no line. It finds the end of the body where hyper does; hyper's
/// limits on the size of extensions and trailers are not applied. Shared by the request
/// scan and the fast path, which relays chunked answers as they are up to their trailers,
/// and drops those (see [`Chunked::feed_until_trailers`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    step: Step,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A size line: the size so far, and whether it has a digit.
    #[default]
    SizeStart,
    Size(u64),
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    /// `n` data bytes, then CR LF.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The body is not valid chunked framing.
#[derive(Debug)]
pub struct Malformed;

impl Chunked {
    /// Follows `bytes`: how many belong to the body, and whether it ends with them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), Malformed> {
        self.advance(bytes, false)
    }

    /// Follows `bytes` up to the trailers, if they start in them: how many come before,
    /// the last chunk's line included. A relay that writes those as they are and drops
    /// the rest (reading it with [`feed`](Self::feed) while [`in_trailers`](Self::in_trailers))
    /// never passes on a trailer byte: trailer lines are the one place where a bare LF is
    /// part of the body, which a lenient reader would take for the end of a line.
    pub fn feed_until_trailers(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        self.advance(bytes, true).map(|(used, _)| used)
    }

    /// Whether the last chunk has been read: what follows is trailers, then the end.
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.step,
            Step::EndCr | Step::Trailer | Step::TrailerLf | Step::EndLf | Step::Done
        )
    }

    fn advance(
        &mut self,
        bytes: &[u8],
        stop_at_trailers: bool,
    ) -> Result<(usize, bool), Malformed> {
        let mut used = 0;
        while used < bytes.len() && self.step != Step::Done {
            if stop_at_trailers && self.in_trailers() {
                break;
            }
            if let Step::Data(n) = self.step {
                let skip = n.min((bytes.len() - used) as u64);
                used += skip as usize;
                self.step = match n - skip {
                    0 => Step::DataCr,
                    left => Step::Data(left),
                };
                continue;
            }
            let byte = bytes[used];
            used += 1;
            let digit = (byte as char).to_digit(16).map(u64::from);
            self.step = match (self.step, byte, digit) {
                (Step::SizeStart, _, Some(d)) => Step::Size(d),
                (Step::Size(size), _, Some(d)) => {
                    Step::Size(size.checked_mul(16).ok_or(Malformed)? + d)
                }
                (Step::Size(size) | Step::SizeSpace(size), b' ' | b'\t', _) => {
                    Step::SizeSpace(size)
                }
                (Step::Size(size) | Step::SizeSpace(size), b';', _) => Step::Extension(size),
                (Step::Size(size) | Step::SizeSpace(size) | Step::Extension(size), b'\r', _) => {
                    Step::SizeLf(size)
                }
                (Step::Extension(_), b'\n', _) => return Err(Malformed),
                (Step::Extension(size), _, _) => Step::Extension(size),
                (Step::SizeLf(0), b'\n', _) => Step::EndCr,
                (Step::SizeLf(size), b'\n', _) => Step::Data(size),
                (Step::DataCr, b'\r', _) => Step::DataLf,
                (Step::DataLf, b'\n', _) => Step::SizeStart,
                (Step::EndCr, b'\r', _) => Step::EndLf,
                (Step::Trailer, b'\r', _) => Step::TrailerLf,
                (Step::EndCr | Step::Trailer, _, _) => Step::Trailer,
                (Step::TrailerLf, b'\n', _) => Step::EndCr,
                (Step::EndLf, b'\n', _) => Step::Done,
                _ => return Err(Malformed),
            };
        }
        Ok((used, self.step == Step::Done))
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
    fn a_bare_lf_in_the_trailers_ends_no_line_as_in_hyper() {
        // hyper reads `\nGET /p HTTP/1.1\r\n` as a trailer line: the request with both
        // headers is the second one, not the third.
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\
            \nGET /p HTTP/1.1\r\n\r\n\
            POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(input), [1]);
        // A bare LF after a chunk's data is malformed for hyper: the scan stops.
        let mut scanner = Scanner::default();
        scanner.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\n");
        assert_eq!(scanner.state, State::Stopped);
    }

    #[test]
    fn long_content_length_lines_are_read_whole() {
        let spaces = " ".repeat(60);
        let zeros = "0".repeat(70);
        for value in [format!("{spaces}5{spaces}"), format!("{zeros}5")] {
            let input = format!(
                "POST / HTTP/1.1\r\nContent-Length:{value}\r\n\r\nhello\
                 POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            assert_eq!(conflicts(input.as_bytes()), [1], "{value:?}");
        }
        // Digits split by whitespace are not a number for hyper: the scan stops.
        let mut scanner = Scanner::default();
        scanner.feed(b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n");
        assert_eq!(scanner.state, State::Stopped);
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
    fn the_relay_stops_where_the_trailers_start() {
        let body = b"5;x=1\r\nhello\r\n0\r\nA: 1\nB\r\n\r\nnext";
        for piece in 1..=body.len() {
            let (mut chunked, mut relayed, mut rest) = (Chunked::default(), Vec::new(), 0);
            let mut done = false;
            for part in body.chunks(piece) {
                let mut part = part;
                if !chunked.in_trailers() {
                    let n = chunked.feed_until_trailers(part).unwrap();
                    relayed.extend_from_slice(&part[..n]);
                    part = &part[n..];
                }
                if chunked.in_trailers() && !done {
                    let (n, end) = chunked.feed(part).unwrap();
                    done = end;
                    rest += part.len() - n;
                } else if done {
                    rest += part.len();
                }
            }
            assert!(done, "pieces of {piece}");
            assert_eq!(relayed, b"5;x=1\r\nhello\r\n0\r\n", "pieces of {piece}");
            assert_eq!(rest, 4, "pieces of {piece}");
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

/// hyper's HTTP/1 server reads random request streams through [`Scanned`]; every request it
/// hands over must be flagged exactly when its head had both framing headers.
#[cfg(test)]
mod against_hyper {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Conflict, Scanned};

    /// xorshift64: a fixed, reproducible sequence.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// Body bytes that look like framing to a careless reader.
    const TRICKY: [&str; 6] = [
        "a",
        "\r\n",
        "0\r\n\r\n",
        "GET /x HTTP/1.1\r\n",
        "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "zz",
    ];

    fn body(rng: &mut Rng, len: usize) -> String {
        let mut text = String::new();
        while text.len() < len {
            text.push_str(rng.pick(&TRICKY));
        }
        text.truncate(len);
        text
    }

    fn content_length(rng: &mut Rng, n: usize) -> String {
        match rng.below(3) {
            0 => format!("Content-Length: {n}\r\n"),
            1 => format!(
                "content-length:{0}{n}{0}\r\n",
                " ".repeat(rng.below(70) as usize)
            ),
            _ => format!(
                "CONTENT-LENGTH: {}{n}\r\n",
                "0".repeat(rng.below(70) as usize)
            ),
        }
    }

    fn chunked(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..rng.below(4) {
            let len = 1 + rng.below(20) as usize;
            let size = match rng.below(2) {
                0 => format!("{len:x}"),
                _ => format!("{len:X}"),
            };
            let ext = rng.pick(&["", ";a=b", " ", " ;x"]);
            text.push_str(&format!("{size}{ext}\r\n{}\r\n", body(rng, len)));
        }
        text.push_str("0\r\n");
        for _ in 0..rng.below(3) {
            text.push_str("Trailer-X: 1\r\n");
        }
        text.push_str("\r\n");
        text
    }

    /// A stream of 1 to 5 requests, and for each whether its head has both headers.
    fn stream(rng: &mut Rng) -> (Vec<u8>, Vec<bool>) {
        let (mut text, mut both) = (String::new(), Vec::new());
        for _ in 0..1 + rng.below(5) {
            text.push_str(&"\r\n".repeat(rng.below(3) as usize));
            text.push_str(rng.pick(&["GET / HTTP/1.1\r\n", "POST /p HTTP/1.1\r\n"]));
            text.push_str("Host: x\r\n");
            text.push_str(rng.pick(&["", "X-Note: Content-Length: 9\r\n", "Accept: */*\r\n"]));
            let te = "Transfer-Encoding: chunked\r\n";
            let n = rng.below(40) as usize;
            match rng.below(4) {
                0 => {
                    text.push_str("\r\n");
                    both.push(false);
                }
                1 => {
                    text.push_str(&content_length(rng, n));
                    text.push_str("\r\n");
                    text.push_str(&body(rng, n));
                    both.push(false);
                }
                2 => {
                    text.push_str(te);
                    text.push_str("\r\n");
                    text.push_str(&chunked(rng));
                    both.push(false);
                }
                _ => {
                    let cl = content_length(rng, n);
                    let head = match rng.below(2) {
                        0 => format!("{cl}{te}"),
                        _ => format!("{te}{cl}"),
                    };
                    text.push_str(&head);
                    text.push_str("\r\n");
                    text.push_str(&chunked(rng));
                    both.push(true);
                }
            }
        }
        (text.into_bytes(), both)
    }

    #[tokio::test]
    async fn the_scan_agrees_with_hyper_on_random_streams() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut served = 0;
        for case in 0..300 {
            let (bytes, both) = stream(&mut rng);
            // A small pipe makes hyper read the stream in pieces of every size.
            let (client, server) = tokio::io::duplex(1 + rng.below(64) as usize);
            let conflict = Arc::new(Conflict::new());
            let flagged = Arc::new(Mutex::new(Vec::new()));
            let service = {
                let (conflict, flagged) = (conflict.clone(), flagged.clone());
                service_fn(move |request: Request<Incoming>| {
                    let mut flagged = flagged.lock().unwrap();
                    let index = flagged.len();
                    flagged.push(conflict.is(index));
                    async move {
                        let _ = request.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                    }
                })
            };
            let serve = http1::Builder::new()
                .serve_connection(TokioIo::new(Scanned::new(server, conflict)), service);
            let (mut read, mut write) = tokio::io::split(client);
            let send = async move {
                let _ = write.write_all(&bytes).await;
                let _ = write.shutdown().await;
            };
            let receive = async move {
                let mut sink = Vec::new();
                let _ = read.read_to_end(&mut sink).await;
            };
            let run = async { tokio::join!(serve, send, receive) };
            // Only a hang meets this: a case takes milliseconds.
            let (_served, (), ()) = tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .unwrap_or_else(|_| panic!("case {case} hung"));
            let flagged = flagged.lock().unwrap();
            assert!(!flagged.is_empty(), "case {case}: hyper served nothing");
            assert_eq!(
                flagged[..],
                both[..flagged.len()],
                "case {case}: {}",
                String::from_utf8_lossy(&stream_again(case))
            );
            served += flagged.len();
        }
        assert!(served > 600, "{served} requests served");
    }

    /// The stream of `case`, for the failure message.
    fn stream_again(case: usize) -> Vec<u8> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..case {
            stream(&mut rng);
            rng.below(64);
        }
        stream(&mut rng).0
    }
}
