//! The cost of one `Strategy::pick` alone: no `poll_ready` of an endpoint, no `call`.
//!
//! Run with
//!
//! ```text
//! cargo bench --bench pick
//! cargo bench --bench pick -- 'pick/least_request/'   # a criterion filter (a regex)
//! ```
//!
//! The group `clock` measures one read of tokio's clock (and std's, for comparison):
//! `cargo bench --bench pick -- clock`.
//!
//! The group `any` measures a run-time choice against the static type in the same run:
//! `any/<strategy>/static/<N>` picks with the strategy's own type, `any/<strategy>/any/<N>`
//! with the same strategy inside an `AnyStrategy` (one `match` more), for N = 10 and 100
//! (`cargo bench --bench pick -- any`). The hashing strategies pick with a fixed key.
//!
//! The group `rng` compares the crate's random number generator (wyrand, per thread or one
//! seeded atomic sequence) with rand's `SmallRng` behind the same uniform pick
//! (`cargo bench --bench pick -- rng`).
//!
//! Ids are `pick/<strategy>/<N>` for N = 10, 100 and 10 000 endpoints:
//!
//! | strategy | configuration |
//! |---|---|
//! | `round_robin` | `RoundRobin`, equal weights |
//! | `round_robin_weighted` | `RoundRobin`, weights `(i % 5) + 1` |
//! | `random` | `Random`, equal weights |
//! | `random_weighted` | `Random`, weights `(i % 5) + 1` (alias table) |
//! | `least_request` | `LeastRequest::new()`, equal weights |
//! | `least_request_weighted` | `LeastRequest::new()`, weights `(i % 5) + 1` |
//! | `least_request_full_scan` | `LeastRequest::new().full_scan()`, N = 10 and 100 only |
//! | `peak_ewma` | `PeakEwma::new()`, every endpoint with a latency sample (steady state) |
//! | `peak_ewma_unsampled` | `PeakEwma::new()`, no endpoint sampled yet (cold start) |
//! | `weighted_round_robin` | (feature `orca`) `WeightedRoundRobin`, no blackout, reported weights `(i % 5) + 1`: the stride scheduler |
//! | `weighted_round_robin_skewed` | (feature `orca`) as above, weights 1 except one of 1000 (capped at 10 × the mean: the most turns a pick takes) |
//! | `weighted_round_robin_fallback` | (feature `orca`) `WeightedRoundRobin` with no reports: its round robin |
//!
//! The `orca` rows need the feature: `cargo bench --features orca --bench pick -- weighted`.
//!
//! # How the pick is isolated
//!
//! Every strategy's `Strategy::pick` is called directly on an
//! [`EndpointList`](tower_lb::strategy::EndpointList), with idle counters. For `peak_ewma`
//! every endpoint carries a latency sample (`Load::with_state`), so each pick computes the
//! decay as it does in steady state; `peak_ewma_unsampled` is the cold start, where idle
//! unmeasured endpoints cost 0 and no decay is computed.

use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion,
};
use tower_lb::endpoint::Load;
use tower_lb::strategy::{
    AnyStrategy, Context, EndpointList, LeastRequest, Maglev, PeakEwma, Random, RingHash,
    RoundRobin, Strategy,
};

/// Endpoint counts.
const SIZES: [usize; 3] = [10, 100, 10_000];

/// The weight of endpoint `i` in the unweighted variants.
fn equal(_i: usize) -> u32 {
    1
}

/// The weight of endpoint `i` in the weighted variants: 1, 2, 3, 4, 5, 1, 2, ...
fn cycling(i: usize) -> u32 {
    (i % 5) as u32 + 1
}

