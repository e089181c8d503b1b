//! One client of a fleet, balancing over its own subset of the backends.
//!
//! ```text
//! FLEET_CLIENT_ID=7 FLEET_CLIENTS=300 cargo run --example subset
//! FLEET_ALGORITHM=random cargo run --example subset
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FLEET_CLIENT_ID` | this client's id, 0 to `FLEET_CLIENTS - 1` (a StatefulSet ordinal, a task index) | 0 |
//! | `FLEET_CLIENTS` | clients in the fleet | 300 |
//! | `FLEET_ALGORITHM` | `deterministic` (SRE book), `random` (gRFC A68), `ring` (Finagle's deterministic aperture) or `ringsteady` (Google's Ringsteady, on the backends' ordinals) | `ring` |
//! | `FLEET_SUBSET` | subset size (the ring's aperture) | 10 |
//!
//! The 300 backends are the pods of a StatefulSet, `api-0.api.shop.svc:8080` to
//! `api-299.api.shop.svc:8080` (Ringsteady reads their ordinals from these names), with an
//! in-process echo service behind each, listed on a discovery channel; the client prints its subset with each member's weight, sends a few
//! requests, then a backend joins the fleet and it prints what changed.

use std::process::ExitCode;
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::discover::subset::{
    self, Aperture, Deterministic, Random, Ringsteady, SubsetHandle, Subsetting,
};
use tower_lb::error::BuildError;
use tower_lb::strategy::RoundRobin;
use tower_lb::{Balance, Endpoint};

fn env(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

fn algorithm(
    name: &str,
    id: u64,
    clients: u64,
    size: usize,
) -> Result<Box<dyn Subsetting>, String> {
    let built: Result<Box<dyn Subsetting>, BuildError> = match name {
        "deterministic" => Deterministic::new(id, size).map(|a| Box::new(a) as _),
        // A68: a random salt per client. Seeded by the id here so that reruns print the same.
        "random" => Random::with_seed(size, id).map(|a| Box::new(a) as _),
        "ring" => Aperture::new(id, clients)
            .and_then(|a| a.aperture(size))
            .map(|a| Box::new(a) as _),
        // The backends' ordinals come from their names (`subset::ordinal`); the client
        // count is not needed.
        "ringsteady" => Ringsteady::new(id, size).map(|a| Box::new(a) as _),
        other => {
            return Err(format!(
                "FLEET_ALGORITHM={other:?}: deterministic, random, ring or ringsteady"
            ))
        }
    };
    built.map_err(|e| e.to_string())
}

fn print_subset(handle: &SubsetHandle<String>) {
    let stats = handle.stats();
    println!("subset of {} backends:", stats.backends);
    for member in &stats.members {
        println!("  {:<28} weight {}", member.key, member.weight);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let settings = (|| {
        let id = env("FLEET_CLIENT_ID", 0)?;
        let clients = env("FLEET_CLIENTS", 300)?;
        let size = env("FLEET_SUBSET", 10)? as usize;
        let name = std::env::var("FLEET_ALGORITHM").unwrap_or_else(|_| "ring".into());
        let algo = algorithm(&name, id, clients, size)?;
        Ok::<_, String>((id, clients, name, algo))
    })();
    let (id, clients, name, algo) = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("client {id} of {clients}, algorithm {name}");

    let backend = |addr: String| {
        tower::service_fn(move |_req: ()| {
            let addr = addr.clone();
            async move { Ok::<_, std::convert::Infallible>(addr) }
        })
    };
    let address = |i: usize| format!("api-{i}.api.shop.svc:8080");
    let (tx, rx) = discover::channel();
    tx.reset(
        (0..300)
            .map(|i| Endpoint::new(address(i), backend(address(i))))
            .collect(),
    )
    .expect("balancer alive");
    let (source, handle) = subset::subset(rx, algo);
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(source)
        .expect("valid settings");

    // The first requests wait until discovery has delivered the subset.
    let mut answered = Vec::new();
    for _ in 0..5 {
        let addr = balance
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("answered");
        answered.push(addr);
    }
    print_subset(&handle);
    println!("first requests went to {answered:?}");
    let members: Vec<String> = handle.stats().keys().cloned().collect();
    if let Some(stray) = answered.iter().find(|a| !members.contains(a)) {
        eprintln!("a request went to {stray}, outside the subset");
        return ExitCode::FAILURE;
    }

    tx.insert(address(300), backend(address(300)))
        .expect("balancer alive");
    // Wait (up to 5 s) until the balancer holds the new subset.
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let stats = handle.stats();
            let mut subset: Vec<String> = stats.keys().cloned().collect();
            let mut held: Vec<String> = balance.endpoints().into_iter().map(|e| e.key).collect();
            subset.sort();
            held.sort();
            if stats.backends == 301 && subset == held {
                return stats;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let Ok(stats) = settled else {
        eprintln!("the balancer did not take the new subset within 5 s");
        return ExitCode::FAILURE;
    };
    let joined: Vec<&String> = stats.keys().filter(|k| !members.contains(k)).collect();
    println!(
        "backend {} joined the fleet: {joined:?} joined this client's subset, {} member(s) left",
        address(300),
        stats.left
    );
    ExitCode::SUCCESS
}
