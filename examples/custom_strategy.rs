//! A strategy written outside the crate: HAProxy's `balance first`.
//!
//! HAProxy's `first` algorithm sends each request to the first server (in list order) that
//! still has a free connection slot, so traffic fills server 1 up to its `maxconn`, then
//! server 2, and so on. Idle servers at the end of the list stay idle and can be scaled down.
//! tower's balancer cannot express this; with tower-lb it is one `Strategy` impl.
//!
//! Run it with `cargo run --example custom_strategy`. It starts 30 slow requests at once
//! over three endpoints with room for 10 each, and prints where they went: 10, 10, 10. With
//! 15 requests it prints 10, 5, 0.

use std::convert::Infallible;
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::strategy::{Context, Endpoints, Strategy};
use tower_lb::{discover, Balance};

/// Fill endpoints in discovery order, up to `max_in_flight` each.
struct First {
    max_in_flight: u64,
}

impl Strategy for First {
    /// Nothing to precompute: the order is the discovery order.
    type Table = ();

    fn build(&self, _endpoints: &Endpoints<'_>) {}

    fn pick(&self, _table: &(), endpoints: &Endpoints<'_>, _cx: &Context) -> usize {
        // The first endpoint with room; when all are full, the least loaded one.
        (0..endpoints.len())
            .find(|&i| endpoints.load(i).in_flight() < self.max_in_flight)
            .unwrap_or_else(|| {
                (0..endpoints.len())
                    .min_by_key(|&i| endpoints.load(i).in_flight())
                    .unwrap_or(0)
            })
    }
}

/// An endpoint that takes 100 ms to answer with its own name.
fn slow_endpoint(
    name: &'static str,
) -> impl Service<(), Response = &'static str, Error = Infallible, Future: Send> + Clone + Send + Sync
{
    tower::service_fn(move |()| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(name)
    })
}

async fn run(requests: usize) -> Vec<(&'static str, usize)> {
    let balance = Balance::builder()
        .strategy(First { max_in_flight: 10 })
        .classify(ErrorsAsFailures)
        .build(discover::static_list(
            ["app-1", "app-2", "app-3"].map(|name| (name, slow_endpoint(name))),
        ))
        .expect("a valid configuration");

    // Start every request before any completes, so in-flight counts build up.
    let mut calls = Vec::new();
    for _ in 0..requests {
        let mut handle = balance.clone();
        let ready = handle.ready().await.expect("endpoints are always ready");
        calls.push(ready.call(()));
    }
    let mut counts = vec![("app-1", 0), ("app-2", 0), ("app-3", 0)];
    for call in calls {
        let name = call.await.expect("endpoints never fail");
        if let Some(entry) = counts.iter_mut().find(|(n, _)| *n == name) {
            entry.1 += 1;
        }
    }
    counts
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    for requests in [30, 15] {
        let counts = run(requests).await;
        let line: Vec<String> = counts.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        println!("{requests} concurrent requests -> {}", line.join(", "));
    }
    assert_eq!(run(15).await, [("app-1", 10), ("app-2", 5), ("app-3", 0)]);
}
