//! Scenario `fleet`: many clients, each balancing over its own subset of the backends
//! (`tower_lb::discover::subset`), for the four subsetting algorithms of the crate.
//!
//! - 300 clients and 300 backends (`--clients N` changes the client count). Every client
//!   is a real `Balance` (smooth weighted round robin) over the subset adapter over its
//!   own discovery channel, which lists every backend.
//! - Backends serve 2 requests at once (a FIFO queue behind), service times exponential
//!   with a mean of 20 ms: 100 req/s each. Clients send Poisson arrivals adding up to 60 %
//!   of the fleet's capacity, each client the same rate, for 10 s of tokio's paused clock
//!   (`--time-scale` scales it).
//! - Reported: connections per backend (subset memberships; max and min over the mean),
//!   requests per backend (max over mean), p99 latency, memory per balancer (resident
//!   memory before and after building the fleet, over the clients: adapter, balancer,
//!   driver task and strategy table), and churn:
//!   - one backend added, then one removed (the middle one by name): sent to every
//!     client's channel, churn read from the adapters' stats (members that joined and left);
//!   - clients C -> C + 1: every client's subset computed for C and for C + 1 clients.
//!
//!   The ideal churn is what any algorithm with the same subset sizes must move: the new
//!   backend's fair share of connections (the mean), the removed backend's connections,
//!   and the new client's own subset (no existing client needs to change).
//!
//! Writes `fleet.md` (the table) and `fleet-connections.svg` (connections per backend,
//! sorted, per algorithm).

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::subset::{
    self, Aperture, Deterministic, Random, Ringsteady, SubsetHandle, Subsetting,
};
use tower_lb::discover::{self, Sender};
use tower_lb::strategy::RoundRobin;
use tower_lb::{Balance, Endpoint};

use crate::sim::{derive_seed, Options, SimRng};

const BACKENDS: usize = 300;
const SLOTS: usize = 2;
const MEAN_MS: f64 = 20.0;
const LOAD: f64 = 0.6;
const SECONDS: f64 = 10.0;

/// One algorithm with its settings.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Deterministic(usize),
    Random(usize),
    Aperture(usize),
    Ringsteady(usize),
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Deterministic(k) => format!("deterministic (SRE book), size {k}"),
            Kind::Random(k) => format!("random (gRFC A68), size {k}"),
            Kind::Aperture(k) => format!("ring (Finagle d-aperture), aperture {k}"),
            Kind::Ringsteady(k) => format!("ring (Ringsteady, stable indices), size {k}"),
        }
    }

    fn size(self) -> usize {
        match self {
            Kind::Deterministic(k) | Kind::Random(k) | Kind::Aperture(k) | Kind::Ringsteady(k) => k,
        }
    }

    fn algorithm(self, id: usize, clients: usize, seed: u64) -> Box<dyn Subsetting> {
        match self {
            Kind::Deterministic(k) => Box::new(Deterministic::new(id as u64, k).unwrap()),
            Kind::Random(k) => {
                let salt = derive_seed(seed, &format!("client {id}"));
                Box::new(Random::with_seed(k, salt).unwrap())
            }
            Kind::Aperture(k) => Box::new(
                Aperture::new(id as u64, clients as u64)
                    .unwrap()
                    .aperture(k)
                    .unwrap(),
            ),
            // The backends' stable indices are their places in the fleet's inventory,
            // which their addresses encode here (see `backend_name`).
            Kind::Ringsteady(k) => Box::new(
                Ringsteady::new(id as u64, k)
                    .unwrap()
                    .index_by(backend_index),
            ),
        }
    }
}

/// A simulated backend: `SLOTS` requests at once, exponential service times.
#[derive(Clone)]
struct Server {
    slots: Arc<Semaphore>,
    served: Arc<AtomicU64>,
    rng: Arc<Mutex<SimRng>>,
}

