//! The reverse proxy example at its defaults in the seed's shape: three upstreams, two of
//! them dead (connection refused). nginx with its defaults answers 200 to every request;
//! so must the proxy, once the two are detected, and without waiting for anything.
//!
//! `cargo test --test proxy_health -- --nocapture` prints the figures.

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

use proxy::spawn_demo_upstream;

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
