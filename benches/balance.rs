//! The cost of one request through the balancer, next to `tower::balance::p2c` in the same run.
//!
//! Run with
//!
//! ```text
//! cargo bench --bench balance                  # both groups
//! cargo bench --bench balance -- single_task   # one group (any criterion filter works)
//! ```
//!
//! The endpoints are trivial: an always-ready service whose future is
//! `std::future::ready(Ok(request))`, so what is measured is the balancer alone. tower's
//! balancer is measured in the same run because the machine is shared and absolute times
//! drift; compare the `tower_lb` and `tower` rows of one run, not rows of different runs.
//!
//! # `single_task`
//!
//! One request = `poll_ready` (Ready at once) + `call` + one poll of the response future
//! (Ready at once, so the request is complete and every in-flight count is back to 0),
//! driven by hand with a no-op waker on one thread, with N = 10, 100 and 1000 endpoints.
//! A current-thread tokio runtime is entered throughout (our builder spawns its driver on it,
//! and both crates read tokio's clock), but nothing runs on it.
//!
//! | id | contestant |
//! |---|---|
//! | `least_request/tower_lb/N` | `Builder::new().strategy(LeastRequest::new()).classify(ErrorsAsFailures)` |
//! | `least_request/tower/N` | `p2c::Balance` over `PendingRequests<_, CompleteOnResponse>` |
//! | `peak_ewma/tower_lb/N` | the same builder with `PeakEwma::new()` |
//! | `peak_ewma/tower/N` | `p2c::Balance` over `load::PeakEwma` (default RTT 30 ms, decay 10 s) |
//! | `round_robin/tower_lb/N` | `RoundRobin::new()`, for reference (tower has no counterpart) |
//!
//! # `shared`
//!
//! 64 tasks on a tokio multi-thread runtime with 2 workers, each sending 1000 requests in a
//! loop (`svc.ready().await?.call(req).await?`) to N = 10 endpoints; the time is from the
//! first spawn until every task has finished, and criterion reports requests per second.
//! Ours: one `Balance` cloned into every task. tower: one `p2c::Balance` behind
//! `tower::buffer::Buffer::new(balance, 1024)`, the buffer cloned into every task (tower's
//! balancer is not `Clone`, so this is how it is shared). Ids: `least_request/tower_lb/10`
//! and `least_request/tower/10` (tower over `PendingRequests`), `peak_ewma/tower_lb/10` and
//! `peak_ewma/tower/10`.
//!
//! This group is sensitive to other load on the machine (two workers on two cores): run it
//! when the machine is otherwise idle, and more than once.
//!
//! # `erased`
//!
//! What erasing a type costs, per request, against the same balancer with every type
//! known, in the same run (least request over 10 endpoints):
//!
//! | id | what |
//! |---|---|
//! | `single_task/static` | `Balance<usize, Echo, LeastRequest, ...>`, as in `single_task` |
//! | `single_task/any_strategy` | the strategy is `AnyStrategy::LeastRequest` |
//! | `single_task/boxed_balance` | the balancer is `Balance::boxed()` (`BoxBalance`) |
//! | `single_task/box_clone_sync` | each endpoint is a `BoxCloneSyncService` |
//! | `single_task/unsync` | each endpoint is a `SyncService<BoxCloneService>` (a `Send`, not `Sync`, service behind the lock taken to clone it) |
//! | `shared/box_clone_sync`, `shared/unsync` | the same two endpoint kinds in the `shared` setting (64 tasks on 2 threads), where two threads can take one endpoint's lock at once |

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion,
    SamplingMode, Throughput,
};
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::util::{BoxCloneService, BoxCloneSyncService};
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::endpoint::{SyncEndpoint, SyncService};
use tower_lb::strategy::{AnyStrategy, LeastRequest, PeakEwma, RoundRobin, Strategy};
use tower_lb::{discover, Balance};

/// Endpoint counts of the single-task group.
const SIZES: [usize; 3] = [10, 100, 1000];
/// Endpoints in the shared group.
const SHARED_ENDPOINTS: usize = 10;
/// Tasks in the shared group.
const TASKS: u64 = 64;
/// Requests each task sends in the shared group.
const PER_TASK: u64 = 1000;

