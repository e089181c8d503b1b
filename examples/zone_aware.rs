//! A zone-aware strategy written outside the crate, in the spirit of Envoy's zone-aware
//! routing: keep requests in the caller's own zone (no cross-zone hop, no cross-zone
//! traffic bill), unless that zone has too few endpoints or is overloaded; then spill over
//! to every zone.
//!
//! The strategy reads each endpoint's zone from its [`Metadata`], which discovery sets and
//! strategies see through [`Endpoints::metadata`]. Within the endpoints it chose, it picks
//! the less loaded of two at random (least request with two choices).
//!
//! Envoy's rule compares the share of the upstream's hosts in the local zone with the share
//! of the callers' own fleet there, which needs the callers' fleet; a client that sees only
//! the upstream's endpoints compares load instead: the local zone is overloaded when its
//! requests in flight per unit of weight exceed `spill_factor` times those of the other
//! zones (plus one request, so that an idle fleet stays local).
//!
//! Run it with `cargo run --example zone_aware`. Six endpoints, three in the caller's zone
//! `eu-1a` and three in `eu-1b`: with light traffic (one request at a time) every request
//! stays in `eu-1a`; with 30 requests in flight at once, `eu-1a` takes its share and the
//! rest spills to `eu-1b`. It exits with status 1 if either does not happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::endpoint::{Endpoint, Metadata};
use tower_lb::strategy::{Context, Endpoints, Strategy};
use tower_lb::{discover, Balance};

/// Prefers the endpoints of zone `local`; spills to every zone when the local one is
/// overloaded or has fewer than `min_local` endpoints.
struct ZoneAware {
    local: Arc<str>,
    spill_factor: f64,
    min_local: usize,
    /// Counts picks; a hash of it stands in for a random draw.
    picks: AtomicU64,
}

/// The endpoints of the local zone and of the others, by index.
struct Zones {
    local: Vec<usize>,
    others: Vec<usize>,
}

impl ZoneAware {
    fn new(local: &str) -> Self {
        ZoneAware {
            local: local.into(),
            spill_factor: 1.5,
            min_local: 2,
            picks: AtomicU64::new(0),
        }
    }

    /// Requests in flight per unit of weight over `indices`.
    fn load(endpoints: &Endpoints<'_>, indices: &[usize]) -> f64 {
        let (in_flight, weight) = indices.iter().fold((0u64, 0u64), |(f, w), &i| {
            (
                f + endpoints.load(i).in_flight(),
                w + u64::from(endpoints.weight(i)),
            )
        });
        in_flight as f64 / weight.max(1) as f64
    }

    /// The less loaded of two endpoints of `among`, drawn from the pick counter.
    fn two_choices(&self, endpoints: &Endpoints<'_>, among: &[usize]) -> usize {
        let draw = splitmix(self.picks.fetch_add(1, Ordering::Relaxed));
        let n = among.len() as u64;
        let a = among[(draw % n) as usize];
        let b = among[((draw >> 32) % n) as usize];
        let score =
            |i: usize| endpoints.load(i).in_flight() as f64 / f64::from(endpoints.weight(i));
        if score(b) < score(a) {
            b
        } else {
            a
        }
    }
}

impl Strategy for ZoneAware {
    type Table = Zones;

    fn build(&self, endpoints: &Endpoints<'_>) -> Zones {
        let (local, others) = (0..endpoints.len())
            .partition(|&i| endpoints.metadata(i).zone.as_deref() == Some(&*self.local));
        Zones { local, others }
    }

    fn pick(&self, zones: &Zones, endpoints: &Endpoints<'_>, _cx: &Context<'_>) -> usize {
        if zones.local.len() < self.min_local || zones.others.is_empty() {
            let all: Vec<usize> = (0..endpoints.len()).collect();
            return self.two_choices(endpoints, &all);
        }
        // O(n) per pick: fine for a zone of a few endpoints; a large fleet would keep the
        // zones' loads in atomics of its own.
        let local = Self::load(endpoints, &zones.local);
        let others = Self::load(endpoints, &zones.others);
        if local > self.spill_factor * others + 1.0 {
            self.two_choices(endpoints, &zones.others)
        } else {
            self.two_choices(endpoints, &zones.local)
        }
    }
}

/// SplitMix64: a well-spread 64-bit value from a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An endpoint that answers at once with its zone.
fn endpoint(
    name: &'static str,
    zone: &'static str,
) -> Endpoint<
    &'static str,
    impl Service<(), Response = &'static str, Error = std::io::Error, Future: Send>
        + Clone
        + Send
        + Sync,
> {
    let service = tower::service_fn(move |()| async move { Ok::<_, std::io::Error>(zone) });
    Endpoint::new(name, service).with_metadata(Metadata::zone(zone))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut balance = Balance::builder()
        .strategy(ZoneAware::new("eu-1a"))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            endpoint("a1", "eu-1a"),
            endpoint("a2", "eu-1a"),
            endpoint("a3", "eu-1a"),
            endpoint("b1", "eu-1b"),
            endpoint("b2", "eu-1b"),
            endpoint("b3", "eu-1b"),
        ]))
        .expect("valid configuration");

    // Light traffic: one request at a time stays in the local zone.
    let mut light = Vec::new();
    for _ in 0..100 {
        light.push(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    let local = light.iter().filter(|z| **z == "eu-1a").count();
    println!("light traffic: {local} of 100 requests in eu-1a");

    // 30 requests in flight at once (their responses not read yet): eu-1a fills up to
    // 1.5 times the load of eu-1b (plus one), and the rest spills over.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(balance.ready().await.unwrap().call(()));
    }
    let in_zone = |zone: &str| -> u64 {
        let stats = balance.endpoints();
        let of_zone = stats
            .iter()
            .filter(|e| e.metadata.zone.as_deref() == Some(zone));
        of_zone.map(|e| e.in_flight).sum()
    };
    let (local_load, spilled) = (in_zone("eu-1a"), in_zone("eu-1b"));
    println!("30 requests in flight: {local_load} in eu-1a, {spilled} spilled to eu-1b");
    for stats in balance.endpoints() {
        let zone = stats.metadata.zone.as_deref().unwrap_or("?");
        println!("  {} ({zone}): {} in flight", stats.key, stats.in_flight);
    }
    drop(held);

    if local != 100 || spilled == 0 || local_load <= spilled {
        eprintln!(
            "expected every light request in eu-1a, and under load most in eu-1a and some spilled"
        );
        std::process::exit(1);
    }
}
