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
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;
use tower_lb::health::ProbeTarget;
use tower_lb::prequal::{LoadEstimator, ProbeAnswer, Selection, ServiceTransport};
use tower_lb::strategy::Prequal;

use super::backend::{Backend, BackendFuture, SimRequest};
use super::contest::ours_with;
use super::contestants::{Algo, Contestant};
use super::drive::Env;
use super::report::{ms, Report};
use super::BoxError;

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
    let strategy = move |seed| {
        Prequal::new(ServiceTransport::new(probe.clone()))
            .selection(selection)
            .with_seed(seed)
    };
    ours_with(env, c, strategy, move |b: &Backend| Estimated {
        backend: b.clone(),
        estimator: estimators[b.0.index].clone(),
    })
    .await;
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
        let at = &run.steps[report.step("0.90×")];
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