/// tower's peak-EWMA parameters, equal to our `PeakEwma::new()` defaults.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY_NS: f64 = 10e9;

/// An endpoint that is always ready and answers at once with the request.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

// ----- contestants -----

fn ours<P: Strategy>(
    strategy: P,
    n: usize,
) -> Balance<usize, Echo, P, ErrorsAsFailures, tower_lb::completion::OnResponse> {
    over(strategy, n, |_| Echo)
}

/// Our balancer with `strategy` over `n` endpoints whose services `make` makes.
fn over<P: Strategy, S: SyncEndpoint>(
    strategy: P,
    n: usize,
    make: impl Fn(usize) -> S,
) -> Balance<usize, S, P, ErrorsAsFailures, tower_lb::completion::OnResponse> {
    tower_lb::Builder::new()
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(discover::static_list((0..n).map(|i| (i, make(i)))))
        .expect("valid configuration")
}

/// `Echo` in a `BoxCloneSyncService`.
fn box_clone_sync(_: usize) -> BoxCloneSyncService<u64, u64, Infallible> {
    BoxCloneSyncService::new(Echo)
}

/// `Echo` in a `BoxCloneService` (`Send`, not `Sync`), made usable by `SyncService`.
fn unsync(_: usize) -> SyncService<BoxCloneService<u64, u64, Infallible>> {
    SyncService::new(BoxCloneService::new(Echo))
}

fn tower_pending_requests(
    n: usize,
) -> tower::balance::p2c::Balance<tower::discover::ServiceList<Vec<PendingRequests<Echo>>>, u64> {
    let services = (0..n)
        .map(|_| PendingRequests::new(Echo, CompleteOnResponse::default()))
        .collect::<Vec<_>>();
    tower::balance::p2c::Balance::new(tower::discover::ServiceList::new::<u64>(services))
}

fn tower_peak_ewma(
    n: usize,
) -> tower::balance::p2c::Balance<tower::discover::ServiceList<Vec<tower::load::PeakEwma<Echo>>>, u64>
{
    let services = (0..n)
        .map(|_| {
            tower::load::PeakEwma::new(Echo, DEFAULT_RTT, DECAY_NS, CompleteOnResponse::default())
        })
        .collect::<Vec<_>>();
    tower::balance::p2c::Balance::new(tower::discover::ServiceList::new::<u64>(services))
}

/// Checks that every request sent through one of our balancers has completed.
fn assert_idle<P: Strategy, C, T>(balance: &Balance<usize, Echo, P, C, T>) {
    let stats = balance.endpoints();
    assert!(
        stats.iter().all(|e| e.in_flight == 0),
        "requests left in flight"
    );
    assert!(
        stats.iter().map(|e| e.completed).sum::<u64>() > 0,
        "no request completed"
    );
}

/// The runtime of the single-task benchmarks.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The runtime of the shared benchmarks: two workers on the two cores.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ----- single task -----

/// One request, driven by hand: `poll_ready`, `call`, one poll of the response future.
#[inline(always)]
fn request<S>(svc: &mut S, cx: &mut Context<'_>, req: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
        Poll::Pending => panic!("an always-ready endpoint was not ready"),
    }
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(e)) => panic!("request failed: {e:?}"),
        Poll::Pending => panic!("an immediate response was pending"),
    }
}

fn bench_single<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, n: usize, svc: &mut S)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    // tower's balancer takes its endpoints from discovery at the first poll_ready.
    black_box(request(svc, &mut cx, 0));
    g.bench_function(BenchmarkId::new(name, n), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(request(svc, &mut cx, black_box(i)))
        })
    });
}

fn single_task(c: &mut Criterion) {
    let rt = current_thread();
    let _entered = rt.enter();

    let mut g = c.benchmark_group("single_task");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for n in SIZES {
        let mut balance = ours(LeastRequest::new(), n);
        bench_single(&mut g, "least_request/tower_lb", n, &mut balance);
        assert_idle(&balance);
        bench_single(
            &mut g,
            "least_request/tower",
            n,
            &mut tower_pending_requests(n),
        );

        let mut balance = ours(PeakEwma::new(), n);
        bench_single(&mut g, "peak_ewma/tower_lb", n, &mut balance);
        assert_idle(&balance);
        bench_single(&mut g, "peak_ewma/tower", n, &mut tower_peak_ewma(n));

        let mut balance = ours(RoundRobin::new(), n);
        bench_single(&mut g, "round_robin/tower_lb", n, &mut balance);
        assert_idle(&balance);
    }
    g.finish();
}

