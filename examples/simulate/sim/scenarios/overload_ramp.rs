//! Prequal (NSDI 2024): load 0.75× → 1.75× of the guaranteed capacity, with noisy
//! neighbours that change each backend's speed.

use std::time::Duration;

use super::{
    capacity, derive_seed, ramped, secs, slots, slots_note, BackendSpec, Dist, Options, Scenario,
    SimRng,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 50.0 };
    let n = slots(4, o);
    let mut rng = SimRng::derived(derive_seed(o.seed, "overload-ramp"), "neighbours");
    let backends: Vec<BackendSpec> = (0..20)
        .map(|_| {
            let mut b = BackendSpec::new(base, Some(n));
            let mut at = 0.0;
            while at < duration.as_secs_f64() {
                // Busy neighbours hold a backend at its allocation; idle ones leave it spare
                // CPU. Never below the allocation, so "capacity" is what is guaranteed.
                let speed = if rng.unit() < 0.3 {
                    rng.uniform(1.0, 1.2)
                } else {
                    rng.uniform(1.5, 3.0)
                };
                b.speed.push((secs(at), speed));
                at += rng.exp(4.0);
            }
            b
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let levels = [0.75, 1.0, 1.25, 1.5, 1.75];
    Scenario {
        title: "overload ramp with noisy neighbours (Prequal, NSDI 2024)".into(),
        notes: vec![
            slots_note(20, n, base) + " at speed 1.",
            "Noisy neighbours: each backend's speed changes after exponential times (mean 4 s); 30 % of the time 1.0 to 1.2 (neighbours busy: the allocation), otherwise 1.5 to 3.0 (spare CPU). Mean speed about 1.9.".into(),
            format!(
                "Capacity (guaranteed, speed 1) {capacity:.0} req/s; load in steps of {:.0} s at 0.75, 1.0, 1.25, 1.5, 1.75 of it (Poisson); 5 s deadline.",
                duration.as_secs_f64() / levels.len() as f64
            ),
            "Published (Prequal): weighted round robin's p99.9 reaches the deadline at about 1.03×. Our round robin is smooth weighted round robin; the backends' weights are equal, as their allocations are.".into(),
        ],
        ..ramped("overload-ramp", o, duration, Duration::from_secs(5), backends, capacity, &levels)
    }
}
