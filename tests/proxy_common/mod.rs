//! Shared by the reverse proxy tests (each declares `mod proxy` for the example's code, and
//! `mod common` for [`crate::common::PATIENCE`]): the proxy's test config, raw exchanges
//! over TCP, and a scripted upstream.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::PATIENCE;
use crate::proxy::{Config, Server};

/// The proxy on an ephemeral loopback port with two workers, no health log, and
/// `servers` as its upstreams, each of weight 1.
pub fn config(servers: &[SocketAddr]) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        log_health: false,
        ..Config::default()
    };
    config.upstream.servers = servers
        .iter()
        .map(|&address| Server { address, weight: 1 })
        .collect();
    config
}

// ----------------------------------------------------------------------------------------
// Raw exchanges
// ----------------------------------------------------------------------------------------

/// Sends `request` as is and returns what comes back until the proxy closes the
/// connection (every request sent this way makes it close: an error, `Connection: close`,
/// shutdown).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream).await
}

/// What comes on `stream` until the proxy closes it; fails the test if it never does.
pub async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(PATIENCE, read_all).await.is_ok();
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(
        closed,
        "the proxy never closed the connection; it sent: {text}"
    );
    text
}

/// Sends `request` and reads until `done` says the answer is complete or the connection
/// closes (or, if neither ever happens, [`PATIENCE`] passes).
pub async fn send(stream: &mut TcpStream, request: &str, done: impl Fn(&str) -> bool) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until(stream, done).await
}

/// Reads until `done` says the answer is complete or the connection closes (or, if neither
/// ever happens, [`PATIENCE`] passes).
pub async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&received)) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// A complete head (and, for answers without a body, a complete answer).
pub fn head_end(text: &str) -> bool {
    text.contains("\r\n\r\n")
}

pub fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Asserts that `response` begins with the status line of `code`.
#[track_caller]
pub fn assert_status(response: &str, code: &str) {
    assert!(
        status_line(response).starts_with(&format!("HTTP/1.1 {code}")),
        "{response}"
    );
}

/// The requests the balancer has seen: in flight, completed and cancelled, over every
/// upstream.
pub fn requests_seen(proxy: &crate::proxy::Proxy) -> u64 {
    proxy
        .endpoints()
        .iter()
        .map(|e| e.in_flight + e.completed + e.cancelled)
        .sum()
}

// ----------------------------------------------------------------------------------------
// A scripted upstream
// ----------------------------------------------------------------------------------------

/// What a [`Scripted`] upstream does with one request.
pub struct Reply {
    /// Written one after the other, with a pause between them (as a slow upstream sends
    /// them).
    pub pieces: Vec<Bytes>,
    /// Read the request's `Content-Length` body before answering (else answer at the
    /// head, and read the body as the start of the next request).
    pub read_body: bool,
    pub end: End,
}

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Wait for the next request.
    Keep,
    /// Close it (FIN).
    Close,
    /// Reset it (RST).
    Reset,
    /// Read whatever comes, never answer again, until the proxy closes it.
    Drain,
}

impl Reply {
    /// `pieces` after reading the request's body, then `end`.
    pub fn new(pieces: &[&'static [u8]], end: End) -> Self {
        Reply {
            pieces: pieces.iter().map(|p| Bytes::from_static(p)).collect(),
            read_body: true,
            end,
        }
    }

    /// Answers at the head, without reading the body.
    pub fn early(mut self) -> Self {
        self.read_body = false;
        self
    }
}

/// A script: answers uploads (POST) at once, without reading them (as a 401, 403 or 413
/// does), then reads what follows without answering again; answers anything else with 200.
pub fn early_answer(method: &str, _target: &str) -> Reply {
    match method {
        "POST" => Reply::new(
            &[b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"],
            End::Drain,
        )
        .early(),
        _ => Reply::new(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            End::Keep,
        ),
    }
}

/// A scripted upstream on raw TCP: answers each request head (method, target) as its
/// script says, and counts what happens.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Request heads read, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Answers written whole (every piece, the pauses between them included).
    pub answered: Arc<AtomicUsize>,
    /// Connections the proxy closed (or reset) while the upstream read from them.
    pub closed_by_proxy: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Holds every answer (after its request was read) until [`Scripted::open_gate`].
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts an upstream that answers as `script(method, target)` says.
pub async fn scripted(script: fn(&str, &str) -> Reply) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (gate, gate_rx) = watch::channel(true);
    let connections = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let closed_by_proxy = Arc::new(AtomicUsize::new(0));
    let counters = (
        connections.clone(),
        open.clone(),
        heads.clone(),
        answered.clone(),
        closed_by_proxy.clone(),
    );
    let task = tokio::spawn(async move {
        let (connections, open, heads, answered, closed) = counters;
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(open.clone());
            let (heads, answered, closed) = (heads.clone(), answered.clone(), closed.clone());
            let gate = gate_rx.clone();
            tokio::spawn(async move {
                let _guard = guard;
                serve(stream, script, heads, answered, closed, gate).await;
            });
        }
    });
    Scripted {
        addr,
        connections,
        open,
        heads,
        answered,
        closed_by_proxy,
        gate,
        task,
    }
}

async fn serve(
    mut stream: TcpStream,
    script: fn(&str, &str) -> Reply,
    heads: Arc<Mutex<Vec<String>>>,
    answered: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if !read_more(&mut stream, &mut buf).await {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut words = head.split(' ');
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or("/").to_owned();
        let reply = script(&method, &target);
        if reply.read_body {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < length {
                if !read_more(&mut stream, &mut buf).await {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            buf.drain(..length);
        }
        heads.lock().unwrap().push(head);
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        for piece in &reply.pieces {
            if stream.write_all(piece).await.is_err() {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            // Each piece in a write of its own, as a slow upstream sends them.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered.fetch_add(1, Ordering::SeqCst);
        match reply.end {
            End::Keep => {}
            End::Close => return,
            End::Reset => {
                // Deprecated because a lingering close blocks the thread on drop; a zero
                // linger does not wait: the socket is reset at once.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            End::Drain => {
                while read_more(&mut stream, &mut buf).await {
                    buf.clear();
                }
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Reads more into `buf`; false when the connection ended.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
