//! Zipf(1.1) keys over the hashing strategies.

use std::time::Duration;

use super::{
    capacity, hashing_contestants, load_note, ramped, secs, slots, slots_note, BackendSpec, Dist,
    Options, Scenario, Zipf,
};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let base = Dist::Normal {
        mean: 40.0,
        sd: 10.0,
    };
    let n = slots(4, o);
    let backends: Vec<BackendSpec> = (0..10).map(|_| BackendSpec::new(base, Some(n))).collect();
    let capacity = capacity(&backends).expect("slots");
    let level = 0.6;
    let zipf = Zipf::new(10_000, 1.1);
    let deadline = Duration::from_secs(2);
    Scenario {
        title: "hot keys: Zipf(1.1) request keys over consistent hashing".into(),
        notes: vec![
            slots_note(10, n, base) + ".",
            format!(
                "Every request carries a key from Zipf(1.1) over 10 000 keys (the hottest is {:.1} % of requests, the top 10 {:.1} %); `Builder::request_key(key_fn(..))`.",
                zipf.share(0) * 100.0,
                (0..10).map(|k| zipf.share(k)).sum::<f64>() * 100.0
            ),
            load_note(level, capacity, duration, deadline),
            "Key affinity: the share of requests served by the backend that served most of their key's requests (a cache-hit proxy).".into(),
        ],
        keys: Some(zipf),
        contestants: hashing_contestants(),
        ..ramped("hot-keys", o, duration, deadline, backends, capacity, &[level])
    }
}