impl Service<()> for Server {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        self.served.fetch_add(1, Relaxed);
        let ms = self.rng.lock().unwrap().exp(MEAN_MS);
        let slots = self.slots.clone();
        Box::pin(async move {
            let _slot = slots.acquire().await.expect("never closed");
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            Ok(())
        })
    }
}

fn backend_name(i: usize) -> String {
    format!("10.1.{}.{}:8080", i / 100, i % 100)
}

/// The inverse of `backend_name`: the backend's index in the fleet.
fn backend_index(name: &str) -> Option<u64> {
    let mut octets = name.strip_prefix("10.1.")?.split(':').next()?.split('.');
    let (high, low): (u64, u64) = (octets.next()?.parse().ok()?, octets.next()?.parse().ok()?);
    Some(high * 100 + low)
}

fn server(i: usize, seed: u64) -> Server {
    Server {
        slots: Arc::new(Semaphore::new(SLOTS)),
        served: Arc::new(AtomicU64::new(0)),
        rng: Arc::new(Mutex::new(SimRng::new(derive_seed(seed, &backend_name(i))))),
    }
}

type Client = Balance<String, Server, RoundRobin, ErrorsAsFailures>;

/// The results of one algorithm.
struct Outcome {
    name: String,
    connections: Vec<u32>,
    /// Connections per backend after one backend was added.
    connections_grown: Vec<u32>,
    requests: Vec<u64>,
    p99_ms: f64,
    memory_per_client: f64,
    /// Backend added, backend removed, client added.
    churn: [Churn; 3],
    wall: Duration,
}

fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0)
}

