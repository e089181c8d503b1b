//! The balancer's hot path alone, for counting instructions: `n` requests, one after the
//! other, through a balancer over 10 endpoints that answer at once.
//!
//! ```text
//! cargo run --release --example hot_path -- least-request defaults 100000
//! scripts/hot-path-instructions.sh     # instructions per request, under valgrind
//! ```
//!
//! Arguments: the strategy (`least-request` or `round-robin`), `defaults` (the builder's
//! defaults, outlier detection on) or `bare` (outlier detection off), and the number of
//! requests. Timings on a shared machine drift by half from run to run; an instruction
//! count does not, so this is how a change to the hot path is compared with the commit
//! before it.

#[path = "support/mod.rs"]
mod support;

use support::{requests, runtime, usage, Echo};
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::strategy::{LeastRequest, RoundRobin, Strategy};
use tower_lb::{discover, Builder};

async fn run<P: Strategy>(strategy: P, bare: bool, n: u64) {
    let mut builder = Builder::new().strategy(strategy).classify(ErrorsAsFailures);
    if bare {
        builder = builder.outlier_detection(None);
    }
    let mut balance = builder
        .build(discover::static_list((0..10usize).map(|i| (i, Echo))))
        .expect("valid configuration");
    for i in 0..n {
        let answer = balance.ready().await.expect("ready").call(i).await;
        std::hint::black_box(answer.expect("answered"));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = "usage: hot_path least-request|round-robin defaults|bare REQUESTS";
    let [strategy, mode, n] = args.as_slice() else {
        usage(text)
    };
    let bare = match mode.as_str() {
        "defaults" => false,
        "bare" => true,
        _ => usage(text),
    };
    let n = requests(n, text);
    runtime().block_on(async {
        match strategy.as_str() {
            "least-request" => run(LeastRequest::new(), bare, n).await,
            "round-robin" => run(RoundRobin::new(), bare, n).await,
            _ => usage(text),
        }
    });
}
