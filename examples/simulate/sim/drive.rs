//! Running a scenario: the open-loop arrivals ([`arrivals`]), the dispatcher every
//! contestant shares, and [`run_contestant`] / [`run`], which play each contestant on its
//! own paused runtime and collect the outcomes into a [`Run`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::backend::{Backend, SimRequest};
use super::contest::contest;
use super::contestants::Contestant;
use super::model::Scenario;
use super::report::{Report, Run, Summary};
use super::rng::{derive_seed, SimRng};
use super::BoxError;

/// One request of the open-loop load.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at_ms: u64,
    pub step: u16,
    /// Which client (balancer) sends it.
    pub client: u16,
    pub key: Option<u64>,
}

/// The arrivals of `sc`: Poisson at each step's rate, in whole milliseconds.
pub fn arrivals(sc: &Scenario) -> Vec<Arrival> {
    let mut rng = SimRng::derived(sc.seed, "arrivals");
    let mut keys = SimRng::derived(sc.seed, "keys");
    let mut clients = SimRng::derived(sc.seed, "clients");
    let end = sc.duration.as_secs_f64();
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut step = 0;
    loop {
        while step + 1 < sc.steps.len() && t >= sc.steps[step].until.as_secs_f64() {
            step += 1;
        }
        t += rng.exp(1.0 / sc.steps[step].rate);
        if t >= end {
            break;
        }
        while step + 1 < sc.steps.len() && t >= sc.steps[step].until.as_secs_f64() {
            step += 1;
        }
        out.push(Arrival {
            at_ms: (t * 1000.0) as u64,
            step: step as u16,
            client: ((u128::from(clients.next_u64()) * sc.clients as u128) >> 64) as u16,
            key: sc.keys.as_ref().map(|z| z.sample(&mut keys)),
        });
    }
    out
}

/// Each request's outcome: latency in µs << 1 | ok; `u64::MAX` until set.
struct Outcomes(Vec<AtomicU64>);

impl Outcomes {
    fn new(n: usize) -> Self {
        Outcomes((0..n).map(|_| AtomicU64::new(u64::MAX)).collect())
    }

    fn set(&self, i: usize, latency: Duration, ok: bool) {
        self.0[i].store(((latency.as_micros() as u64) << 1) | u64::from(ok), Relaxed);
    }
}

/// What the dispatcher needs.
pub(super) struct Env<'a> {
    pub(super) sc: &'a Scenario,
    plan: &'a [Arrival],
    epoch: Instant,
    pub(super) backends: &'a [Backend],
    outcomes: Arc<Outcomes>,
    pub(super) seed: u64,
}

/// The open-loop dispatcher, the same for every contestant.
///
/// `clients` holds one service per client; each request goes to its arrival's client.
pub(super) async fn drive<S>(
    env: &Env<'_>,
    mut clients: Vec<S>,
    mut change: impl FnMut(usize, bool),
) where
    S: Service<SimRequest, Response = http::Response<()>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let deadline = env.sc.deadline;
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut next_change = 0;
    for (i, arrival) in env.plan.iter().enumerate() {
        let offset = Duration::from_millis(arrival.at_ms);
        let at = env.epoch + offset;
        if Instant::now() < at {
            tokio::time::sleep_until(at).await;
        }
        while let Some(m) = env.sc.membership.get(next_change) {
            if m.at > offset {
                break;
            }
            change(m.backend, m.listed);
            next_change += 1;
        }
        let due = at + deadline;
        let request = SimRequest { key: arrival.key };
        let n = clients.len();
        let svc = &mut clients[usize::from(arrival.client) % n];
        match tokio::time::timeout_at(due, svc.ready()).await {
            Ok(Ok(ready)) => {
                let future = ready.call(request);
                let outcomes = env.outcomes.clone();
                let outstanding = outstanding.clone();
                outstanding.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout_at(due, future).await,
                        Ok(Ok(response)) if response.status() == http::StatusCode::OK
                    );
                    outcomes.set(i, Instant::now().saturating_duration_since(at), ok);
                    outstanding.fetch_sub(1, Relaxed);
                });
            }
            Ok(Err(_)) | Err(_) => {
                env.outcomes
                    .set(i, Instant::now().saturating_duration_since(at), false);
            }
        }
    }
    while outstanding.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs one contestant on `plan` (the scenario's arrivals) on its own paused runtime.
pub fn run_contestant(sc: &Scenario, plan: &[Arrival], c: Contestant) -> Run {
    let wall = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let outcomes = Arc::new(Outcomes::new(plan.len()));
    let backends = rt.block_on(async {
        let epoch = Instant::now();
        let backends: Vec<Backend> = sc
            .backends
            .iter()
            .enumerate()
            .map(|(i, spec)| Backend::new(i, spec.clone(), epoch, sc))
            .collect();
        let env = Env {
            sc,
            plan,
            epoch,
            backends: &backends,
            outcomes: outcomes.clone(),
            seed: derive_seed(sc.seed, &c.name()),
        };
        contest(&env, c).await;
        backends
    });
    drop(rt);

    let deadline_us = sc.deadline.as_micros() as u32;
    let mut all = Vec::with_capacity(plan.len());
    let mut by_step: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); sc.steps.len()];
    let mut ok_total = 0;
    for (arrival, outcome) in plan.iter().zip(&outcomes.0) {
        let v = outcome.load(Relaxed);
        let ok = v != u64::MAX && v & 1 == 1;
        let latency = if ok {
            ((v >> 1) as u32).min(deadline_us)
        } else {
            deadline_us
        };
        all.push(latency);
        let step = &mut by_step[arrival.step as usize];
        step.0.push(latency);
        if ok {
            ok_total += 1;
            step.1 += 1;
        }
    }
    let steps = by_step
        .into_iter()
        .map(|(l, ok)| Summary::of(l, ok))
        .collect();
    let summary = Summary::of(all.clone(), ok_total);
    all.sort_unstable();

    let per_backend = backends.iter().map(|b| b.0.total.load(Relaxed)).collect();
    let series = backends
        .iter()
        .map(|b| b.0.arrivals.lock().unwrap().clone())
        .collect();
    let affinity = sc.keys.as_ref().map(|_| {
        let mut by_key: HashMap<u64, (u64, u32)> = HashMap::new();
        for b in &backends {
            for (&k, &n) in b.0.keys.as_ref().expect("keyed").lock().unwrap().iter() {
                let e = by_key.entry(k).or_insert((0, 0));
                e.0 += u64::from(n);
                e.1 = e.1.max(n);
            }
        }
        let total: u64 = by_key.values().map(|e| e.0).sum();
        let top: u64 = by_key.values().map(|e| u64::from(e.1)).sum();
        top as f64 / total.max(1) as f64
    });
    Run {
        contestant: c,
        name: c.name(),
        summary,
        steps,
        sorted_us: all,
        per_backend,
        series,
        affinity,
        wall: wall.elapsed(),
    }
}

/// Runs every contestant of `sc`, one after another.
pub fn run(sc: &Scenario) -> Report {
    run_with(sc, |_| {})
}

/// Runs every contestant of `sc`, calling `done` after each.
pub fn run_with(sc: &Scenario, mut done: impl FnMut(&Run)) -> Report {
    let wall = std::time::Instant::now();
    let plan = arrivals(sc);
    let runs = sc
        .contestants
        .iter()
        .map(|&c| {
            let run = run_contestant(sc, &plan, c);
            done(&run);
            run
        })
        .collect();
    Report {
        scenario: sc.clone(),
        runs,
        requests: plan.len(),
        wall: wall.elapsed(),
    }
}
