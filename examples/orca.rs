//! Server-reported load end to end (feature `orca`): three hyper servers behind
//! `OrcaLayer`, one of them with a CPU antagonist for a while, and a client that balances
//! them with `WeightedRoundRobin`, printing each second every server's report, the weight
//! it gives, and the share of requests it got.
//!
//! ```text
//! cargo run --features orca --example orca
//! ```
//!
//! Each server has two "cores" (a semaphore of two slots); a request holds one for 5 ms.
//! The server reports, through its `ServerMetricRecorder`, the share of its slots that were
//! busy over the last second as `application_utilization`, and `OrcaLayer` adds its requests
//! per second. (The layer's `CpuSampler` reports the process's CPU, the same for the three
//! servers here since they share a process: weighted round robin prefers
//! `application_utilization`, gRFC A114.)
//!
//! From 3 s to 10 s a real CPU-burning thread, the antagonist, takes one of server `c`'s
//! two slots half of the time: `c` can serve less, its utilization rises, and weighted round
//! robin (blackout 1 s, weights updated every 500 ms) sends it less. After the antagonist
//! stops, the shares go back to a third each. The example stops once they have settled, or
//! after 25 s; it fails (exit code 1) if no report arrived, or if `c`'s share did not drop
//! while the antagonist ran.

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
use tower_lb::orca::{CpuSampler, OrcaLayer, ServerMetricRecorder};
use tower_lb::strategy::WeightedRoundRobin;
use tower_lb::{discover, Balance};

const SLOTS: usize = 2;
const WORK: Duration = Duration::from_millis(5);
const RATE: f64 = 300.0;
const ANTAGONIST: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(10));
const LIMIT: Duration = Duration::from_secs(25);

/// One server: its slots (its "cores").
struct Server {
    slots: Arc<Semaphore>,
}

/// Starts a server named `name` on 127.0.0.1; returns its address and slots.
async fn start_server(name: &'static str) -> (SocketAddr, Arc<Server>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server {
        slots: Arc::new(Semaphore::new(SLOTS)),
    });
    let layer = OrcaLayer::new().cpu(CpuSampler::spawn(Duration::from_secs(1)));
    sample_utilization(server.clone(), layer.server_metrics());
    let slots = server.slots.clone();
    let handler = tower::service_fn(move |_req: Request<Incoming>| {
        let slots = slots.clone();
        async move {
            let permit = slots.acquire().await.expect("never closed");
            tokio::time::sleep(WORK).await;
            drop(permit);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))
        }
    });
    let service = layer.layer(handler);
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
    (addr, server)
}

/// Every 10 ms, samples the busy slots; every report carries their mean over the last
/// second as `application_utilization`.
fn sample_utilization(server: Arc<Server>, metrics: ServerMetricRecorder) {
    tokio::spawn(async move {
        let mut samples = std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let busy = SLOTS - server.slots.available_permits();
            samples.push_back(busy as f64 / SLOTS as f64);
            if samples.len() > 100 {
                samples.pop_front();
            }
            let mean = samples.iter().sum::<f64>() / samples.len() as f64;
            metrics.set_application_utilization(mean.max(0.001));
        }
    });
}

/// A CPU-burning thread that takes one of `server`'s slots half of the time, from
/// `ANTAGONIST.0` to `ANTAGONIST.1` after `start`.
fn antagonist(server: Arc<Server>, start: Instant, on: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        std::thread::sleep(ANTAGONIST.0.saturating_sub(start.elapsed()));
        on.store(true, Ordering::Relaxed);
        let mut x = 0u64;
        while start.elapsed() < ANTAGONIST.1 {
            // Hold a slot for 10 ms of burnt CPU, then leave it for 10 ms.
            let permit = loop {
                if let Ok(p) = server.slots.clone().try_acquire_owned() {
                    break p;
                }
                std::thread::yield_now();
            };
            let until = Instant::now() + Duration::from_millis(10);
            while Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            drop(permit);
            std::thread::sleep(Duration::from_millis(10));
        }
        on.store(false, Ordering::Relaxed);
    });
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
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut endpoints = Vec::new();
    let mut servers = HashMap::new();
    for name in ["a", "b", "c"] {
        let (addr, server) = start_server(name).await;
        servers.insert(name, server);
        endpoints.push((
            name,
            ToServer {
                client: client.clone(),
                addr,
            },
        ));
    }
    let antagonist_on = Arc::new(AtomicBool::new(false));
    antagonist(servers["c"].clone(), start, antagonist_on.clone());

    let wrr = WeightedRoundRobin::new()
        .blackout_period(Duration::from_secs(1))
        .weight_update_period(Duration::from_millis(500));
    let formula = wrr.clone();
    let balance = Balance::builder()
        .strategy(wrr)
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

    let mut settled_for = 0;
    let mut c_shares_during = Vec::new();
    let mut reports = 0;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    loop {
        second.tick().await;
        let counts = std::mem::take(&mut *counts.lock().unwrap());
        let total: u64 = counts.values().sum();
        let on = antagonist_on.load(Ordering::Relaxed);
        let mut line = format!("t={:>4.1}s", start.elapsed().as_secs_f64());
        let mut shares = HashMap::new();
        for stats in balance.endpoints() {
            let name = stats.key;
            let share = counts.get(name).copied().unwrap_or(0) as f64 / total.max(1) as f64;
            shares.insert(name, share);
            reports = reports.max(stats.load_reports);
            match &stats.load_report {
                Some(report) => {
                    line += &format!(
                        "  {name}: share {:>3.0} %  util {:.2}  qps {:>4.0}  weight {:>5.0}",
                        share * 100.0,
                        report.application_utilization,
                        report.rps_fractional,
                        formula.weight_of(report),
                    )
                }
                None => {
                    line += &format!("  {name}: share {:>3.0} %  (no report yet)", share * 100.0)
                }
            }
        }
        if on {
            line += "  [antagonist on c]";
            c_shares_during.push(shares["c"]);
        }
        println!("{line}");
        let after = start.elapsed() > ANTAGONIST.1 + Duration::from_secs(1);
        let even = shares.values().all(|s| (s - 1.0 / 3.0).abs() < 0.06);
        settled_for = if after && even { settled_for + 1 } else { 0 };
        if settled_for >= 2 {
            println!("settled: a third each again");
            break;
        }
        if start.elapsed() > LIMIT {
            println!("not settled after {LIMIT:?}");
            break;
        }
    }

    let failed = failures.load(Ordering::Relaxed);
    let c_during = if c_shares_during.is_empty() {
        1.0
    } else {
        c_shares_during.iter().sum::<f64>() / c_shares_during.len() as f64
    };
    println!(
        "reports received: {reports} (most by one server); c's mean share while the antagonist ran: {:.0} %; failed requests: {failed}",
        c_during * 100.0
    );
    if reports == 0 || c_during >= 0.30 {
        eprintln!("expected reports, and a share below 30 % for c while the antagonist ran");
        std::process::exit(1);
    }
}
