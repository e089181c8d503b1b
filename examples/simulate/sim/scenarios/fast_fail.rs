//! One of ten backends answers 503 at once.

use std::time::Duration;

use super::{
    capacity, load_note, ramped, secs, slots, slots_note, BackendSpec, Dist, Effect, Options,
    Scenario,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Normal {
        mean: 50.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let failing = 3;
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| {
            let b = BackendSpec::new(base, Some(n));
            if i == failing {
                b.with(t(10.0), duration, Effect::Fail)
            } else {
                b
            }
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "fast-failing backend: one of ten answers 503 at once".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "Backend {failing} answers 503 at once from {:.0} s to the end.",
                t(10.0).as_secs_f64()
            ),
            load_note(level, capacity, duration, deadline),
        ],
        ..ramped(
            "fast-fail",
            o,
            duration,
            deadline,
            backends,
            capacity,
            &[level],
        )
    }
}
