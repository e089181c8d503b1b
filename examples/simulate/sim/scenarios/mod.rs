//! The scenarios, one per file, and the registry that names them.
//!
//! Each scenario is a file here with one function, `pub(super) fn scenario(o: &Options) ->
//! Scenario`; the file's doc says what it models. Adding one takes that file, its `mod`
//! line, and one line in [`REGISTRY`], which names it for `--scenario`, [`SCENARIOS`] and
//! [`scenario`].
//!
//! The rest of this file is what the scenarios share: [`base`] and [`ramped`] (a scenario's
//! common parts), the sizing helpers, and the notes printed above the tables. The scenario
//! files take these and the model's types from here (`use super::{...}`).

use std::time::Duration;

use super::backend::{BackendSpec, Dist, Effect};
use super::contestants::{hashing_contestants, orca_contestants, standard_contestants};
use super::contestants::{Algo, Contestant};
use super::model::{Membership, Options, Scenario, Step, Zipf};
use super::rng::{derive_seed, SimRng};

mod antagonist;
mod buoyant;
mod churn;
mod fast_fail;
mod heterogeneous;
mod hot_keys;
mod mixed_speed;
mod overload_ramp;

/// Builds a scenario, sized by the options.
type Build = fn(&Options) -> Scenario;

/// Every scenario: its name (for `--scenario`) and the function that builds it, in the
/// order `--scenario all` runs them.
const REGISTRY: &[(&str, Build)] = &[
    ("buoyant", buoyant::scenario),
    ("mixed-speed", mixed_speed::scenario),
    ("overload-ramp", overload_ramp::scenario),
    ("fast-fail", fast_fail::scenario),
    ("churn", churn::scenario),
    ("hot-keys", hot_keys::scenario),
    ("antagonist", antagonist::scenario),
    ("heterogeneous", heterogeneous::scenario),
];

/// Every scenario's name, in the order of [`REGISTRY`].
pub const SCENARIOS: [&str; REGISTRY.len()] = names();

const fn names<const N: usize>() -> [&'static str; N] {
    let mut names = [""; N];
    let mut i = 0;
    while i < N {
        names[i] = REGISTRY[i].0;
        i += 1;
    }
    names
}

/// The scenario `name`, sized by `options`.
pub fn scenario(name: &str, options: &Options) -> Option<Scenario> {
    let (_, build) = REGISTRY.iter().find(|(n, _)| *n == name)?;
    Some(build(options))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Slots scaled by `rate_scale`.
fn slots(n: usize, o: &Options) -> usize {
    ((n as f64 * o.rate_scale).round() as usize).max(1)
}

fn capacity(backends: &[BackendSpec]) -> Option<f64> {
    backends.iter().map(BackendSpec::capacity).sum()
}

/// Equal steps over `duration`, at `levels` × `capacity`.
fn ramp(duration: Duration, capacity: f64, levels: &[f64]) -> Vec<Step> {
    let each = duration.as_secs_f64() / levels.len() as f64;
    levels
        .iter()
        .enumerate()
        .map(|(i, level)| Step {
            until: secs(each * (i + 1) as f64),
            rate: capacity * level,
            label: format!("{level:.2}×"),
        })
        .collect()
}

/// The parts the scenarios share: no keys, no membership changes, the standard
/// contestants, the seed derived from `name`, 1 s bins (scaled), no steps or capacity yet.
fn base(
    name: &'static str,
    o: &Options,
    duration: Duration,
    deadline: Duration,
    backends: Vec<BackendSpec>,
) -> Scenario {
    Scenario {
        name,
        title: String::new(),
        notes: Vec::new(),
        duration,
        deadline,
        backends,
        steps: Vec::new(),
        keys: None,
        membership: Vec::new(),
        contestants: standard_contestants(),
        seed: derive_seed(o.seed, name),
        bin: secs(o.time_scale),
        capacity: None,
        clients: o.clients.max(1),
        reports: false,
    }
}

/// [`base`] with the load in steps at `levels` × `capacity`.
fn ramped(
    name: &'static str,
    o: &Options,
    duration: Duration,
    deadline: Duration,
    backends: Vec<BackendSpec>,
    capacity: f64,
    levels: &[f64],
) -> Scenario {
    Scenario {
        steps: ramp(duration, capacity, levels),
        capacity: Some(capacity),
        ..base(name, o, duration, deadline, backends)
    }
}

/// `count` backends with `n` slots each, service times `base`.
fn slots_note(count: usize, n: usize, base: Dist) -> String {
    format!("{count} backends with {n} slots and a FIFO queue each; service times {base}")
}

/// The note on a constant load: `level` of `capacity` for `duration`, and the timeout.
fn load_note(level: f64, capacity: f64, duration: Duration, deadline: Duration) -> String {
    format!(
        "Load {level} of capacity ({:.0} req/s, Poisson) for {:.0} s; {} s timeout.",
        capacity * level,
        duration.as_secs_f64(),
        deadline.as_secs()
    )
}
