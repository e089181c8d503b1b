//! How each contestant's balancer is built over the simulated backends: this crate's
//! `Balance` (with outlier detection, slow start and endpoint timeouts when asked), tower's
//! `p2c::Balance`, and the oracle (the shortest true queue).

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower_lb::health::{OutlierDetection, SlowStart};
use tower_lb::key::key_fn;
use tower_lb::strategy::{
    BoundedLoad, LeastRequest, Maglev, PeakEwma, Random, Rendezvous, RingHash, RoundRobin, Strategy,
};

use super::backend::{sim_key, Backend, BackendFuture, SimRequest};
use super::contestants::{Algo, Contestant};
use super::drive::{drive, Env};
use super::rng::{derive_seed, SimRng};
use super::BoxError;

/// The seed of client `client`'s balancer and strategy: the run's seed for the first (so
/// that single-client scenarios draw as before), one derived from it for each other, so
/// that clients draw independently (the same seed in every client would make their random
/// choices march in step).
pub(super) fn client_seed(seed: u64, client: usize) -> u64 {
    if client == 0 {
        seed
    } else {
        derive_seed(seed, &format!("client {client}"))
    }
}

/// One of our balancers, with the contestant's health features; `strategy` makes each
/// client's strategy from its seed.
async fn ours<P: Strategy>(env: &Env<'_>, c: Contestant, strategy: impl Fn(u64) -> P) {
    if c.endpoint_timeout {
        let deadline = env.sc.deadline;
        ours_with(env, c, strategy, move |b: &Backend| {
            tower::timeout::Timeout::new(b.clone(), deadline)
        })
        .await
    } else {
        ours_with(env, c, strategy, |b: &Backend| b.clone()).await
    }
}

pub(super) async fn ours_with<P, S, W>(
    env: &Env<'_>,
    c: Contestant,
    strategy: impl Fn(u64) -> P,
    wrap: W,
) where
    P: Strategy,
    W: Fn(&Backend) -> S,
    S: Service<SimRequest, Response = http::Response<()>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let mut senders = Vec::new();
    let mut balancers = Vec::new();
    for client in 0..env.sc.clients {
        let seed = client_seed(env.seed, client);
        let (tx, rx) = tower_lb::discover::channel::<usize, S>();
        for (i, b) in env.backends.iter().enumerate() {
            tx.insert(i, wrap(b)).expect("balancer alive");
        }
        let mut builder = tower_lb::Builder::new()
            .strategy(strategy(seed))
            .seed(seed)
            .request_key(key_fn(sim_key as fn(&SimRequest) -> Option<Vec<u8>>));
        // Outlier detection is on by default; the plain contestants show a strategy alone.
        builder = builder.outlier_detection(c.outlier.then(OutlierDetection::new));
        if c.slow_start {
            builder = builder.slow_start(SlowStart::new(Duration::from_secs(10)));
        }
        balancers.push(builder.build(rx).expect("valid configuration"));
        senders.push(tx);
    }
    drive(env, balancers, |i, listed| {
        for tx in &senders {
            let _ = if listed {
                tx.insert(i, wrap(&env.backends[i]))
            } else {
                tx.remove(i)
            };
        }
    })
    .await;
}

/// tower's `p2c::Balance` over endpoints made by `wrap`, fed by a channel.
async fn tower_p2c<S, W>(env: &Env<'_>, wrap: W)
where
    W: Fn(&Backend) -> S,
    S: Service<SimRequest, Response = http::Response<()>, Error = BoxError>
        + tower::load::Load
        + Send
        + 'static,
    <S as tower::load::Load>::Metric: fmt::Debug,
    S::Future: Send + 'static,
{
    let mut senders = Vec::new();
    let mut balancers = Vec::new();
    for client in 0..env.sc.clients {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<tower::discover::Change<usize, S>>();
        for (i, b) in env.backends.iter().enumerate() {
            tx.send(tower::discover::Change::Insert(i, wrap(b)))
                .expect("balancer alive");
        }
        let discover = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
        });
        let rng = SimRng::new(env.seed.wrapping_add(client as u64));
        balancers.push(tower::balance::p2c::Balance::from_rng(discover, rng));
        senders.push(tx);
    }
    drive(env, balancers, |i, listed| {
        for tx in &senders {
            let _ = if listed {
                tx.send(tower::discover::Change::Insert(i, wrap(&env.backends[i])))
            } else {
                tx.send(tower::discover::Change::Remove(i))
            };
        }
    })
    .await;
}

