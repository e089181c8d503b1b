//! Ten equal backends; from 20 s to 40 s antagonists take half the capacity of three.

use std::time::Duration;

use super::{
    capacity, load_note, orca_contestants, ramped, secs, slots, slots_note, BackendSpec, Dist,
    Effect, Options, Scenario,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Exp { mean: 20.0 };
    let n = slots(4, o);
    let hit = [2, 5, 8];
    let backends: Vec<BackendSpec> = (0..10)
        .map(|i| {
            let b = BackendSpec::new(base, Some(n));
            if hit.contains(&i) {
                b.with(t(20.0), t(40.0), Effect::Antagonist(0.5))
            } else {
                b
            }
        })
        .collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.8;
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "antagonists: three of ten backends lose half their capacity for 20 s".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "From {:.0} s to {:.0} s an antagonist (another process on the machine) takes 50 % of the capacity of backends 2, 5 and 8: their service times double, and their reported utilization includes it; clients see only their own requests in flight. Capacity then {:.0} req/s, so the load is {:.2} of what is left.",
                t(20.0).as_secs_f64(),
                t(40.0).as_secs_f64(),
                capacity * 0.85,
                level / 0.85
            ),
            load_note(level, capacity, duration, deadline),
            "Every answer carries an ORCA load report (cpu_utilization, rps_fractional); weighted round robin (gRPC's defaults: blackout 10 s, weights updated every second) weights by it; the other contestants ignore it.".into(),
        ],
        contestants: orca_contestants(),
        reports: true,
        ..ramped("antagonist", o, duration, deadline, backends, capacity, &[level])
    }
}