/// Times `strategy.pick` on `n` idle endpoints weighted by `weight`.
fn bench_direct<P: Strategy>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    strategy: P,
    weight: fn(usize) -> u32,
) {
    let list = EndpointList::from_weights((0..n).map(weight));
    let endpoints = list.endpoints();
    let table = strategy.build(&endpoints);
    // One second after the balancer's epoch.
    let cx = Context::at_nanos(1_000_000_000);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter(|| strategy.pick(black_box(&table), black_box(&endpoints), black_box(&cx)))
    });
}

/// Times peak-EWMA's pick on `n` idle endpoints that all have a latency sample, of 1 ms to
/// 1.6 ms, taken one second before the pick.
fn bench_peak_ewma_sampled(g: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    let mut list = EndpointList::default();
    for i in 0..n {
        let rtt = Duration::from_micros(1_000 + 100 * (i as u64 % 7));
        list.push(1, Arc::new(Load::with_state(0, Some(rtt))));
    }
    let endpoints = list.endpoints();
    let strategy = PeakEwma::new();
    // Peak-EWMA precomputes nothing: its table is `()`.
    strategy.build(&endpoints);
    let cx = Context::at_nanos(1_000_000_000);
    g.bench_function(BenchmarkId::new("peak_ewma", n), |b| {
        b.iter(|| strategy.pick(black_box(&()), black_box(&endpoints), black_box(&cx)))
    });
}

/// Times weighted round robin's pick on `n` endpoints that reported the weights `weight`
/// (none: no reports, its round-robin fallback).
#[cfg(feature = "orca")]
fn bench_wrr(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    weight: Option<fn(usize) -> f64>,
) {
    use tower_lb::orca::LoadReport;
    use tower_lb::strategy::WeightedRoundRobin;
    let mut list = EndpointList::default();
    for i in 0..n {
        let load = Arc::new(Load::default().with_load_reports());
        if let Some(weight) = weight {
            load.record_load_report(Ok(LoadReport {
                rps_fractional: weight(i),
                cpu_utilization: 1.0,
                ..LoadReport::default()
            }));
        }
        list.push(1, load);
    }
    let endpoints = list.endpoints();
    let strategy = WeightedRoundRobin::new().blackout_period(Duration::ZERO);
    let table = strategy.build(&endpoints);
    assert_eq!(table.is_round_robin(), weight.is_none());
    let cx = Context::at_nanos(1_000_000_000);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter(|| strategy.pick(black_box(&table), black_box(&endpoints), black_box(&cx)))
    });
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        bench_direct(&mut g, "round_robin", n, RoundRobin::new(), equal);
        bench_direct(
            &mut g,
            "round_robin_weighted",
            n,
            RoundRobin::new(),
            cycling,
        );
        bench_direct(&mut g, "random", n, Random::new(), equal);
        bench_direct(&mut g, "random_weighted", n, Random::new(), cycling);
        bench_direct(&mut g, "least_request", n, LeastRequest::new(), equal);
        bench_direct(
            &mut g,
            "least_request_weighted",
            n,
            LeastRequest::new(),
            cycling,
        );
        if n <= 100 {
            bench_direct(
                &mut g,
                "least_request_full_scan",
                n,
                LeastRequest::new().full_scan(),
                equal,
            );
        }
        bench_peak_ewma_sampled(&mut g, n);
        bench_direct(&mut g, "peak_ewma_unsampled", n, PeakEwma::new(), equal);
        #[cfg(feature = "orca")]
        {
            bench_wrr(
                &mut g,
                "weighted_round_robin",
                n,
                Some(|i| (i % 5) as f64 + 1.0),
            );
            bench_wrr(
                &mut g,
                "weighted_round_robin_skewed",
                n,
                Some(|i| if i == 0 { 1000.0 } else { 1.0 }),
            );
            bench_wrr(&mut g, "weighted_round_robin_fallback", n, None);
        }
    }
    g.finish();
}

/// What one clock read costs: the balancer reads tokio's clock twice per request when the
/// strategy tracks latency (peak-EWMA), and never otherwise.
fn clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("std_instant_now", |b| b.iter(std::time::Instant::now));
    g.finish();
}

