//! Buoyant (2016): 11 backends at 167 ± 5 ms, 1000 req/s, one backend at 2 s for 30 s of 60.

use std::time::Duration;

use super::{base, secs, BackendSpec, Dist, Effect, Options, Scenario, Step};

pub(super) fn scenario(o: &Options) -> Scenario {
    let t = |s: f64| secs(s * o.time_scale);
    let duration = t(60.0);
    let normal = Dist::Normal {
        mean: 167.0,
        sd: 5.0,
    };
    let slow = 5;
    let backends = (0..11)
        .map(|i| {
            let b = BackendSpec::new(normal, None);
            if i == slow {
                b.with(
                    t(15.0),
                    t(45.0),
                    Effect::Latency(Dist::Normal {
                        mean: 2000.0,
                        sd: 5.0,
                    }),
                )
            } else {
                b
            }
        })
        .collect();
    let rate = 1000.0 * o.rate_scale;
    let deadline = Duration::from_secs(1);
    Scenario {
        title: "transient slow backend (Buoyant, 2016)".into(),
        notes: vec![
            format!(
                "11 backends at {normal}, no concurrency limit; backend {slow} answers in 2000 ± 5 ms from {:.0} s to {:.0} s.",
                t(15.0).as_secs_f64(),
                t(45.0).as_secs_f64()
            ),
            format!("{rate:.0} req/s (Poisson) for {:.0} s; 1 s timeout.", duration.as_secs_f64()),
            "Published (Buoyant): round robin ~95 % success, least loaded ~99 %, peak-EWMA ~99.9 %.".into(),
            "The oracle knows every queue but not the backends' speeds: it sends the slow backend a request whenever its queue is the shortest.".into(),
        ],
        steps: vec![Step {
            until: duration,
            rate,
            label: format!("{rate:.0} req/s"),
        }],
        ..base("buoyant", o, duration, deadline, backends)
    }
}
