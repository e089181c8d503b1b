//! 10 backends with 4 slots, two of them 1.5× slower; load 0.5 → 0.85 of capacity.

use std::time::Duration;

use super::{capacity, ramped, secs, slots, slots_note, BackendSpec, Dist, Options, Scenario};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 50.0 };
    let slower = Dist::Exp { mean: 75.0 };
    let n = slots(4, o);
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| BackendSpec::new(if i >= 8 { slower } else { base }, Some(n)))
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let levels = [0.5, 0.6, 0.7, 0.8, 0.85];
    Scenario {
        title: "mixed speeds: two of ten backends 1.5× slower".into(),
        notes: vec![
            slots_note(10, n, base) + &format!(", backends 8 and 9 {slower}."),
            format!(
                "Capacity {capacity:.0} req/s; load in steps of {:.0} s at 0.5, 0.6, 0.7, 0.8, 0.85 of it (Poisson); 5 s timeout.",
                duration.as_secs_f64() / levels.len() as f64
            ),
        ],
        ..ramped("mixed-speed", o, duration, Duration::from_secs(5), backends, capacity, &levels)
    }
}
