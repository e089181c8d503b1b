//! Backends of 1×, 2× and 4× capacity: do the shares follow capacity?

use std::time::Duration;

use super::{
    capacity, load_note, orca_contestants, ramped, secs, slots, BackendSpec, Dist, Options,
    Scenario,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(40.0);
    let base = Dist::Exp { mean: 20.0 };
    let backends: Vec<BackendSpec> = [4, 8, 16]
        .iter()
        .map(|&k| BackendSpec::new(base, Some(slots(k, o))))
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "heterogeneous capacity: backends of 1×, 2× and 4×".into(),
        notes: vec![
            format!(
                "3 backends with {}, {} and {} slots and a FIFO queue each; service times {base}.",
                slots(4, o),
                slots(8, o),
                slots(16, o)
            ),
            load_note(level, capacity, duration, deadline),
            "Capacity shares 1/7, 2/7, 4/7. Every answer carries an ORCA load report; after weighted round robin's 10 s blackout its shares should follow capacity.".into(),
        ],
        contestants: orca_contestants(),
        reports: true,
        ..ramped("heterogeneous", o, duration, deadline, backends, capacity, &[level])
    }
}
