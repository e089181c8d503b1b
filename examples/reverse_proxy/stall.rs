//! Timeouts between two steps of progress, as nginx's `client_body_timeout` and
//! `send_timeout` are: not for a whole body or answer, but for each wait in it.
//!
//! - [`Stall`]: the timer, for anything polled that may wait (the request body, see
//!   `upload.rs`).
//! - [`SendTimeout`]: a client socket whose writes fail with `TimedOut` once one has waited
//!   longer than the send timeout, for hyper's path (the fast path keeps a timer per
//!   connection for it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A timer for the waits of one thing: each wait may last `timeout`.
pub struct Stall {
    timeout: Duration,
    /// Made at the first wait, moved at each later one: nothing to make for a thing that
    /// never waits, one allocation for the others.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs for the current wait.
    waiting: bool,
}

impl Stall {
    pub fn new(timeout: Duration) -> Self {
        Stall {
            timeout,
            timer: None,
            waiting: false,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The thing waits (it returned `Pending`): whether this wait has lasted the timeout.
    /// Otherwise the timer wakes the task when it will have.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(Instant::now() + timeout);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// The thing made progress: the next wait starts the timer afresh.
    pub fn progress(&mut self) {
        self.waiting = false;
    }
}

/// A client socket whose writes may wait at most the send timeout each.
pub struct SendTimeout<IO> {
    io: IO,
    stall: Stall,
}

impl<IO> SendTimeout<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        SendTimeout {
            io,
            stall: Stall::new(timeout),
        }
    }

    /// A write's result: `TimedOut` in place of a wait that lasted the timeout.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending if self.stall.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took no part of the answer within {:?}",
                    self.stall.timeout()
                ),
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.stall.progress();
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.timed(cx, polled)
    }
}