// ----- shared -----

/// Runs `TASKS` tasks of `PER_TASK` requests each through clones of `svc`; returns the time
/// from the first spawn until the last task finished.
fn run_shared<S>(rt: &tokio::runtime::Runtime, svc: &S) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let req = t * PER_TASK + i;
                        let response = svc
                            .ready()
                            .await
                            .expect("ready")
                            .call(req)
                            .await
                            .expect("response");
                        debug_assert_eq!(response, req);
                        black_box(response);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task panicked");
        }
        start.elapsed()
    })
}

fn bench_shared<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: &S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    // One request first, so that tower's balancer has taken its endpoints from discovery
    // (and every contestant has sent something, even when a filter skips the benchmark).
    let response = rt.block_on(async {
        let mut svc = svc.clone();
        svc.ready().await.expect("ready").call(7).await
    });
    assert_eq!(response.expect("response"), 7);
    g.bench_function(BenchmarkId::new(name, SHARED_ENDPOINTS), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_shared(rt, svc)).sum())
    });
}

fn shared(c: &mut Criterion) {
    let rt = two_workers();
    // Our driver and tower's buffer worker are spawned on this runtime.
    let _entered = rt.enter();

    let mut g = c.benchmark_group("shared");
    // One run is 64 000 requests (milliseconds), so use flat sampling: the same number of
    // runs per sample, which keeps the slower contestant within the measurement time.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(TASKS * PER_TASK));

    let balance = ours(LeastRequest::new(), SHARED_ENDPOINTS);
    bench_shared(&mut g, &rt, "least_request/tower_lb", &balance);
    assert_idle(&balance);
    let buffered = tower::buffer::Buffer::new(tower_pending_requests(SHARED_ENDPOINTS), 1024);
    bench_shared(&mut g, &rt, "least_request/tower", &buffered);

    let balance = ours(PeakEwma::new(), SHARED_ENDPOINTS);
    bench_shared(&mut g, &rt, "peak_ewma/tower_lb", &balance);
    assert_idle(&balance);
    let buffered = tower::buffer::Buffer::new(tower_peak_ewma(SHARED_ENDPOINTS), 1024);
    bench_shared(&mut g, &rt, "peak_ewma/tower", &buffered);

    g.finish();
}

fn erased(c: &mut Criterion) {
    let mut g = c.benchmark_group("erased");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    {
        let rt = current_thread();
        let _entered = rt.enter();
        let n = SHARED_ENDPOINTS;
        let name = |s: &str| format!("single_task/{s}");
        bench_single(
            &mut g,
            &name("static"),
            n,
            &mut ours(LeastRequest::new(), n),
        );
        let any = AnyStrategy::from(LeastRequest::new());
        bench_single(&mut g, &name("any_strategy"), n, &mut ours(any, n));
        let mut boxed = ours(LeastRequest::new(), n).boxed::<u64>();
        bench_single(&mut g, &name("boxed_balance"), n, &mut boxed);
        let mut sync = over(LeastRequest::new(), n, box_clone_sync);
        bench_single(&mut g, &name("box_clone_sync"), n, &mut sync);
        let mut locked = over(LeastRequest::new(), n, unsync);
        bench_single(&mut g, &name("unsync"), n, &mut locked);
    }
    let rt = two_workers();
    let _entered = rt.enter();
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(TASKS * PER_TASK));
    let sync = over(LeastRequest::new(), SHARED_ENDPOINTS, box_clone_sync);
    bench_shared(&mut g, &rt, "shared/box_clone_sync", &sync);
    let locked = over(LeastRequest::new(), SHARED_ENDPOINTS, unsync);
    bench_shared(&mut g, &rt, "shared/unsync", &locked);
    g.finish();
}

criterion_group!(benches, single_task, shared, erased);
criterion_main!(benches);
