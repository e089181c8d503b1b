//! The keep-alive pool: idle HTTP/1.1 connections to the upstreams, one pool per worker
//! thread for all upstreams and both paths (hyper's and the fast path's), at most
//! `keepalive` connections in each, the least recently used closed first. That is what
//! nginx's `keepalive N` means: "the maximum number of idle keepalive connections to
//! upstream servers that are preserved in the cache of each worker process".
//!
//! A connection goes back to the pool only when its exchange is over in both directions:
//! the answer read to its end, and the request body handed whole to the connection
//! ([`Written`]). An upstream that answers before it has read an upload (401, 403, 413 and
//! redirects do) leaves a connection that still carries the rest of the body: it is closed,
//! not reused, or the next request would wait behind that body.
//!
//! h2c connections are not pooled here: each worker keeps one per upstream, for all its
//! requests.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client1;

use super::fast::FastConn;
use super::server::WORKER;
use super::upload::Written;
use super::upstream::{SendBody, UpstreamInner};

/// An idle connection.
pub enum Conn {
    Hyper(client1::SendRequest<SendBody>),
    Fast(FastConn),
}

struct Entry {
    /// The upstream's index in the config.
    upstream: usize,
    since: Instant,
    conn: Conn,
}

/// The idle connections of every worker.
pub struct Pools {
    workers: Vec<Mutex<VecDeque<Entry>>>,
    keepalive: usize,
    idle_timeout: Duration,
}

impl Pools {
    pub fn new(workers: usize, keepalive: usize, idle_timeout: Duration) -> Self {
        Pools {
            workers: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            keepalive,
            idle_timeout,
        }
    }

    /// This worker's pool: no lock is ever contended.
    fn local(&self) -> &Mutex<VecDeque<Entry>> {
        let worker = WORKER.with(|w| w.get());
        &self.workers[worker % self.workers.len()]
    }

    /// The most recently used idle connection of `upstream` for the fast path (`fast`) or
    /// hyper's, if one has not been idle too long. The caller checks that it still works.
    pub fn take(&self, upstream: usize, fast: bool) -> Option<Conn> {
        let mut idle = self.local().lock().unwrap();
        let now = Instant::now();
        // Oldest first: those idle for too long go.
        while idle
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        let at = idle
            .iter()
            .rposition(|e| e.upstream == upstream && matches!(e.conn, Conn::Fast(_)) == fast)?;
        idle.remove(at).map(|e| e.conn)
    }

    /// Keeps `conn` for reuse; beyond `keepalive`, the least recently used one is closed.
    pub fn put(&self, upstream: usize, conn: Conn) {
        if self.keepalive == 0 {
            return;
        }
        let mut idle = self.local().lock().unwrap();
        let evicted = (idle.len() >= self.keepalive)
            .then(|| idle.pop_front())
            .flatten();
        idle.push_back(Entry {
            upstream,
            since: Instant::now(),
            conn,
        });
        drop(idle);
        drop(evicted); // closed outside the lock
    }

    /// Closes the fast path's idle connections to `upstream` (it closed one: the others
    /// are likely closed too).
    pub fn drop_fast(&self, upstream: usize) {
        let mut idle = self.local().lock().unwrap();
        idle.retain(|e| !(e.upstream == upstream && matches!(e.conn, Conn::Fast(_))));
    }
}

/// Puts an HTTP/1.1 connection back in the pool when its exchange is over.
pub struct ReturnToPool {
    sender: client1::SendRequest<SendBody>,
    upstream: Arc<UpstreamInner>,
    /// Whether the request body has been handed whole to the connection.
    written: Written,
}

impl ReturnToPool {
    pub(super) fn new(
        sender: client1::SendRequest<SendBody>,
        upstream: Arc<UpstreamInner>,
        written: Written,
    ) -> Self {
        ReturnToPool {
            sender,
            upstream,
            written,
        }
    }

    /// The answer has been read to its end: back to the pool if the request body has been
    /// written too; otherwise the connection closes.
    fn answer_read(self) {
        if self.written.is_done() && !self.sender.is_closed() {
            let pools = &self.upstream.settings.idle;
            pools.put(self.upstream.index, Conn::Hyper(self.sender));
        }
    }
}

/// An upstream response body; at its end, the connection goes back to the pool (see the
/// [module docs](self)). A body dropped before its end, or that fails, closes it.
pub struct PooledBody {
    inner: Incoming,
    back: Option<ReturnToPool>,
}

impl PooledBody {
    pub fn new(inner: Incoming, back: Option<ReturnToPool>) -> Self {
        PooledBody { inner, back }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(back) = this.back.take() {
                    back.answer_read();
                }
            }
            // Trailers are a body's last frame.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                if let Some(back) = this.back.take() {
                    back.answer_read();
                }
            }
            // A broken connection is not reused.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An answer without a body (or whose end hyper saw without reading further) is
        // read to its end when its body is dropped.
        if let Some(back) = self.back.take() {
            if self.inner.is_end_stream() {
                back.answer_read();
            }
        }
    }
}
