//! Prequal in the simulator (feature `prequal`): the scenario `prequal`, the backends'
//! side of the protocol (each backend answers probes from its true state: its requests in
//! flight, and the median latency at that RIF from a `LoadEstimator`), the contestants, and
//! the table of the goals with the probes' cost.
//!
//! A child module of `sim.rs`, so that it reaches the engine's private parts (the
//! dispatcher, `ours_with`) without widening them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Service;
use tower_lb::health::ProbeTarget;
use tower_lb::prequal::{LoadEstimator, ProbeAnswer, Selection, ServiceTransport};
use tower_lb::strategy::Prequal;

use super::*;

/// The time a probe takes there and back (the simulator's clock has whole milliseconds).
const PROBE_RTT: Duration = Duration::from_millis(1);

/// The name a backend has on the wire in the byte count: `10.0.0.N:8080`.
const HOST_LEN: u64 = 13;

/// The probes of one contestant's run: how many, and the bytes of their HTTP/1.1 requests
/// and answers.
#[derive(Debug, Default)]
pub struct Cost {
    pub probes: AtomicU64,
    pub bytes: AtomicU64,
}

/// The cost of each Prequal contestant's last run, by contestant name (runs are
/// sequential; the table reads it after the runs).
pub fn costs() -> &'static Mutex<HashMap<String, Arc<Cost>>> {
    static COSTS: std::sync::OnceLock<Mutex<HashMap<String, Arc<Cost>>>> =
        std::sync::OnceLock::new();
    COSTS.get_or_init(Default::default)
}

/// The bytes of one probe over HTTP/1.1: `GET /prequal/probe HTTP/1.1`, a `host` header,
/// and the answer `HTTP/1.1 200 OK` with the two headers and `content-length: 0`.
pub fn probe_bytes(answer: &ProbeAnswer) -> u64 {
    let digits = |v: u64| v.to_string().len() as u64;
    let request = 29 + (6 + HOST_LEN + 2) + 2;
    let response =
        17 + (15 + digits(answer.rif) + 2) + (22 + digits(answer.latency_us) + 2) + 19 + 2;
    request + response
}

/// A backend behind Prequal's server side: every request counts in its estimator from the
/// call until its answer (or until the client gives up).
#[derive(Clone)]
struct Estimated {
    backend: Backend,
    estimator: Arc<LoadEstimator>,
}

impl Service<SimRequest> for Estimated {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.backend.poll_ready(cx)
    }

    fn call(&mut self, request: SimRequest) -> BackendFuture {
        let arrival = self.estimator.arrive();
        let future = self.backend.call(request);
        Box::pin(async move {
            let result = future.await;
            arrival.complete();
            result
        })
    }
}

/// Runs the Prequal contestant `c` (`Algo::Prequal` or `Algo::PrequalRifOnly`).
pub(super) async fn contest(env: &Env<'_>, c: Contestant) {
    let estimators: Arc<Vec<Arc<LoadEstimator>>> = Arc::new(
        env.backends
            .iter()
            .map(|_| Arc::new(LoadEstimator::new()))
            .collect(),
    );
    let cost = Arc::new(Cost::default());
    costs().lock().unwrap().insert(c.name(), cost.clone());
    let answers = estimators.clone();
    let probe = tower::service_fn(move |target: ProbeTarget| {
        let estimators = answers.clone();
        let cost = cost.clone();
        async move {
            // The endpoints' keys are the backends' indices: their names are "0", "1", ...
            let i: usize = target.name().parse().map_err(BoxError::from)?;
            tokio::time::sleep(PROBE_RTT).await;
            let answer = estimators[i].answer();
            cost.probes.fetch_add(1, Relaxed);
            cost.bytes.fetch_add(probe_bytes(&answer), Relaxed);
            Ok::<_, BoxError>(answer)
        }
    });
    let selection = match c.algo {
        Algo::PrequalRifOnly => Selection::RifOnly,
        _ => Selection::HotCold,
    };
    let strategy = Prequal::new(ServiceTransport::new(probe))
        .selection(selection)
        .with_seed(env.seed);
    ours_with(env, c, strategy, move |b: &Backend| Estimated {
        backend: b.clone(),
        estimator: estimators[b.0.index].clone(),
    })
    .await;
}

/// The contestants of the scenario `prequal`.
fn contestants() -> Vec<Contestant> {
    use Algo::*;
    let mut contestants = vec![
        Contestant::new(Prequal),
        Contestant::new(PrequalRifOnly),
        Contestant::new(PeakEwma),
        Contestant::new(LeastRequest),
        Contestant::new(RoundRobin),
        Contestant::new(TowerPeakEwma),
        Contestant::new(Oracle),
    ];
    if cfg!(feature = "orca") {
        contestants.insert(2, Contestant::new(WeightedRoundRobin));
    }
    contestants
}

