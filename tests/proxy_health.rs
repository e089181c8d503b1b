//! The reverse proxy example at its defaults in the seed's shape: three upstreams, two of
//! them dead (connection refused). nginx with its defaults answers 200 to every request;
//! so must the proxy, once the two are detected, and without waiting for anything. And an
//! upstream that accepts connections and never answers (a black hole): its timeouts must
//! eject it, as nginx's `max_fails` skips it.
//!
//! `cargo test --test proxy_health -- --nocapture` prints the figures.

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpSocket;

use std::time::Duration;

use proxy::{spawn_demo_upstream, StrategyKind};
use proxy_common::{End, Reply};
use tower_lb::health::Health;

/// An address on which connections are refused: a socket bound to it, not listening,
/// kept alive by the caller so that no other test takes the port.
fn refusing() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// Sends `total` GETs from `tasks` tasks; returns how many were answered 200.
async fn count_ok(target: &str, tasks: usize, total: usize) -> usize {
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (client, target) = (client.clone(), target.to_owned());
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..total / tasks {
                    if let Ok(response) = client.get(target.parse().unwrap()).await {
                        let status = response.status();
                        if response.into_body().collect().await.is_ok() && status == 200 {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for handle in handles {
        ok += handle.await.unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upstreams_two_refusing_every_request_is_answered_200() {
    let live = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (dead_a, _keep_a) = refusing();
    let (dead_b, _keep_b) = refusing();
    // The defaults, but an ephemeral port and no health log.
    let config = proxy_common::config(&[live.addr, dead_a, dead_b]);
    let running = proxy::start(&config).await.unwrap();
    let target = format!("http://{}/", running.addr);
    // One request at a time, from the first moment, as the run sent them; then a
    // concurrent load.
    let first = count_ok(&target, 1, 200).await;
    let then = count_ok(&target, 8, 2_000).await;
    eprintln!(
        "proxy over 3 upstreams, 2 refusing, defaults: {first} of 200 sequential requests \
         answered 200, then {then} of 2000 from 8 clients"
    );
    assert!(first >= 198, "{first} of 200");
    assert!(then >= 1_980, "{then} of 2000");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_upstream_is_ejected_by_its_timeouts() {
    let live = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Accepts, reads, never answers; the TCP probe passes.
    let hole = proxy_common::scripted(|_, _| Reply {
        pieces: Vec::new(),
        read_body: true,
        end: End::Drain,
    })
    .await;
    let mut config = proxy_common::config(&[live.addr, hole.addr]);
    config.upstream.strategy = StrategyKind::RoundRobin;
    config.timeouts.request = Duration::from_millis(300);
    let running = proxy::start(&config).await.unwrap();
    let get = || {
        proxy_common::exchange(
            running.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    };
    // Round robin sends every other request there: each waits for the request timeout
    // (504), and five of them in a row eject it (the default `consecutive_failures`).
    let mut timeouts = 0;
    common::eventually("the black hole ejected", async || {
        if get().await.starts_with("HTTP/1.1 504") {
            timeouts += 1;
        }
        let log = running.health_log.lock().unwrap();
        log.iter()
            .any(|(_, key, health)| *key == hole.addr && *health == Health::Ejected)
    })
    .await;
    assert_eq!(timeouts, 5);
    // Then every request goes to the live upstream.
    for _ in 0..10 {
        proxy_common::assert_status(&get().await, "200");
    }
    running.shutdown().await;
}
