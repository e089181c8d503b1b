//! The consistent-hashing strategies alone: lookup cost, table build time and table memory.
//!
//! Run with
//!
//! ```text
//! cargo bench --bench hashing
//! cargo bench --bench hashing -- --warm-up-time 1 --measurement-time 2   # quicker
//! cargo bench --bench hashing -- 'lookup/maglev/'                        # a criterion filter
//! ```
//!
//! | group | ids | what is timed |
//! |---|---|---|
//! | `lookup` | `<strategy>/<N>`, N = 10, 100, 1 000, 10 000 | one `pick` with a key (attempt 0), keys cycling through 4 096 strings of 12 to 15 bytes, idle counters |
//! | `fallback` | `<strategy>/<N>`, N = 10, 100, 1 000 | attempts 0 and 1 of one request (the first fallback) |
//! | `build` | `<strategy>/<N>`, N = 1 000 | `Strategy::build` for N endpoints of weight 1 |
//!
//! Strategies: `ring` (`RingHash`), `maglev` (`Maglev`, default size), `rendezvous`,
//! `bounded_ring` and `bounded_maglev` (`BoundedLoad` with c = 1.25 around them). Every
//! endpoint is named like an nginx server string, `10.a.b.c:8080`, weight 1.
//!
//! Before the timings, the bench prints the memory of each table (its heap bytes, and bytes
//! per endpoint) for every strategy and N, as lines starting with `memory`.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion,
};
use tower_lb::strategy::{
    BoundedLoad, Context, EndpointList, Endpoints, Maglev, Rendezvous, RingHash, Strategy,
};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn list(n: usize) -> EndpointList {
    EndpointList::from_named((0..n).map(|i| {
        (
            format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255),
            1,
        )
    }))
}

fn keys() -> Vec<Vec<u8>> {
    (0..4096u32)
        .map(|i| format!("user-{:x}", i.wrapping_mul(2_654_435_761)).into_bytes())
        .collect()
}

/// Times `pick` (one call of it per iteration) for N endpoints, with keys cycling through
/// [`keys`].
fn bench_keyed<S: Strategy>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    s: S,
    pick: impl Fn(&S, &S::Table, &Endpoints<'_>, &Context<'_>) -> usize,
) {
    let list = list(n);
    let endpoints = list.endpoints();
    let table = s.build(&endpoints);
    let keys = keys();
    let mut k = 0usize;
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let cx = Context::with_key(Some(&keys[k]));
            pick(&s, black_box(&table), black_box(&endpoints), &cx)
        })
    });
}

/// One pick with a key: attempt 0.
fn bench_lookup<S: Strategy>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, n: usize, s: S) {
    bench_keyed(g, name, n, s, |s, table, endpoints, cx| {
        s.pick(table, endpoints, cx)
    });
}

/// Attempts 0 and 1 of one request: the first fallback.
fn bench_fallback<S: Strategy>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, n: usize, s: S) {
    bench_keyed(g, name, n, s, |s, table, endpoints, cx| {
        let first = s.pick(table, endpoints, cx);
        let second = s.pick(table, black_box(endpoints), &cx.next_attempt());
        first ^ second
    });
}

fn bench_build<S: Strategy>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, n: usize, s: S) {
    let list = list(n);
    let endpoints = list.endpoints();
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter(|| s.build(black_box(&endpoints)))
    });
}

/// Prints each table's heap bytes, in total and per endpoint.
fn memory() {
    for n in SIZES {
        let list = list(n);
        let e = list.endpoints();
        let ring = RingHash::new().build(&e);
        let maglev = Maglev::new().build(&e);
        let hrw = Rendezvous::new().build(&e);
        for (name, bytes, extra) in [
            (
                "ring",
                ring.heap_size(),
                format!("{} points", ring.points()),
            ),
            (
                "maglev",
                maglev.heap_size(),
                format!("M = {}", maglev.size()),
            ),
            ("rendezvous", hrw.heap_size(), String::new()),
        ] {
            eprintln!(
                "memory/{name}/{n}: {bytes} bytes, {:.0} bytes per endpoint {extra}",
                bytes as f64 / n as f64
            );
        }
    }
}

/// A benchmark group of `samples` samples, warmed up for 0.5 s and measured for 2 s.
fn group<'a>(c: &'a mut Criterion, name: &str, samples: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(samples)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn lookup(c: &mut Criterion) {
    memory();
    let mut g = group(c, "lookup", 30);
    for n in SIZES {
        bench_lookup(&mut g, "ring", n, RingHash::new());
        bench_lookup(&mut g, "maglev", n, Maglev::new());
        bench_lookup(&mut g, "rendezvous", n, Rendezvous::new());
        bench_lookup(&mut g, "bounded_ring", n, BoundedLoad::new(RingHash::new()));
        bench_lookup(&mut g, "bounded_maglev", n, BoundedLoad::new(Maglev::new()));
    }
    g.finish();
}

fn fallback(c: &mut Criterion) {
    let mut g = group(c, "fallback", 30);
    for n in [10, 100, 1_000] {
        bench_fallback(&mut g, "ring", n, RingHash::new());
        bench_fallback(&mut g, "maglev", n, Maglev::new());
        bench_fallback(&mut g, "rendezvous", n, Rendezvous::new());
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = group(c, "build", 10);
    bench_build(&mut g, "ring", 1_000, RingHash::new());
    bench_build(&mut g, "maglev", 1_000, Maglev::new());
    bench_build(&mut g, "rendezvous", 1_000, Rendezvous::new());
    g.finish();
}

criterion_group!(benches, lookup, fallback, build);
criterion_main!(benches);