/// The load levels, relative to the allocated capacity: the paper's ramp from 0.75× to
/// 1.74×, with a step at 0.9 (the goals' level; after weighted round robin's 10 s blackout).
pub const LEVELS: [f64; 6] = [0.75, 0.9, 1.0, 1.25, 1.5, 1.74];

/// The step of the goals' latency figures: 0.9.
const AT: usize = 1;

/// Prequal's testbed (NSDI 2024, §5), scaled to a simulation: many independent clients
/// over a hundred heterogeneous backends with noisy neighbours, and a load ramp past the
/// allocated capacity.
pub fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 20.0 };
    let n = slots(2, o);
    let count = 100;
    let mut rng = SimRng::derived(derive_seed(o.seed, "prequal"), "backends");
    let mut backends = Vec::with_capacity(count);
    // The allocation: what each backend serves at its own speed without spare CPU.
    let mut capacity = 0.0;
    for _ in 0..count {
        let mut b = BackendSpec::new(base, Some(n));
        // Machines of different generations: 0.5× to 1.5× the allocation's speed...
        let own = rng.uniform(0.5, 1.5);
        let mut at = 0.0;
        while at < duration.as_secs_f64() {
            // ...and antagonists on each machine that come and go: 30 % of the time they
            // hold it at its allocation, otherwise they leave spare CPU.
            let spare = if rng.unit() < 0.3 {
                rng.uniform(1.0, 1.2)
            } else {
                rng.uniform(1.5, 3.0)
            };
            b.speed.push((secs(at), own * spare));
            at += rng.exp(4.0);
        }
        capacity += b.capacity().expect("slots") * own;
        backends.push(b);
    }
    let clients = if o.clients > 1 { o.clients } else { 100 };
    let deadline = Duration::from_secs(1);
    let mut sc = ramped(
        "prequal", o, duration, deadline, backends, capacity, &LEVELS,
    );
    sc.title =
        "Prequal's testbed: 100 clients, 100 heterogeneous backends, a load ramp to 1.74×".into();
    sc.notes = vec![
        slots_note(count, n, base) + ".",
        "Heterogeneous speeds: each backend's own speed is uniform in 0.5 to 1.5; antagonists (noisy neighbours) change it after exponential times (mean 4 s): 30 % of the time × 1.0 to 1.2 (the allocation), otherwise × 1.5 to 3.0 (spare CPU).".into(),
        format!(
            "Allocated capacity (own speeds × 1) {capacity:.0} req/s; load in steps of {:.0} s at 0.75, 0.9, 1.0, 1.25, 1.5, 1.74 of it (Poisson); 1 s deadline.",
            duration.as_secs_f64() / LEVELS.len() as f64
        ),
        format!("Prequal's backends answer probes from their true state (requests in flight, and the median latency at that RIF, `LoadEstimator`), after a {} ms round trip. Weighted round robin reads ORCA reports (utilization including the antagonists).", PROBE_RTT.as_millis()),
    ];
    sc.contestants = contestants();
    sc.clients = clients;
    sc.reports = true;
    sc
}

/// The goals' table: latency at 0.9, failures along the ramp, and the probes' cost.
pub fn goals(report: &Report) -> String {
    use std::fmt::Write;
    let costs = costs().lock().unwrap();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nAt 0.9 load (ms), failed requests along the whole ramp (0.75× to 1.74×), and the probes' cost per request.\n"
    );
    let _ = writeln!(
        s,
        "| strategy | p50 | p99 | p99.9 | failed along the ramp | probes / request | probe bytes / request |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for run in &report.runs {
        let at = &run.steps[AT];
        let failed: f64 = run
            .steps
            .iter()
            .map(|m| m.requests as f64 * (100.0 - m.success) / 100.0)
            .sum();
        let (probes, bytes) = match costs.get(&run.name) {
            Some(cost) => (
                format!(
                    "{:.2}",
                    cost.probes.load(Relaxed) as f64 / report.requests as f64
                ),
                format!(
                    "{:.0}",
                    cost.bytes.load(Relaxed) as f64 / report.requests as f64
                ),
            ),
            None => ("0".into(), "0".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {probes} | {bytes} |",
            run.name,
            ms(at.p50),
            ms(at.p99),
            ms(at.p999),
            failed
        );
    }
    s
}
