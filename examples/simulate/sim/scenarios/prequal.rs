//! Prequal's testbed (NSDI 2024, §5), scaled to a simulation: many independent clients over
//! a hundred heterogeneous backends with noisy neighbours, and a load ramp past the
//! allocated capacity. With the feature `prequal` its contestants include Prequal, whose
//! backends answer probes from their true state (see `sim/prequal.rs`).

use std::time::Duration;

use super::{
    derive_seed, ramped, secs, slots, slots_note, Algo, BackendSpec, Contestant, Dist, Options,
    Scenario, SimRng,
};

/// The load levels, relative to the allocated capacity: the paper's ramp from 0.75× to
/// 1.74×, with a step at 0.9 (the goals' level; after weighted round robin's 10 s blackout).
const LEVELS: [f64; 6] = [0.75, 0.9, 1.0, 1.25, 1.5, 1.74];

/// The contestants: Prequal (feature `prequal`) hot–cold and by RIF alone, weighted round
/// robin by ORCA reports (feature `orca`), and the field.
fn contestants() -> Vec<Contestant> {
    use Algo::*;
    let mut contestants = Vec::new();
    if cfg!(feature = "prequal") {
        contestants.push(Contestant::new(Prequal));
        contestants.push(Contestant::new(PrequalRifOnly));
    }
    if cfg!(feature = "orca") {
        contestants.push(Contestant::new(WeightedRoundRobin));
    }
    contestants
        .extend([PeakEwma, LeastRequest, RoundRobin, TowerPeakEwma, Oracle].map(Contestant::new));
    contestants
}

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 20.0 };
    let n = slots(2, o);
    let count = 100;
    let mut rng = SimRng::derived(derive_seed(o.seed, "prequal"), "backends");
    let mut backends = Vec::with_capacity(count);
    // The allocation: what each backend serves at its own speed without spare CPU.
    let mut capacity = 0.0;
    for _ in 0..count {
        let mut b = BackendSpec::new(base, Some(n));
        // Machines of different generations: 0.5× to 1.5× the allocation's speed...
        let own = rng.uniform(0.5, 1.5);
        let mut at = 0.0;
        while at < duration.as_secs_f64() {
            // ...and antagonists on each machine that come and go: 30 % of the time they
            // hold it at its allocation, otherwise they leave spare CPU.
            let spare = if rng.unit() < 0.3 {
                rng.uniform(1.0, 1.2)
            } else {
                rng.uniform(1.5, 3.0)
            };
            b.speed.push((secs(at), own * spare));
            at += rng.exp(4.0);
        }
        capacity += b.capacity().expect("slots") * own;
        backends.push(b);
    }
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "Prequal's testbed: 100 clients, 100 heterogeneous backends, a load ramp to 1.74×"
            .into(),
        notes: vec![
            slots_note(count, n, base) + ".",
            "Heterogeneous speeds: each backend's own speed is uniform in 0.5 to 1.5; antagonists (noisy neighbours) change it after exponential times (mean 4 s): 30 % of the time × 1.0 to 1.2 (the allocation), otherwise × 1.5 to 3.0 (spare CPU).".into(),
            format!(
                "Allocated capacity (own speeds × 1) {capacity:.0} req/s; load in steps of {:.0} s at 0.75, 0.9, 1.0, 1.25, 1.5, 1.74 of it (Poisson); 1 s deadline.",
                duration.as_secs_f64() / LEVELS.len() as f64
            ),
            "Prequal's backends answer probes from their true state (requests in flight, and the median latency at that RIF, `LoadEstimator`), after a 1 ms round trip. Weighted round robin reads ORCA reports (utilization including the antagonists).".into(),
        ],
        contestants: contestants(),
        // 100 clients unless `--clients` asks for another number.
        clients: if o.clients > 1 { o.clients } else { 100 },
        reports: true,
        ..ramped("prequal", o, duration, deadline, backends, capacity, &LEVELS)
    }
}
