//! The reverse proxy example against bad input, over raw TCP: malformed requests, oversized
//! heads, request smuggling, slow clients, Host headers and absolute URIs that point
//! elsewhere; plus its own answers (502, 504), forwarded headers and graceful shutdown.
//!
//! Every exchange reads until the proxy closes the connection, and every wait is for
//! something to happen ([`common::eventually`]), so no answer depends on how fast the
//! machine is; [`common::PATIENCE`] only turns a hang into a failure.

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use common::{eventually, PATIENCE};
use proxy::{spawn_demo_upstream, Config, DemoUpstream, HostMode, Proxy};
use proxy_common::{assert_status, exchange, read_until_closed, status_line};

fn config(servers: &[SocketAddr]) -> Config {
    let mut config = proxy_common::config(servers);
    config.limits.header_read_timeout = Duration::from_millis(500);
    config.limits.max_header_bytes = 16 * 1024;
    config
}

async fn with_upstream(change: impl FnOnce(&mut Config)) -> (Proxy, DemoUpstream) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = config(&[upstream.addr]);
    change(&mut config);
    (proxy::start(&config).await.unwrap(), upstream)
}

/// A plain `GET /` that asks the proxy to close the connection after the answer.
async fn get_and_close(addr: SocketAddr) -> String {
    exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_line_gets_400() {
    let (proxy, _up) = with_upstream(|_| {}).await;
    let response = exchange(proxy.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_status(&response, "400");
    let response = exchange(proxy.addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_status(&response, "400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let (proxy, _up) = with_upstream(|_| {}).await;
    let big = "a".repeat(32 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let response = exchange(proxy.addr, request.as_bytes()).await;
    assert_status(&response, "431");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused() {
    let (proxy, _up) = with_upstream(|_| {}).await;
    // CL.TE and TE.CL: both framings, and a second request hidden where Content-Length
    // says the body ends. The proxy answers 400 and closes the connection; neither the
    // request nor the hidden one reaches the upstream.
    for head in [
        "Content-Length: 40\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 40",
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let response = exchange(proxy.addr, request.as_bytes()).await;
        assert_status(&response, "400");
        assert_eq!(response.matches("HTTP/1.1").count(), 1, "{response}");
        assert!(response.contains("connection: close"), "{response}");
        assert!(
            response.contains("both Content-Length and Transfer-Encoding"),
            "{response}"
        );
        assert!(!response.contains("upstream"), "{response}");
    }
    // The same after honest requests on one connection (a fixed body and a chunked one,
    // whose data looks like a conflicting head): only the third request is refused.
    let request = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        31\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n\
        POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let response = exchange(proxy.addr, request).await;
    assert!(
        response.contains("POST /a, host: x, 5 body bytes"),
        "{response}"
    );
    assert!(
        response.contains("POST /b, host: x, 49 body bytes"),
        "{response}"
    );
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
    assert_eq!(response.matches("HTTP/1.1 400").count(), 1, "{response}");
    assert!(!response.contains("POST /c"), "{response}");
    // Transfer-Encoding in HTTP/1.0, which has no chunked coding.
    let request = b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let response = exchange(proxy.addr, request).await;
    assert_status(&response, "400");
    // Two different Content-Lengths.
    let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    let response = exchange(proxy.addr, request).await;
    assert_status(&response, "400");
    // A transfer coding other than chunked last.
    let request =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
    let response = exchange(proxy.addr, request).await;
    assert_status(&response, "400");
}

/// Requests nginx refuses: each gets 400 (405 for the methods the proxy does not forward),
/// on either path, and none reaches the balancer. Each asks to close, so that a proxy that
/// forwards it answers and closes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_nginx_refuses_are_refused_and_never_forwarded() {
    let refused: [(&str, &str); 19] = [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a\tb\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: user@a\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a..b\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nConnection: host, close\r\n\r\n", "400"),
        ("get / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("GET /../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("GET /a/../b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("GET /a/%2E%2e/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("GET /a/..?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"),
        ("TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"),
        (
            "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nConnection: close\r\n\r\n",
            "405",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
            "400",
        ),
    ];
    for fast_path in [true, false] {
        let (proxy, _up) = with_upstream(|c| c.fast_path = fast_path).await;
        for (request, code) in refused {
            let response = exchange(proxy.addr, request.as_bytes()).await;
            assert!(
                status_line(&response).starts_with(&format!("HTTP/1.1 {code}")),
                "fast path {fast_path}: {request:?} got {response}"
            );
            assert!(
                !response.contains("hello from upstream"),
                "fast path {fast_path}: {request:?} got {response}"
            );
        }
        assert_eq!(
            proxy_common::requests_seen(&proxy),
            0,
            "fast path {fast_path}"
        );
        // What stays allowed: HTTP/1.0 without Host, a name with a port, an IP literal,
        // a single dot segment and dots inside a segment.
        for request in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET /a/./b..c/.d HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: under_score.test\r\nConnection: close\r\n\r\n",
        ] {
            let response = exchange(proxy.addr, request.as_bytes()).await;
            assert_eq!(
                status_line(&response).split(' ').nth(1),
                Some("200"),
                "{response}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected() {
    let (proxy, _up) = with_upstream(|_| {}).await;
    // Before the connection exists, so before the proxy's timer starts.
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The head never ends: the header read timeout (500 ms) closes the connection, with a
    // 408 or without an answer; not before it is due, and far sooner than the default
    // (10 s) would.
    let response = read_until_closed(&mut stream).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "the slow client was kept for {waited:?}"
    );
    assert!(
        response.is_empty() || status_line(&response).starts_with("HTTP/1.1 408"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_forwards_to_an_unconfigured_address() {
    let canary = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary_addr = canary.local_addr().unwrap();
    let (proxy, up) = with_upstream(|_| {}).await;
    // An absolute URI and a Host header that both name the canary.
    let request = format!(
        "GET http://{canary_addr}/secret HTTP/1.1\r\nHost: {canary_addr}\r\nConnection: close\r\n\r\n"
    );
    let response = exchange(proxy.addr, request.as_bytes()).await;
    assert_status(&response, "200");
    assert!(
        response.contains(&format!("x-upstream: {}", up.addr)),
        "{response}"
    );
    assert!(response.contains("GET /secret"), "{response}");
    // A connection to the canary made while the request was served would be waiting in
    // its accept queue by now (the kernel completes a loopback connect at once).
    let canary = canary.into_std().unwrap();
    canary.set_nonblocking(true).unwrap();
    match canary.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the proxy connected to the canary: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_host_modes() {
    let (proxy, up) = with_upstream(|_| {}).await;
    let request = b"GET /h HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.0.0.1\r\n\
        Connection: close, x-private\r\nX-Private: secret\r\n\r\n";
    let response = exchange(proxy.addr, request).await;
    assert!(response.contains("host: example.test"), "{response}");
    assert!(
        response.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1"),
        "{response}"
    );
    drop(proxy);

    let (proxy, up2) = with_upstream(|c| c.upstream.host = HostMode::Upstream).await;
    let request = b"GET /h HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
    let response = exchange(proxy.addr, request).await;
    assert!(
        response.contains(&format!("host: {}", up2.addr)),
        "{response}"
    );
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gets_502_and_silent_one_504() {
    // Nothing listens here: connection refused, retried, then 502 with the reason.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut config = config(&[closed_addr]);
    config.health.enabled = false;
    config.outlier.enabled = false;
    let proxy = proxy::start(&config).await.unwrap();
    let response = get_and_close(proxy.addr).await;
    assert_status(&response, "502");
    // The reason is logged; the client gets a generic text, without the upstream's
    // address or the error chain.
    assert!(
        response.contains("the upstream request failed"),
        "{response}"
    );
    for secret in [
        closed_addr.to_string(),
        closed_addr.port().to_string(),
        "refused".into(),
        "tries".into(),
    ] {
        assert!(!response.contains(&secret), "{secret} in {response}");
    }
    drop(proxy);

    // Accepts and never answers: 504 after the request timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = self::config(&[silent.local_addr().unwrap()]);
    config.timeouts.request = Duration::from_millis(300);
    let proxy = proxy::start(&config).await.unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let response = get_and_close(proxy.addr).await;
    assert_status(&response, "504");
    assert!(response.contains("did not answer"), "{response}");
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_consistent_hashing_goes_to_the_next_upstream() {
    // Ring hash by path, no health checks: a path whose upstream is down is retried on the
    // next upstream of its key's order (nginx's proxy_next_upstream), not on the same one,
    // whether the pooled connection or the connect fails.
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        upstreams.push(
            spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let mut config = config(&addrs);
    config.upstream.strategy = proxy::StrategyKind::RingHash;
    config.health.enabled = false;
    config.outlier.enabled = false;
    let proxy = proxy::start(&config).await.unwrap();
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        async move { exchange(proxy.addr, request.as_bytes()).await }
    };
    let upstream_of = |response: &str| {
        addrs
            .iter()
            .position(|a| response.contains(&format!("x-upstream: {a}")))
    };
    let first = upstream_of(&get("/key").await).expect("an upstream answers");
    upstreams.remove(first).stop();
    // The stop takes effect when the runtime drops the upstream's tasks: wait until it
    // refuses connections (its pooled connections in the proxy are closed or reset by then).
    eventually("the stopped upstream to refuse connections", async || {
        TcpStream::connect(addrs[first]).await.is_err()
    })
    .await;
    for _ in 0..3 {
        let response = get("/key").await;
        assert_status(&response, "200");
        let now = upstream_of(&response).expect("an upstream answers");
        assert_ne!(now, first, "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_down_gets_502_or_with_fail_closed_503() {
    // Two upstreams, both stopped; the active checks (every 100 ms, fall 2) find them
    // down. Failing open (the default, as nginx), the proxy still tries them: 502, with
    // the reason. Failing closed, it has no upstream to offer: 503 after `fail_fast`.
    for fail_closed in [false, true] {
        let a = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b = spawn_demo_upstream("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addrs = [a.addr, b.addr];
        let mut config = config(&addrs);
        config.health.interval = Duration::from_millis(100);
        // A stopped upstream refuses at once; a running one must never time out, however
        // loaded the machine (it would be unhealthy before the first request).
        config.health.timeout = Duration::from_secs(1);
        config.health.fall = 2;
        config.health.fail_closed = fail_closed;
        config.timeouts.fail_fast = Duration::from_millis(200);
        let proxy = proxy::start(&config).await.unwrap();
        assert_status(&get_and_close(proxy.addr).await, "200");
        a.stop();
        b.stop();
        eventually("the checks to find both down", async || {
            proxy
                .endpoints()
                .iter()
                .all(|e| e.state == tower_lb::endpoint::EndpointState::Unhealthy)
        })
        .await;
        let started = Instant::now();
        let response = get_and_close(proxy.addr).await;
        if fail_closed {
            assert_status(&response, "503");
            assert!(response.contains("no upstream is available"), "{response}");
            assert!(
                started.elapsed() >= Duration::from_millis(200),
                "{response}"
            );
        } else {
            assert_status(&response, "502");
            assert!(
                response.contains("the upstream request failed"),
                "{response}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let (proxy, _up) = with_upstream(|_| {}).await;
    let addr = proxy.addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Half a body: the request is in flight (the upstream reads the whole body first).
    stream
        .write_all(b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    eventually("the request in flight", async || {
        proxy.endpoints().iter().map(|e| e.in_flight).sum::<u64>() == 1
    })
    .await;
    let shutdown = tokio::spawn(proxy.shutdown());
    // No new connections once shutdown has begun: the listeners close, while the request
    // in flight still waits for the rest of its body.
    eventually("the listeners to close", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request"
    );
    stream.write_all(b"67890").await.unwrap();
    let response = read_until_closed(&mut stream).await;
    assert_status(&response, "200");
    assert!(response.contains("10 body bytes"), "{response}");
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}

#[test]
fn example_config_file_parses() {
    let text = include_str!("../examples/reverse_proxy.toml");
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.upstream.servers.len(), 3);
    assert_eq!(config.upstream.servers[0].weight, 2);
    assert_eq!(config.upstream.strategy, proxy::StrategyKind::RoundRobin);
    assert_eq!(config.timeouts.connect, Duration::from_secs(2));
    assert_eq!(config.limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(config.limits.send_timeout, Duration::from_secs(60));
    assert_eq!(config.upstream.keepalive, 64);
    assert!(Config::from_toml("[upstream]\nunknown = 1\n").is_err());
    assert!(Config::from_toml("[timeouts]\nconnect = \"2 parsecs\"\n").is_err());
}