/// Lets every balancer's driver apply what its channel holds.
async fn settle() {
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Members that joined and left over all clients since `before`, and the most that
/// changed (joined or left) in one client.
fn churn_since(handles: &[SubsetHandle<String>], before: &[(u64, u64)]) -> Churn {
    let mut churn = Churn::default();
    for (h, b) in handles.iter().zip(before) {
        let s = h.stats();
        let (joined, left) = (s.joined - b.0, s.left - b.1);
        churn.joined += joined;
        churn.left += left;
        churn.most = churn.most.max(joined.max(left));
    }
    churn
}

/// Subset changes over a fleet, and the ideal.
#[derive(Debug, Clone, Copy, Default)]
struct Churn {
    joined: u64,
    left: u64,
    /// The most members that joined (or left) in one client.
    most: u64,
    ideal: f64,
}

fn counters(handles: &[SubsetHandle<String>]) -> Vec<(u64, u64)> {
    handles
        .iter()
        .map(|h| {
            let s = h.stats();
            (s.joined, s.left)
        })
        .collect()
}

fn count_connections(handles: &[SubsetHandle<String>], names: &[String]) -> Vec<u32> {
    let mut count = vec![0u32; names.len()];
    for h in handles {
        for key in h.stats().keys() {
            if let Some(i) = names.iter().position(|n| n == key) {
                count[i] += 1;
            }
        }
    }
    count
}

/// Subset changes of the existing clients when the fleet grows from `clients` to
/// `clients + 1`, plus the new client's subset.
fn client_churn(kind: Kind, clients: usize, seed: u64, names: &[&str]) -> Churn {
    let members = |id: usize, count: usize| -> HashSet<usize> {
        let algo = kind.algorithm(id, count, seed);
        algo.select(names).into_iter().map(|(i, _)| i).collect()
    };
    let mut churn = Churn::default();
    for id in 0..clients {
        let (before, after) = (members(id, clients), members(id, clients + 1));
        let joined = after.difference(&before).count() as u64;
        let left = before.difference(&after).count() as u64;
        churn.joined += joined;
        churn.left += left;
        churn.most = churn.most.max(joined.max(left));
    }
    churn.joined += members(clients, clients + 1).len() as u64;
    churn.ideal = kind.size() as f64;
    churn
}

/// The clients of one algorithm, with their own backends.
struct Fleet {
    kind: Kind,
    servers: Vec<Server>,
    clients: Vec<(Client, Sender<String, Server>, SubsetHandle<String>)>,
    memory_per_client: f64,
    built: Duration,
}

/// Builds the fleet of `kind`: a channel, an adapter and a balancer per client. Fleets
/// are built one after the other and kept, so each one's resident memory is fresh memory.
async fn build(kind: Kind, clients: usize, seed: u64) -> Fleet {
    let wall = std::time::Instant::now();
    let servers: Vec<Server> = (0..=BACKENDS).map(|i| server(i, seed)).collect();
    let before = resident_bytes();
    let mut fleet = Vec::with_capacity(clients);
    for id in 0..clients {
        let (tx, rx) = discover::channel();
        let endpoints = (0..BACKENDS)
            .map(|i| Endpoint::new(backend_name(i), servers[i].clone()))
            .collect();
        tx.reset(endpoints).unwrap();
        let (source, handle) = subset::subset(rx, kind.algorithm(id, clients, seed));
        let balance = Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .build(source)
            .expect("valid settings");
        fleet.push((balance, tx, handle));
    }
    settle().await;
    Fleet {
        kind,
        servers,
        memory_per_client: (resident_bytes() - before) / clients as f64,
        clients: fleet,
        built: wall.elapsed(),
    }
}

/// Resident memory per balancer of `clients` balancers over a static list of 10 backends
/// each, without subsetting: the baseline of the memory figures.
async fn baseline_memory(clients: usize, seed: u64) -> f64 {
    let servers: Vec<Server> = (0..10).map(|i| server(i, seed)).collect();
    let before = resident_bytes();
    let mut kept = Vec::with_capacity(clients);
    for _ in 0..clients {
        let list = (0..10).map(|i| (backend_name(i), servers[i].clone()));
        let balance: Client = Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .build(discover::static_list(list))
            .expect("valid settings");
        kept.push(balance);
    }
    settle().await;
    (resident_bytes() - before) / clients as f64
}

/// Sends the requests, then the discovery changes, and measures.
async fn drive(fleet: Fleet, options: &Options) -> Outcome {
    let wall = std::time::Instant::now();
    let (kind, seed, clients) = (fleet.kind, options.seed, fleet.clients.len());
    let servers = &fleet.servers;
    let handles: Vec<SubsetHandle<String>> = fleet.clients.iter().map(|f| f.2.clone()).collect();
    let names: Vec<String> = (0..BACKENDS).map(backend_name).collect();
    let connections = count_connections(&handles, &names);
    // Requests: Poisson arrivals, every client the same rate.
    let seconds = SECONDS * options.time_scale;
    let rate = LOAD * BACKENDS as f64 * SLOTS as f64 * 1000.0 / MEAN_MS;
    let mut rng = SimRng::new(derive_seed(seed, "fleet arrivals"));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut t = 0.0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        t += rng.exp(1000.0 / rate) / 1000.0;
        if t >= seconds {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
        let client = (rng.next_u64() % clients as u64) as usize;
        let mut balance = fleet.clients[client].0.clone();
        let latencies = latencies.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            balance
                .ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("answered");
            latencies
                .lock()
                .unwrap()
                .push(sent.elapsed().as_secs_f64() * 1000.0);
        });
    }
    while tasks.join_next().await.is_some() {}
    let requests: Vec<u64> = servers[..BACKENDS]
        .iter()
        .map(|s| s.served.load(Relaxed))
        .collect();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_by(f64::total_cmp);
    let p99_ms = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];

    // Churn through the adapters: one backend added, then the middle one removed.
    let mark = counters(&handles);
    for (_, tx, _) in &fleet.clients {
        tx.insert(backend_name(BACKENDS), servers[BACKENDS].clone())
            .unwrap();
    }
    settle().await;
    let mut added = churn_since(&handles, &mark);
    let mut grown: Vec<String> = (0..=BACKENDS).map(backend_name).collect();
    grown.sort();
    let after_add = count_connections(&handles, &grown);
    added.ideal = f64::from(after_add.iter().sum::<u32>()) / grown.len() as f64;
    let middle = grown.len() / 2;
    let mark = counters(&handles);
    for (_, tx, _) in &fleet.clients {
        tx.remove(grown[middle].clone()).unwrap();
    }
    settle().await;
    let mut removed = churn_since(&handles, &mark);
    removed.ideal = f64::from(after_add[middle]);

    let mut sorted_names: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted_names.sort();
    let grown = client_churn(kind, clients, seed, &sorted_names);

    Outcome {
        name: kind.name(),
        connections,
        connections_grown: after_add.clone(),
        requests,
        p99_ms,
        memory_per_client: fleet.memory_per_client,
        churn: [added, removed, grown],
        wall: fleet.built + wall.elapsed(),
    }
}