/// The oracle: the backend with the shortest true queue (waiting plus in service) among the
/// listed backends that answer (not failing, not refusing), ties by index.
#[derive(Clone)]
struct Oracle {
    backends: Arc<Vec<Backend>>,
    listed: Arc<Vec<AtomicBool>>,
}

impl Service<SimRequest> for Oracle {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SimRequest) -> BackendFuture {
        let now = Instant::now();
        let listed = |i: &usize| self.listed[*i].load(Relaxed);
        let best = (0..self.backends.len())
            .filter(listed)
            .filter(|&i| self.backends[i].answers(now))
            .min_by_key(|&i| (self.backends[i].queue_len(), i))
            .or_else(|| (0..self.backends.len()).find(listed))
            .unwrap_or(0);
        self.backends[best].clone().call(request)
    }
}

async fn oracle(env: &Env<'_>) {
    let oracle = Oracle {
        backends: Arc::new(env.backends.to_vec()),
        listed: Arc::new(env.backends.iter().map(|_| AtomicBool::new(true)).collect()),
    };
    let listed = oracle.listed.clone();
    // One oracle, whatever the number of clients: it sees everything anyway.
    drive(env, vec![oracle], |i, l| listed[i].store(l, Relaxed)).await;
}

pub(super) async fn contest(env: &Env<'_>, c: Contestant) {
    let seed = env.seed;
    match c.algo {
        // Random choices: each client its own seed. Hash placements: one seed for the whole
        // fleet, so that every client maps a key to the same backend.
        Algo::RoundRobin => ours(env, c, |_| RoundRobin::new()).await,
        Algo::Random => ours(env, c, Random::with_seed).await,
        Algo::LeastRequest => ours(env, c, |s| LeastRequest::new().with_seed(s)).await,
        Algo::LeastRequestAll => {
            ours(env, c, |s| LeastRequest::new().full_scan().with_seed(s)).await
        }
        Algo::PeakEwma => ours(env, c, |s| PeakEwma::new().with_seed(s)).await,
        Algo::RingHash => ours(env, c, |_| RingHash::new().seed(seed)).await,
        Algo::Maglev => ours(env, c, |_| Maglev::new().seed(seed)).await,
        Algo::Rendezvous => ours(env, c, |_| Rendezvous::new().seed(seed)).await,
        Algo::BoundedRing => ours(env, c, |_| BoundedLoad::new(RingHash::new().seed(seed))).await,
        Algo::BoundedMaglev => ours(env, c, |_| BoundedLoad::new(Maglev::new().seed(seed))).await,
        Algo::TowerPending => {
            tower_p2c(env, |b: &Backend| {
                tower::load::PendingRequests::new(
                    b.clone(),
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .await
        }
        Algo::TowerPeakEwma => {
            tower_p2c(env, |b: &Backend| {
                tower::load::PeakEwma::new(
                    b.clone(),
                    Duration::from_millis(30),
                    10e9,
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .await
        }
        Algo::Oracle => oracle(env).await,
        #[cfg(feature = "orca")]
        Algo::WeightedRoundRobin => {
            ours(env, c, |_| tower_lb::strategy::WeightedRoundRobin::new()).await
        }
        #[cfg(not(feature = "orca"))]
        Algo::WeightedRoundRobin => panic!("weighted round robin needs the orca feature"),
        #[cfg(feature = "prequal")]
        Algo::Prequal | Algo::PrequalRifOnly => super::prequal::contest(env, c).await,
        #[cfg(not(feature = "prequal"))]
        Algo::Prequal | Algo::PrequalRifOnly => panic!("Prequal needs the prequal feature"),
    }
}
