//! Scenario simulator: the tail latency of every strategy of this crate against tower's
//! `p2c::Balance` and an oracle, under simulated backends on tokio's paused clock.
//!
//! ```text
//! cargo run --release --example simulate -- --scenario buoyant
//! cargo run --release --example simulate -- --scenario all --out target/simulate
//! ```
//!
//! Flags:
//!
//! | flag | meaning | default |
//! |---|---|---|
//! | `--scenario NAME` | `buoyant`, `mixed-speed`, `overload-ramp`, `fast-fail`, `churn`, `hot-keys`, `antagonist`, `heterogeneous` (these two with load reports: run them with `--features orca` for weighted round robin), or `all` | `all` |
//! | `--out DIR` | where the Markdown tables and SVG plots go | `target/simulate` |
//! | `--seed N` | the seed every random number derives from | 1 |
//! | `--time-scale F` | multiplies each scenario's duration and timeline | 1 |
//! | `--rate-scale F` | multiplies the request rate (and the slot counts, keeping the load) | 1 |
//! | `--clients N` | independent balancers per contestant, each sent a random share of the requests | 1 |
//! | `--only A,B` | runs only the contestants whose names contain one of these | all |
//!
//! For each scenario it prints the table to stdout and writes `DIR/NAME.md`,
//! `DIR/NAME-latency.svg` (latency by percentile per contestant) and `DIR/NAME-load.svg`
//! (each backend's requests per second over time, per contestant); with `all`, also
//! `DIR/summary.md`. The model is described in `sim.rs`.

mod sim;
mod svg;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> String {
    format!(
        "usage: simulate [--scenario NAME|all] [--out DIR] [--seed N] [--time-scale F] [--rate-scale F] [--clients N] [--only A,B]\n\
         scenarios: {}",
        sim::SCENARIOS.join(", ")
    )
}

struct Args {
    scenario: String,
    out: PathBuf,
    options: sim::Options,
    only: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        scenario: "all".into(),
        out: default_out(),
        options: sim::Options::default(),
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scenario" => args.scenario = value()?,
            "--out" => args.out = PathBuf::from(value()?),
            "--seed" => args.options.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--time-scale" => {
                args.options.time_scale =
                    value()?.parse().map_err(|e| format!("--time-scale: {e}"))?
            }
            "--rate-scale" => {
                args.options.rate_scale =
                    value()?.parse().map_err(|e| format!("--rate-scale: {e}"))?
            }
            "--clients" => {
                args.options.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--only" => {
                args.only = value()?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// `target/simulate` under the target directory cargo uses.
fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("simulate")
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    let names: Vec<&str> = if args.scenario == "all" {
        sim::SCENARIOS.to_vec()
    } else if sim::SCENARIOS.contains(&args.scenario.as_str()) {
        vec![args.scenario.as_str()]
    } else {
        eprintln!("unknown scenario {:?}\n{}", args.scenario, usage());
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("cannot create {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }

    let total = std::time::Instant::now();
    let mut summary = String::from("# Scenario simulator results\n\n");
    summary.push_str(&format!(
        "`cargo run --release --example simulate -- --scenario all` (seed {}, time scale {}, rate scale {}, clients {}).\n\n",
        args.options.seed, args.options.time_scale, args.options.rate_scale, args.options.clients
    ));
    for name in names {
        let sc = sim::scenario(name, &args.options).expect("known scenario");
        let sc = if args.only.is_empty() {
            sc
        } else {
            sc.only(|c| args.only.iter().any(|o| c.name().contains(o.as_str())))
        };
        eprintln!("{name}: {} contestants", sc.contestants.len());
        let report = sim::run_with(&sc, |run| {
            eprintln!(
                "  {:<45} {:>7.3} % success, p99.9 {:>6} ms  ({:.2} s)",
                run.name,
                run.summary.success,
                sim::ms(run.summary.p999),
                run.wall.as_secs_f64()
            )
        });
        let table = sim::markdown(&report);
        println!("{table}");
        summary.push_str(&table);
        summary.push('\n');
        let files = [
            (format!("{name}.md"), table),
            (format!("{name}-latency.svg"), svg::latency_cdf(&report)),
            (format!("{name}-load.svg"), svg::backend_load(&report)),
        ];
        for (file, contents) in files {
            let path = args.out.join(file);
            if let Err(e) = std::fs::write(&path, contents) {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        eprintln!(
            "{name}: {:.1} s; written to {}",
            report.wall.as_secs_f64(),
            args.out.display()
        );
    }
    if args.scenario == "all" {
        let path = args.out.join("summary.md");
        if let Err(e) = std::fs::write(&path, summary) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    eprintln!("total {:.1} s", total.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
