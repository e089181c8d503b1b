//! Prequal end to end (feature `prequal`): three hyper servers behind `PrequalLayer`, one
//! of them slowed for a while, and a client that balances them with the `Prequal`
//! strategy, printing each second the probe pool and the share of requests each server got.
//!
//! ```text
//! cargo run --features prequal --example prequal
//! ```
//!
//! Each server has two slots (a semaphore); a request holds one for 5 ms, so requests queue
//! when a server is busy and its requests in flight (RIF) rise. From 3 s to 8 s server `c`
//! takes 40 ms per request instead (a noisy neighbour): its latency estimate at every RIF
//! rises, its probes lose the hot–cold comparison, and its share drops; afterwards it comes
//! back. The client sends 300 requests a second for 11 s. It fails (exit code 1) if no
//! probe was answered, or if `c`'s share did not drop below 20 % while it was slow.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tower_lb::prequal::{HttpTransport, PrequalLayer};
use tower_lb::strategy::Prequal;
use tower_lb::{discover, Balance};

const SLOTS: usize = 2;
const WORK: Duration = Duration::from_millis(5);
const SLOW_WORK: Duration = Duration::from_millis(40);
const RATE: f64 = 300.0;
const SLOW: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(8));
const RUN: Duration = Duration::from_secs(11);

/// Starts a server named `name` on 127.0.0.1 behind `PrequalLayer`; it works `SLOW_WORK`
/// per request while `slow` is set.
async fn start_server(name: &'static str, slow: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slots = Arc::new(Semaphore::new(SLOTS));
    let app = tower::service_fn(move |_req: Request<Incoming>| {
        let (slots, slow) = (slots.clone(), slow.clone());
        async move {
            let _slot = slots.acquire().await.expect("never closed");
            let work = if slow.load(Ordering::Relaxed) {
                SLOW_WORK
            } else {
                WORK
            };
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))
        }
    });
    let service = PrequalLayer::new().layer(app);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// The client for one server.
#[derive(Clone)]
struct ToServer {
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
}

impl Service<()> for ToServer {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let uri = format!("http://{}/", self.addr).parse().unwrap();
        let request = Request::get::<http::Uri>(uri).body(Empty::new()).unwrap();
        self.client.request(request)
    }
}

#[tokio::main]
async fn main() {
    let start = Instant::now();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let slow_c = Arc::new(AtomicBool::new(false));
    let mut endpoints = Vec::new();
    let mut names = HashMap::new();
    for name in ["a", "b", "c"] {
        let slow = if name == "c" {
            slow_c.clone()
        } else {
            Arc::default()
        };
        let addr = start_server(name, slow).await;
        names.insert(addr.to_string(), name);
        // Keyed by address: the probes go to the endpoint's name, `ip:port`.
        endpoints.push((
            addr,
            ToServer {
                client: client.clone(),
                addr,
            },
        ));
    }
    {
        let slow_c = slow_c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SLOW.0).await;
            slow_c.store(true, Ordering::Relaxed);
            tokio::time::sleep(SLOW.1 - SLOW.0).await;
            slow_c.store(false, Ordering::Relaxed);
        });
    }

    let prequal = Prequal::new(HttpTransport::new(client.clone()));
    let monitor = prequal.monitor();
    let balance = Balance::builder()
        .strategy(prequal)
        .build(discover::static_list(endpoints))
        .unwrap();

    // Open-loop load: RATE requests per second, each counted by the server that answered.
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    {
        let (balance, counts, failures) = (balance.clone(), counts.clone(), failures.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
            loop {
                tick.tick().await;
                let (mut balance, counts, failures) =
                    (balance.clone(), counts.clone(), failures.clone());
                tokio::spawn(async move {
                    let answer = async {
                        let response = balance.ready().await?.call(()).await?;
                        let body = response.into_body().collect().await?.to_bytes();
                        Ok::<_, tower_lb::error::BoxError>(
                            String::from_utf8_lossy(&body).into_owned(),
                        )
                    };
                    match answer.await {
                        Ok(name) => *counts.lock().unwrap().entry(name).or_default() += 1,
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
    }

    let mut c_shares_slow = Vec::new();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    while start.elapsed() < RUN {
        second.tick().await;
        let counts = std::mem::take(&mut *counts.lock().unwrap());
        let total = counts.values().sum::<u64>().max(1) as f64;
        let share = |n: &str| counts.get(n).copied().unwrap_or(0) as f64 / total;
        let slow = slow_c.load(Ordering::Relaxed);
        println!(
            "t={:>4.1}s  shares a {:>3.0} %  b {:>3.0} %  c {:>3.0} %{}",
            start.elapsed().as_secs_f64(),
            share("a") * 100.0,
            share("b") * 100.0,
            share("c") * 100.0,
            if slow { "  [c slowed]" } else { "" }
        );
        let pool: Vec<String> = monitor
            .pool()
            .iter()
            .map(|p| {
                format!(
                    "{}: rif {} lat {:.1} ms{}",
                    names.get(&*p.endpoint).copied().unwrap_or("?"),
                    p.rif,
                    p.latency.as_secs_f64() * 1000.0,
                    if p.hot { " hot" } else { "" }
                )
            })
            .collect();
        println!("          pool [{}]", pool.join(", "));
        if slow {
            c_shares_slow.push(share("c"));
        }
    }

    let stats = monitor.stats();
    let c_slow = if c_shares_slow.is_empty() {
        1.0
    } else {
        c_shares_slow.iter().sum::<f64>() / c_shares_slow.len() as f64
    };
    println!(
        "{stats:?}\nc's mean share while slowed: {:.0} %; failed requests: {}",
        c_slow * 100.0,
        failures.load(Ordering::Relaxed)
    );
    if stats.probes_answered == 0 || c_slow >= 0.20 {
        eprintln!("expected answered probes, and a share below 20 % for c while it was slowed");
        std::process::exit(1);
    }
}
