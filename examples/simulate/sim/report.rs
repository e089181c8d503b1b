//! The results: latency percentiles and success ([`Summary`]), one contestant's [`Run`],
//! a scenario's [`Report`], and its Markdown table.

use std::time::Duration;

use super::contestants::Contestant;
use super::model::Scenario;

/// Latency percentiles and success of a set of requests. Latencies in milliseconds; a
/// failed request counts as the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub requests: usize,
    pub success: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// From effective latencies in µs (sorted here) and the number of successes.
    pub(super) fn of(mut latencies_us: Vec<u32>, ok: usize) -> Self {
        latencies_us.sort_unstable();
        let n = latencies_us.len();
        if n == 0 {
            return Summary::default();
        }
        let q = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(latencies_us[rank - 1]) / 1000.0
        };
        Summary {
            requests: n,
            success: ok as f64 * 100.0 / n as f64,
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: f64::from(latencies_us[n - 1]) / 1000.0,
        }
    }
}

/// One contestant's run.
#[derive(Debug, Clone)]
pub struct Run {
    pub contestant: Contestant,
    pub name: String,
    pub summary: Summary,
    /// Per load step.
    pub steps: Vec<Summary>,
    /// Every request's latency in µs, a failure counted as the deadline, sorted.
    pub sorted_us: Vec<u32>,
    /// Requests each backend received.
    pub per_backend: Vec<u64>,
    /// Requests each backend received per time bin.
    pub series: Vec<Vec<u32>>,
    /// Keyed scenarios: the share of requests served by their key's most used backend.
    pub affinity: Option<f64>,
    /// Real time the run took.
    pub wall: Duration,
}

impl Run {
    pub fn backend_min_max(&self) -> (u64, u64) {
        (
            self.per_backend.iter().copied().min().unwrap_or(0),
            self.per_backend.iter().copied().max().unwrap_or(0),
        )
    }
}

/// Every contestant's run of one scenario.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub runs: Vec<Run>,
    pub requests: usize,
    pub wall: Duration,
}

impl Report {
    /// The run of the contestant named `name`.
    pub fn run(&self, name: &str) -> &Run {
        self.runs
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no contestant {name:?} in {}", self.scenario.name))
    }

    /// The index of the step labelled `label`.
    pub fn step(&self, label: &str) -> usize {
        self.scenario
            .steps
            .iter()
            .position(|s| s.label == label)
            .unwrap_or_else(|| panic!("no step {label:?} in {}", self.scenario.name))
    }
}

/// A latency in ms for a table: whole ms from 10 ms up.
pub fn ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A success percentage for a table: three decimals, since 99.95 % is a goal.
pub fn pct(v: f64) -> String {
    format!("{v:.3}")
}

/// The Markdown report of one scenario: what it is, the table, per-step tails.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write;
    let sc = &report.scenario;
    let mut s = String::new();
    let _ = writeln!(s, "## {}: {}\n", sc.name, sc.title);
    for note in &sc.notes {
        let _ = writeln!(s, "- {note}");
    }
    if sc.clients > 1 {
        let _ = writeln!(
            s,
            "- {} clients: each contestant runs {} independent balancers, each sent a random share of the requests (the oracle stays global).",
            sc.clients, sc.clients
        );
    }
    let _ = writeln!(
        s,
        "- {} requests per contestant; latencies in ms, a failed request counted as the deadline ({} ms); simulated in {:.1} s.\n",
        report.requests,
        sc.deadline.as_millis(),
        report.wall.as_secs_f64()
    );
    let keyed = sc.keys.is_some();
    let _ = write!(
        s,
        "| strategy | success % | p50 | p99 | p99.9 | max | requests per backend (min / max) |"
    );
    if keyed {
        let _ = write!(s, " key affinity % |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---:|---:|---:|---:|---:|---:|");
    if keyed {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for run in &report.runs {
        let m = &run.summary;
        let (lo, hi) = run.backend_min_max();
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {lo} / {hi} |",
            run.name,
            pct(m.success),
            ms(m.p50),
            ms(m.p99),
            ms(m.p999),
            ms(m.max)
        );
        if let Some(a) = run.affinity {
            let _ = write!(s, " {:.1} |", a * 100.0);
        }
        let _ = writeln!(s);
    }
    if sc.steps.len() > 1 {
        let _ = writeln!(
            s,
            "\nBy load step (requests that arrived in the step): p99 / p99.9 in ms, success %.\n"
        );
        let _ = write!(s, "| strategy |");
        for step in &sc.steps {
            let _ = write!(s, " {} |", step.label);
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|");
        for _ in &sc.steps {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for run in &report.runs {
            let _ = write!(s, "| {} |", run.name);
            for m in &run.steps {
                let _ = write!(s, " {} / {}, {} |", ms(m.p99), ms(m.p999), pct(m.success));
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "\nRun time per contestant (s): {}.",
        report
            .runs
            .iter()
            .map(|r| format!("{} {:.2}", r.name, r.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}
