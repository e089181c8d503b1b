//! The reverse proxy against clients that fail or stall: request bodies that are aborted,
//! malformed or stalled, and answers that the client never reads. What the client did
//! wrong is the client's: it is never counted against an upstream, and nothing the client
//! holds (its connection, an upstream connection, a request in flight) is held for ever.
//!
//! Every wait is for something to happen ([`common::eventually`]); [`common::PATIENCE`]
//! only turns a hang into a failure.

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower_lb::health::Health;

use common::eventually;
use proxy::{spawn_demo_upstream, Config, DemoUpstream, Proxy};
use proxy_common::{
    assert_status, exchange, head_end, read_until, read_until_closed, scripted, End, Reply,
};

/// The proxy in front of `upstream` with the defaults (health checks and outlier detection
/// on), changed by `change`.
async fn proxy_for(upstream: SocketAddr, change: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = proxy_common::config(&[upstream]);
    change(&mut config);
    proxy::start(&config).await.unwrap()
}

/// A demo upstream (it reads request bodies whole before it answers), and the proxy in
/// front of it, changed by `change`.
async fn demo_proxy(change: impl FnOnce(&mut Config)) -> (Proxy, DemoUpstream) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (proxy_for(upstream.addr, change).await, upstream)
}

fn in_flight(proxy: &Proxy) -> u64 {
    proxy.endpoints().iter().map(|e| e.in_flight).sum()
}

fn failures(proxy: &Proxy) -> u64 {
    proxy.endpoints().iter().map(|e| e.failures).sum()
}

fn ejections(proxy: &Proxy) -> usize {
    let log = proxy.health_log.lock().unwrap();
    log.iter().filter(|(_, _, h)| *h == Health::Ejected).count()
}

/// Sends the head and the start of an upload, and waits until the proxy has it in flight.
async fn start_upload(proxy: &Proxy, head: &str, start: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(start).await.unwrap();
    eventually("the upload in flight", async || in_flight(proxy) == 1).await;
    stream
}

const UPLOAD: &str = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_are_the_clients_and_never_eject_the_upstream() {
    let (proxy, _upstream) = demo_proxy(|_| {}).await;
    // Thirty uploads, each aborted by its client part way: a half-close, so that the
    // client can still read what the proxy answers (nothing: there is no one to answer).
    for i in 0..30 {
        let mut stream = start_upload(&proxy, UPLOAD, b"0123456789").await;
        stream.shutdown().await.unwrap();
        let response = read_until_closed(&mut stream).await;
        assert_eq!(response, "", "upload {i}");
        eventually("the aborted upload over", async || in_flight(&proxy) == 0).await;
    }
    assert_eq!(failures(&proxy), 0, "{:?}", proxy.endpoints());
    assert_eq!(ejections(&proxy), 0);
    // The upstream serves on.
    let response = exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_status(&response, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bodies_get_400_and_are_no_upstream_failure() {
    let (proxy, _upstream) = demo_proxy(|_| {}).await;
    let head = "POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    // A chunk size that is not hex, and a chunk longer than its size; each comes after a
    // good chunk, so that the request is on its way upstream when the fault arrives.
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        let mut stream = start_upload(&proxy, head, b"5\r\nhello\r\n").await;
        stream.write_all(bad).await.unwrap();
        let response = read_until_closed(&mut stream).await;
        assert_status(&response, "400");
        eventually("the request over", async || in_flight(&proxy) == 0).await;
    }
    assert_eq!(failures(&proxy), 0, "{:?}", proxy.endpoints());
    assert_eq!(ejections(&proxy), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_after_the_body_timeout() {
    let timeout = Duration::from_millis(500);
    let (proxy, _upstream) = demo_proxy(|c| c.limits.body_read_timeout = timeout).await;
    // Before the upload starts, so before the body stalls.
    let stalled = Instant::now();
    let mut stream = start_upload(&proxy, UPLOAD, b"0123456789").await;
    // nginx: 408 after `client_body_timeout` without a byte; the connection closes.
    let response = read_until_closed(&mut stream).await;
    assert_status(&response, "408");
    assert!(stalled.elapsed() >= timeout, "{:?}", stalled.elapsed());
    eventually("the request over", async || in_flight(&proxy) == 0).await;
    assert_eq!(failures(&proxy), 0, "{:?}", proxy.endpoints());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_after_an_early_answer_is_closed_after_the_body_timeout() {
    let upstream = scripted(proxy_common::early_answer).await;
    // No health checks: their connections would count as closed too.
    let proxy = proxy_for(upstream.addr, |c| {
        c.limits.body_read_timeout = Duration::from_millis(500);
        c.health.enabled = false;
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(UPLOAD.as_bytes()).await.unwrap();
    stream.write_all(b"0123456789").await.unwrap();
    let response = read_until(&mut stream, head_end).await;
    assert_status(&response, "401");
    // The client has its answer and sends no more: the proxy gives up on the body, and
    // closes both connections (nginx: `client_body_timeout`).
    let rest = read_until_closed(&mut stream).await;
    assert_eq!(rest, "");
    eventually("the upstream connection closed", async || {
        upstream.closed_by_proxy.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(failures(&proxy), 0, "{:?}", proxy.endpoints());
}

/// Answers every request with 32 MiB, more than the socket buffers of both connections
/// hold.
fn huge(_method: &str, _target: &str) -> Reply {
    let mut reply = Reply::new(
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n"],
        End::Keep,
    );
    reply.pieces.push(Bytes::from(vec![b'x'; 32 << 20]));
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_after_the_send_timeout() {
    for fast_path in [true, false] {
        let upstream = scripted(huge).await;
        // No health checks: their connections would count as closed too.
        let proxy = proxy_for(upstream.addr, |c| {
            c.fast_path = fast_path;
            c.limits.send_timeout = Duration::from_millis(500);
            c.health.enabled = false;
        })
        .await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        eventually("the request in flight", async || in_flight(&proxy) == 1).await;
        // The client reads nothing. nginx closes after `send_timeout` without progress;
        // the request in flight and the upstream connection go with it.
        eventually("the request over", async || in_flight(&proxy) == 0).await;
        eventually(
            &format!("fast path {fast_path}: the upstream connection closed"),
            async || upstream.closed_by_proxy.load(Ordering::SeqCst) == 1,
        )
        .await;
        let received = read_until_closed(&mut stream).await;
        assert!(received.len() < 32 << 20, "fast path {fast_path}");
    }
}