fn ratios(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    (max / mean, min / mean)
}

/// Runs the scenario, prints the table, writes `fleet.md` and `fleet-connections.svg`.
pub fn main(options: &Options, out: &std::path::Path) -> std::io::Result<()> {
    let clients = if options.clients > 1 {
        options.clients
    } else {
        300
    };
    let kinds = [
        Kind::Deterministic(10),
        Kind::Random(10),
        Kind::Aperture(10),
        Kind::Ringsteady(10),
        Kind::Random(BACKENDS * 3 / 10),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let outcomes = rt.block_on(async {
        // One-off allocations (timers, the runtime's queues) before measuring.
        drop(build(kinds[0], 1, options.seed).await);
        let mut fleets = Vec::new();
        for kind in kinds {
            fleets.push(build(kind, clients, options.seed).await);
        }
        let baseline = baseline_memory(clients, options.seed).await;
        let mut outcomes = Vec::new();
        for fleet in fleets {
            let outcome = drive(fleet, options).await;
            eprintln!("  {:<45} {:.1} s", outcome.name, outcome.wall.as_secs_f64());
            outcomes.push(outcome);
        }
        (outcomes, baseline)
    });
    let (outcomes, baseline) = outcomes;
    let mut table = markdown(&outcomes, clients, options);
    table.push_str(&random_spread(clients));
    let _ = writeln!(
        table,
        "\nFor comparison, a balancer over a static list of its 10 backends, without subsetting: {:.1} KiB; the rest of the memory per balancer is the adapter's copy of the full set.",
        baseline / 1024.0
    );
    println!("{table}");
    std::fs::write(out.join("fleet.md"), &table)?;
    std::fs::write(out.join("fleet-connections.svg"), svg(&outcomes, clients))?;
    eprintln!("fleet: written to {}", out.display());
    Ok(())
}

fn markdown(outcomes: &[Outcome], clients: usize, options: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### fleet: {clients} clients × {BACKENDS} backends\n\n`cargo run --release --example simulate -- --scenario fleet` (seed {}, time scale {}). Load {:.0} % of capacity, {:.0} s of paused clock; churn as members joined / left over all clients (the ideal in brackets), and the most that changed in one client.\n",
        options.seed,
        options.time_scale,
        LOAD * 100.0,
        SECONDS * options.time_scale
    );
    s.push_str("| algorithm | connections max/mean | min/mean | max/mean with B + 1 backends | requests max/mean | p99 | backend added | backend removed | clients C → C+1 | memory per balancer | wall |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for o in outcomes {
        let (cmax, cmin) = ratios(
            &o.connections
                .iter()
                .map(|&c| f64::from(c))
                .collect::<Vec<_>>(),
        );
        let (gmax, _) = ratios(
            &o.connections_grown
                .iter()
                .map(|&c| f64::from(c))
                .collect::<Vec<_>>(),
        );
        let (rmax, _) = ratios(&o.requests.iter().map(|&r| r as f64).collect::<Vec<_>>());
        let churn = |c: Churn| {
            format!(
                "{} / {} ({:.0}), ≤ {} per client",
                c.joined, c.left, c.ideal, c.most
            )
        };
        let _ = writeln!(
            s,
            "| {} | {cmax:.2} | {cmin:.2} | {gmax:.2} | {rmax:.2} | {:.0} ms | {} | {} | {} | {:.1} KiB | {:.1} s |",
            o.name,
            o.p99_ms,
            churn(o.churn[0]),
            churn(o.churn[1]),
            churn(o.churn[2]),
            o.memory_per_client / 1024.0,
            o.wall.as_secs_f64()
        );
    }
    s
}

