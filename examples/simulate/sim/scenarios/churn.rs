//! A rolling restart of 10 % of the backends per minute.

use std::time::Duration;

use super::{
    capacity, load_note, ramped, secs, slots, slots_note, standard_contestants, Algo, BackendSpec,
    Contestant, Dist, Effect, Membership, Options, Scenario,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(120.0);
    let base = Dist::Normal {
        mean: 50.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let count = 20;
    let lag = 1.0;
    let restart = 5.0;
    let cold = 10.0;
    let mut backends: Vec<BackendSpec> = (0..count)
        .map(|_| BackendSpec::new(base, Some(n)))
        .collect();
    let mut membership = Vec::new();
    // Two restarts per minute (10 % of 20), one every 30 s.
    let restarts: Vec<(f64, usize)> = (0..4)
        .map(|k| (15.0 + 30.0 * k as f64, 2 + 5 * k))
        .collect();
    for &(at, b) in &restarts {
        backends[b] = backends[b]
            .clone()
            .with(t(at), t(at + restart), Effect::Refuse)
            .with(t(at + restart), t(at + restart + cold), Effect::Slower(2.0));
        membership.push(Membership {
            at: t(at + lag),
            backend: b,
            listed: false,
        });
        membership.push(Membership {
            at: t(at + restart),
            backend: b,
            listed: true,
        });
    }
    membership.sort_by_key(|m| m.at);
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let mut contestants = standard_contestants();
    contestants.insert(
        9,
        Contestant::new(Algo::LeastRequest).outlier().slow_start(),
    );
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "rolling restart: 10 % of the backends per minute".into(),
        notes: vec![
            slots_note(count, n, base) + ".",
            format!(
                "Backends {} restart at {} s: each refuses connections for {restart:.0} s (requests in service finish), is removed from discovery {lag:.0} s after it went down, inserted again when it is back, and runs 2× slower for its first {cold:.0} s (cold caches).",
                restarts.iter().map(|r| r.1.to_string()).collect::<Vec<_>>().join(", "),
                restarts.iter().map(|r| format!("{:.0}", t(r.0).as_secs_f64())).collect::<Vec<_>>().join(", "),
            ),
            load_note(level, capacity, duration, deadline)
                + " Every contestant gets the changes through its discovery (ours: `discover::channel()`; tower: a `Discover` stream).",
        ],
        membership,
        contestants,
        ..ramped("churn", o, duration, deadline, backends, capacity, &[level])
    }
}
