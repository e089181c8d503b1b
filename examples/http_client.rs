//! A hyper-util HTTP client balanced over several upstreams with tower-lb.
//!
//! ```text
//! cargo run --example http_client                       # static list of 3 upstreams
//! cargo run --example http_client --features dns        # upstreams found through DNS
//! cargo run --example http_client -- --requests 100
//! ```
//!
//! The example starts its own upstreams on loopback (each answers with its address), sends
//! `--requests N` requests (default 30) through one balancer, prints each upstream's share,
//! and exits with status 0 when every upstream answered (1 otherwise).
//!
//! - Without the `dns` feature the upstreams are three ports on 127.0.0.1, given to the
//!   balancer as a static list of addresses.
//! - With it, discovery is [`Dns::a`](tower_lb::discover::dns::Dns::a)`("localhost", port)`:
//!   upstreams listen on the same port on 127.0.0.1 and, where the machine has IPv6, on
//!   `::1`, and the name `localhost` (answered by the resolver itself and the hosts file,
//!   never by an outside server) yields both. In production the name would be a
//!   Kubernetes headless service or a Consul service (see `tower_lb::discover::dns`).
//!
//! Either way the balancer is built with
//! [`Builder::build_with`](tower_lb::Builder::build_with), which turns each discovered
//! address into a [`HttpEndpoint`](tower_lb::http::HttpEndpoint): a clone of one shared
//! hyper-util client (one keep-alive pool) that points each request at the address, with a
//! timeout per endpoint inside the balancer, so that a slow endpoint's timeouts count
//! against it. Each response says which upstream served it
//! ([`ServedBy`](tower_lb::http::ServedBy)).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::error::BoxError;
use tower_lb::http::{HttpEndpoint, ServedBy};
use tower_lb::strategy::LeastRequest;
use tower_lb::Balance;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// An upstream that answers every request with its own address.
async fn serve(listener: TcpListener) {
    let addr = listener.local_addr().expect("bound");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(addr.to_string()))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the upstreams; returns their addresses and how the balancer discovers them.
#[cfg(not(feature = "dns"))]
async fn upstreams() -> Result<
    (
        Vec<SocketAddr>,
        impl tower_lb::discover::Discover<SocketAddr, ()>,
    ),
    BoxError,
> {
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(serve(listener));
    }
    println!("discovery: a static list of {} addresses", addrs.len());
    let keys = addrs.iter().map(|a| (*a, ())).collect::<Vec<_>>();
    Ok((addrs, tower_lb::discover::static_list(keys)))
}

/// Starts the upstreams; returns their addresses and how the balancer discovers them.
#[cfg(feature = "dns")]
async fn upstreams() -> Result<
    (
        Vec<SocketAddr>,
        impl tower_lb::discover::Discover<SocketAddr, ()>,
    ),
    BoxError,
> {
    use tower_lb::discover::dns::Dns;
    let v4 = TcpListener::bind("127.0.0.1:0").await?;
    let port = v4.local_addr()?.port();
    let mut addrs = vec![v4.local_addr()?];
    tokio::spawn(serve(v4));
    match TcpListener::bind(("::1", port)).await {
        Ok(v6) => {
            addrs.push(v6.local_addr()?);
            tokio::spawn(serve(v6));
        }
        Err(e) => println!("no IPv6 loopback ({e}); one upstream"),
    }
    println!("discovery: DNS, A and AAAA records of localhost, port {port}");
    let dns = Dns::a("localhost", port)?.min_ttl(Duration::from_secs(1));
    Ok((addrs, dns))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let requests: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 30,
        [flag, n] if flag == "--requests" => n.parse()?,
        _ => return Err("usage: http_client [--requests N]".into()),
    };
    let (addrs, discovery) = upstreams().await?;

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let balance = Balance::builder()
        .strategy(LeastRequest::default())
        .fail_fast(Duration::from_secs(5))
        .build_with(discovery, move |addr: &SocketAddr| {
            // The timeout inside the balancer, per endpoint: a slow endpoint's timeouts
            // are its failures, which outlier detection and least request see.
            ServiceBuilder::new()
                .timeout(Duration::from_secs(2))
                .service(HttpEndpoint::from_addr(client.clone(), *addr))
        })?;

    let mut served_by: HashMap<String, u64> = HashMap::new();
    for _ in 0..requests {
        let mut b = balance.clone();
        let request = Request::get("/").body(Empty::new())?;
        let response = b.ready().await?.call(request).await?;
        let upstream = response
            .extensions()
            .get::<ServedBy>()
            .map(|s| s.name().to_owned());
        *served_by.entry(upstream.unwrap_or_default()).or_default() += 1;
        let body = response.into_body().collect().await?.to_bytes();
        let _from = String::from_utf8_lossy(&body);
    }

    let mut ok = true;
    for addr in &addrs {
        let stats = balance.endpoints().into_iter().find(|e| e.key == *addr);
        let served = stats.map_or(0, |e| e.completed);
        let seen = served_by.get(&addr.to_string()).copied().unwrap_or(0);
        println!("{addr:>24}  {served:>5} requests");
        ok &= served > 0 && seen == served;
    }
    if !ok {
        eprintln!("some upstream got no request");
        std::process::exit(1);
    }
    println!("{requests} requests over {} upstreams: ok", addrs.len());
    Ok(())
}
