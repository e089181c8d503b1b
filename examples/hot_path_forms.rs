//! What erasing a type costs on the hot path, for counting instructions next to
//! `examples/hot_path.rs` (which counts the balancer with every type known): `n` requests,
//! one after the other, through a balancer with the builder's defaults over 10 endpoints
//! that answer at once, in one of these forms:
//!
//! | form | the balancer |
//! |---|---|
//! | `static` | every type known, as in `hot_path` (for comparison in this binary) |
//! | `any-strategy` | the strategy is an `AnyStrategy` parsed from the name |
//! | `boxed-balance` | `Balance::boxed()`: a `BoxBalance` (a `BoxCloneSyncService` and the monitor) |
//! | `box-clone-sync` | each endpoint is a `tower::util::BoxCloneSyncService` |
//! | `unsync` | each endpoint is a `SyncService<BoxCloneService>`: `Send`, not `Sync`, behind the lock taken to clone it |
//!
//! ```text
//! cargo run --release --example hot_path_forms -- least-request unsync 100000
//! scripts/hot-path-instructions.sh --forms   # instructions per request, under valgrind
//! ```
//!
//! The forms are in a binary of their own: a balancer type that is also boxed gets compiled
//! differently (its `poll_ready` has two callers), which would move `hot_path`'s figures.
//! Compare the forms with this binary's `static`.

#[path = "support/mod.rs"]
mod support;

use support::{requests, runtime, usage, Echo};
use tower::util::{BoxCloneService, BoxCloneSyncService};
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::endpoint::{SyncEndpoint, SyncService};
use tower_lb::strategy::{AnyStrategy, LeastRequest, RoundRobin, Strategy};
use tower_lb::{discover, Balance, Builder};

/// The builder's defaults with `strategy` over 10 endpoints made by `endpoint`.
fn balancer<P: Strategy, S: SyncEndpoint>(
    strategy: P,
    endpoint: impl Fn() -> S,
) -> Balance<usize, S, P, ErrorsAsFailures> {
    Builder::new()
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(discover::static_list((0..10usize).map(|i| (i, endpoint()))))
        .expect("valid configuration")
}

/// Sends `n` requests, one after the other, through `service`.
async fn drive<B>(mut service: B, n: u64)
where
    B: Service<u64, Response = u64>,
    B::Error: std::fmt::Debug,
{
    for i in 0..n {
        let answer = service.ready().await.expect("ready").call(i).await;
        std::hint::black_box(answer.expect("answered"));
    }
}

/// `n` requests with `strategy` in `form`.
async fn run<P: Strategy>(strategy: P, form: &str, n: u64) -> Result<(), String> {
    match form {
        "static" | "any-strategy" => drive(balancer(strategy, || Echo), n).await,
        "boxed-balance" => drive(balancer(strategy, || Echo).boxed(), n).await,
        "box-clone-sync" => {
            let endpoint = || BoxCloneSyncService::new(Echo);
            drive(balancer(strategy, endpoint), n).await
        }
        "unsync" => {
            let endpoint = || SyncService::new(BoxCloneService::new(Echo));
            drive(balancer(strategy, endpoint), n).await
        }
        other => return Err(format!("unknown form `{other}`")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = "usage: hot_path_forms least-request|round-robin \
                static|any-strategy|boxed-balance|box-clone-sync|unsync REQUESTS";
    let [strategy, form, n] = args.as_slice() else {
        usage(text)
    };
    let n = requests(n, text);
    let result = runtime().block_on(async {
        match (strategy.as_str(), form.as_str()) {
            // The same strategy chosen at run time, by its name.
            (name, "any-strategy") => match name.parse::<AnyStrategy>() {
                Ok(any) => run(any, "any-strategy", n).await,
                Err(e) => Err(e.to_string()),
            },
            ("least-request", form) => run(LeastRequest::new(), form, n).await,
            ("round-robin", form) => run(RoundRobin::new(), form, n).await,
            (other, _) => Err(format!("unknown strategy `{other}`")),
        }
    });
    if let Err(e) = result {
        eprintln!("{e}");
        usage(text);
    }
}