/// Times `strategy.pick` on `n` named idle endpoints, with `key` for the hashing strategies.
fn bench_named<P: Strategy>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    n: usize,
    strategy: &P,
    key: Option<&[u8]>,
) {
    let list = EndpointList::from_named((0..n).map(|i| (format!("10.0.0.{i}:80"), 1)));
    let endpoints = list.endpoints();
    let table = strategy.build(&endpoints);
    g.bench_function(id, |b| {
        b.iter(|| {
            let cx = Context::with_key(key);
            strategy.pick(black_box(&table), black_box(&endpoints), black_box(&cx))
        })
    });
}

/// Each strategy's pick with its own type and inside an [`AnyStrategy`], in the same run.
fn any(c: &mut Criterion) {
    let mut g = c.benchmark_group("any");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    fn pair<P: Strategy + Into<AnyStrategy>>(
        g: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        n: usize,
        make: impl Fn() -> P,
        key: Option<&[u8]>,
    ) {
        let id = |variant: &str| BenchmarkId::new(format!("{name}/{variant}"), n);
        bench_named(g, id("static"), n, &make(), key);
        bench_named(g, id("any"), n, &make().into(), key);
    }
    let key = Some(&b"user-42"[..]);
    for n in [10, 100] {
        pair(&mut g, "round_robin", n, RoundRobin::new, None);
        pair(&mut g, "random", n, Random::new, None);
        pair(&mut g, "least_request", n, LeastRequest::new, None);
        pair(&mut g, "peak_ewma", n, PeakEwma::new, None);
        pair(&mut g, "ring_hash", n, RingHash::new, key);
        pair(&mut g, "maglev", n, Maglev::new, key);
    }
    g.finish();
}

/// Uniform random picks with rand's `SmallRng` (Xoshiro256++), the generator the crate
/// could use instead of its own wyrand: per thread in a `RefCell` (as `Random::new()` keeps
/// its own per thread), and one seeded sequence behind a `Mutex` (as `Random::with_seed`
/// shares one `AtomicU64`, which rand's `&mut self` generators cannot).
struct RandSmallRng {
    seeded: Option<std::sync::Mutex<rand::rngs::SmallRng>>,
}

thread_local! {
    static SMALL_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::seed_from_u64(0x5eed));
}

impl Strategy for RandSmallRng {
    type Table = ();

    fn build(&self, _: &tower_lb::strategy::Endpoints<'_>) {}

    fn pick(
        &self,
        _: &(),
        endpoints: &tower_lb::strategy::Endpoints<'_>,
        _: &Context<'_>,
    ) -> usize {
        use rand::Rng as _;
        let n = endpoints.len();
        match &self.seeded {
            Some(rng) => rng.lock().unwrap().random_range(0..n),
            None => SMALL_RNG.with(|rng| rng.borrow_mut().random_range(0..n)),
        }
    }
}

/// The crate's generator against rand's `SmallRng` behind uniform picks over 10 endpoints,
/// in the same run: `rng/{wyrand,small_rng}/{thread,seeded}`
/// (`cargo bench --bench pick -- rng`).
fn rng(c: &mut Criterion) {
    let mut g = c.benchmark_group("rng");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let n = 10;
    bench_direct(&mut g, "wyrand/thread", n, Random::new(), equal);
    bench_direct(&mut g, "wyrand/seeded", n, Random::with_seed(7), equal);
    let small = |seeded: bool| RandSmallRng {
        seeded: seeded.then(|| std::sync::Mutex::new(rand::SeedableRng::seed_from_u64(7))),
    };
    bench_direct(&mut g, "small_rng/thread", n, small(false), equal);
    bench_direct(&mut g, "small_rng/seeded", n, small(true), equal);
    g.finish();
}

criterion_group!(benches, pick, clock, any, rng);
criterion_main!(benches);