/// The connection spread of random 30 % subsets over 20 seeds, computed from the subsets
/// alone (the SRE book: least loaded 63 %, most loaded 121 % of the mean).
fn random_spread(clients: usize) -> String {
    let names: Vec<String> = (0..BACKENDS).map(backend_name).collect();
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort();
    let kind = Kind::Random(BACKENDS * 3 / 10);
    let (mut lows, mut highs) = (Vec::new(), Vec::new());
    for seed in 1..=20 {
        let mut count = vec![0.0; BACKENDS];
        for id in 0..clients {
            for (i, _) in kind.algorithm(id, clients, seed).select(&sorted) {
                count[i] += 1.0;
            }
        }
        let (high, low) = ratios(&count);
        lows.push(low);
        highs.push(high);
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(f64::MIN, f64::max);
        format!("{lo:.2} to {hi:.2}")
    };
    format!(
        "\nRandom 30 % subsets over seeds 1 to 20 (`--seed`), connections from the subsets alone: least loaded {} of the mean, most loaded {} (SRE book: 0.63 and 1.21).\n",
        range(&lows),
        range(&highs)
    )
}

/// Connections per backend, one panel per algorithm: a bar per backend in name order,
/// on a scale from 0 to twice the mean, with the mean dashed.
fn svg(outcomes: &[Outcome], clients: usize) -> String {
    const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
    let (w, panel, gap) = (900.0, 110.0, 46.0);
    let (left, right, top) = (60.0, 20.0, 40.0);
    let h = top + outcomes.len() as f64 * (panel + gap);
    let pw = w - left - right;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"system-ui, sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">Connections per backend: {clients} clients, {BACKENDS} backends (bars in backend name order; dashed: the mean)</text>\n"
    );
    for (k, o) in outcomes.iter().enumerate() {
        let values: Vec<f64> = o.connections.iter().map(|&c| f64::from(c)).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let (high, low) = ratios(&values);
        let y0 = top + k as f64 * (panel + gap) + 20.0;
        let base = y0 + panel;
        let scale = panel / (2.0 * mean);
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"{:.1}\" font-size=\"13\">{}: max/mean {high:.2}, min/mean {low:.2}</text>",
            y0 - 6.0,
            o.name.replace('&', "&amp;")
        );
        for (label, v) in [
            ("0", 0.0),
            (format!("{mean:.0}").as_str(), mean),
            (format!("{:.0}", 2.0 * mean).as_str(), 2.0 * mean),
        ] {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                left - 6.0,
                base - v * scale + 4.0
            );
        }
        let bar = pw / values.len() as f64;
        let colour = COLOURS[k % COLOURS.len()];
        for (i, v) in values.iter().enumerate() {
            let height = v.min(2.0 * mean) * scale;
            let _ = writeln!(
                s,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{height:.2}\" fill=\"{colour}\"/>",
                left + i as f64 * bar,
                base - height,
                bar * 0.85
            );
        }
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"5 3\"/><line x1=\"{left}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#888\"/>",
            left + pw,
            base - mean * scale,
            base - mean * scale,
            left + pw
        );
    }
    s.push_str("</svg>\n");
    s
}
