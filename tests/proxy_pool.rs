//! The reverse proxy's upstream connection pool: a connection goes back to it only when
//! its exchange is over in both directions, and the pool keeps at most `keepalive` idle
//! connections per worker, over all upstreams and both paths (nginx's `keepalive`).

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::eventually;
use proxy::StrategyKind;
use proxy_common::{assert_status, exchange, head_end, read_until, scripted, End, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_sending_a_body_is_not_reused() {
    // Hyper's path only (a hashing strategy has no fast path), one worker so that both
    // requests share one pool, and a request timeout the test can wait for.
    let upstream = scripted(proxy_common::early_answer).await;
    let mut config = proxy_common::config(&[upstream.addr]);
    config.workers = 1;
    config.upstream.strategy = StrategyKind::RingHash;
    config.timeouts.request = Duration::from_secs(5);
    // No health checks: their connections would count too.
    config.health.enabled = false;
    let proxy = proxy::start(&config).await.unwrap();
    // An upload the upstream answers before reading it; the client sends part of the body
    // and pauses.
    let mut upload = TcpStream::connect(proxy.addr).await.unwrap();
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let response = read_until(&mut upload, head_end).await;
    assert_status(&response, "401");
    // The upstream connection still carries that body: the next request must not wait on
    // it (it would never be sent, and get 504 after the request timeout).
    let response = exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_status(&response, "200");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    drop(upload);
}

fn plain(_method: &str, _target: &str) -> Reply {
    Reply::new(
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        End::Keep,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_bounds_the_idle_connections_of_each_worker_over_all_upstreams_and_paths() {
    const KEEPALIVE: usize = 4;
    const WORKERS: usize = 2;
    // Three upstreams that hold their answers until the test has seen every request
    // arrive, so that each request has a connection of its own.
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        let upstream = scripted(plain).await;
        upstream.close_gate();
        upstreams.push(upstream);
    }
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let mut config = proxy_common::config(&addrs);
    config.workers = WORKERS;
    config.upstream.keepalive = KEEPALIVE;
    config.health.enabled = false;
    let proxy = proxy::start(&config).await.unwrap();
    // GETs (the fast path) and POSTs (hyper's), each on a client connection of its own.
    const REQUESTS: usize = 24;
    let mut clients = Vec::new();
    for i in 0..REQUESTS {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let request: &[u8] = if i % 2 == 0 {
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        } else {
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        };
        stream.write_all(request).await.unwrap();
        clients.push(stream);
    }
    eventually("every request at an upstream", async || {
        upstreams.iter().map(|u| u.requests()).sum::<usize>() == REQUESTS
    })
    .await;
    let opened: usize = upstreams
        .iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .sum();
    assert_eq!(opened, REQUESTS);
    for upstream in &upstreams {
        upstream.open_gate();
    }
    for client in &mut clients {
        let response = read_until(client, |t| t.ends_with("ok")).await;
        assert_status(&response, "200");
    }
    // nginx keeps `keepalive` idle connections per worker and closes the least recently
    // used beyond that.
    let open = || {
        upstreams
            .iter()
            .map(|u| u.open.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    eventually(
        "the idle connections down to keepalive per worker",
        async || open() <= KEEPALIVE * WORKERS,
    )
    .await;
    // The proxy serves on.
    for _ in 0..4 {
        let response = exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_status(&response, "200");
    }
}
