//! Hand-written SVG plots of a scenario's report: latency by percentile for every
//! contestant, and every backend's load over time for every contestant.

use std::fmt::Write;

use crate::sim::{Algo, Report, Run};

const FONT: &str = "font-family=\"system-ui, sans-serif\"";

/// A colour per contestant: ours in distinct hues, tower's dashed, the oracle black.
fn style(run: &Run, i: usize) -> (String, &'static str) {
    const PALETTE: [&str; 12] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#bcbd22", "#7f7f7f", "#393b79", "#637939",
    ];
    match run.contestant.algo {
        Algo::Oracle => ("#000000".into(), "6 3"),
        Algo::TowerPending => ("#a05a2c".into(), "3 3"),
        Algo::TowerPeakEwma => ("#6b4c9a".into(), "3 3"),
        _ => (PALETTE[i % PALETTE.len()].into(), ""),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency (log scale, x) against percentile (y, in nines: 0, 90, 99, 99.9, 99.99 %), one
/// line per contestant. A failed request counts as the deadline, so a line that ends in a
/// vertical rise at the right edge is the share of failures.
pub fn latency_cdf(report: &Report) -> String {
    let (w, h) = (980.0, 560.0);
    let (left, right, top, bottom) = (70.0, 330.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let deadline_ms = report.scenario.deadline.as_secs_f64() * 1000.0;
    let min_ms = report
        .runs
        .iter()
        .filter_map(|r| r.sorted_us.first())
        .map(|&us| f64::from(us) / 1000.0)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let lo = 10f64.powf(min_ms.log10().floor());
    let hi = deadline_ms * 1.05;
    let (llo, lhi) = (lo.log10(), hi.log10());
    let nines = 4.0;
    let x = |ms: f64| left + (ms.max(lo).log10() - llo) / (lhi - llo) * pw;
    let y = |p: f64| {
        let n = (-(1.0 - p).max(1e-12).log10()).min(nines);
        top + ph - n / nines * ph
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" {FONT} font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}: latency by percentile (failures count as the {} ms deadline)</text>",
        report.scenario.name,
        deadline_ms
    );
    // Grid: decades and 2×, 5× on x; nines on y.
    let mut decade = lo;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v < lo || v > hi {
                continue;
            }
            let gx = x(v);
            let _ = writeln!(
                s,
                "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
                top + ph
            );
            let label = if v >= 1000.0 {
                format!("{} s", v / 1000.0)
            } else {
                format!("{v} ms")
            };
            let _ = writeln!(
                s,
                "<text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
                top + ph + 18.0
            );
        }
        decade *= 10.0;
    }
    let dx = x(deadline_ms);
    let _ = writeln!(
        s,
        "<line x1=\"{dx:.1}\" y1=\"{top}\" x2=\"{dx:.1}\" y2=\"{:.1}\" stroke=\"#c00\" stroke-dasharray=\"4 4\"/>",
        top + ph
    );
    for (p, label) in [
        (0.0, "0 %"),
        (0.5, "50 %"),
        (0.9, "90 %"),
        (0.99, "99 %"),
        (0.999, "99.9 %"),
        (0.9999, "99.99 %"),
    ] {
        let gy = y(p);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>",
            left + pw
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            left - 6.0,
            gy + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency (log scale)</text>",
        left + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );

    for (i, run) in report.runs.iter().enumerate() {
        let n = run.sorted_us.len();
        if n == 0 {
            continue;
        }
        let (colour, dash) = style(run, i);
        let mut points = String::new();
        // Evenly spaced in nines, then the last request.
        let steps = 400;
        for k in 0..=steps {
            let level = nines * k as f64 / steps as f64;
            let p = 1.0 - 10f64.powf(-level);
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            let ms = f64::from(run.sorted_us[rank - 1]) / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", x(ms), y(p));
            if rank == n {
                break;
            }
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            points.trim_end()
        );
        let ly = top + 6.0 + i as f64 * 18.0;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>",
            lx + 24.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 30.0,
            ly + 4.0,
            escape(&run.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One small panel per contestant: every backend's requests per second over time.
pub fn backend_load(report: &Report) -> String {
    let sc = &report.scenario;
    let bin_s = sc.bin.as_secs_f64().max(1e-3);
    let runs = &report.runs;
    let cols = 3usize;
    let rows = runs.len().div_ceil(cols);
    let (pw, ph) = (380.0, 190.0);
    let (gap_x, gap_y, left, top) = (70.0, 60.0, 60.0, 50.0);
    let w = left + cols as f64 * (pw + gap_x);
    let h = top + rows as f64 * (ph + gap_y) + 10.0;
    let duration = sc.duration.as_secs_f64();
    let bins_in_run = (duration / bin_s).ceil().max(1.0) as usize;
    let ymax = runs
        .iter()
        .flat_map(|r| r.series.iter())
        .flat_map(|b| b.iter().take(bins_in_run))
        .map(|&c| f64::from(c) / bin_s)
        .fold(1.0, f64::max);
    let ymax = nice_ceiling(ymax);
    let n_backends = sc.backends.len();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" {FONT} font-size=\"11\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}: requests per second received by each backend ({} lines per panel, {} s bins)</text>",
        sc.name, n_backends, bin_s
    );
    for (k, run) in runs.iter().enumerate() {
        let ox = left + (k % cols) as f64 * (pw + gap_x);
        let oy = top + (k / cols) as f64 * (ph + gap_y);
        let x = |t: f64| ox + t / duration * pw;
        let y = |v: f64| oy + ph - v / ymax * ph;
        let _ = writeln!(
            s,
            "<text x=\"{ox}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            oy - 8.0,
            escape(&run.name)
        );
        for frac in [0.0, 0.5, 1.0] {
            let gy = y(ymax * frac);
            let _ = writeln!(
                s,
                "<line x1=\"{ox}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#e4e4e4\"/>",
                ox + pw
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                ox - 4.0,
                gy + 4.0,
                ymax * frac
            );
        }
        for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let t = duration * frac;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0} s</text>",
                x(t),
                oy + ph + 14.0,
                t
            );
        }
        let _ = writeln!(
            s,
            "<rect x=\"{ox}\" y=\"{oy}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
        );
        for (b, series) in run.series.iter().enumerate() {
            let hue = (b as f64 * 360.0 / n_backends as f64).round();
            let mut points = String::new();
            for (i, &c) in series.iter().take(bins_in_run).enumerate() {
                let t = ((i as f64 + 0.5) * bin_s).min(duration);
                let _ = write!(points, "{:.1},{:.1} ", x(t), y(f64::from(c) / bin_s));
            }
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"hsl({hue},70%,45%)\" stroke-width=\"1\" stroke-opacity=\"0.85\" points=\"{}\"><title>backend {b}</title></polyline>",
                points.trim_end()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if p * m >= v {
            return p * m;
        }
    }
    p * 10.0
}
