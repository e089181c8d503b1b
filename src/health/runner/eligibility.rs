//! Who takes requests, and with which effective weights: what the health runner decides
//! each time the driver publishes a snapshot.
//!
//! - **Panic mode** (see the [health module docs](crate::health#panic-mode)): below the
//!   threshold of healthy endpoints, endpoints out on a probe verdict alone take requests
//!   too; endpoints ejected for failed requests, or unreachable, only when no other is
//!   left.
//! - **Effective weights**: a tenth of the weight on probation, the slow-start ramp, the
//!   lower of the two; scaled so that fractions of small weights stay distinct and large
//!   weights keep their proportions.

use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::Runner;
use crate::endpoint::{flags, Load};
use crate::health::HealthStats;
use crate::time::after;

/// The share of its weight an endpoint on probation gets.
const PROBATION_FACTOR: f64 = 0.1;
/// Effective weights are scaled by this when some endpoint gets a fraction of its weight,
/// so fractions of small weights stay distinct (1 % steps).
const WEIGHT_SCALE: u64 = 100;
/// A slow-start ramp is published in this many steps over its window.
const RAMP_STEPS: u32 = 20;

/// An endpoint as [`Runner::eligible`] sees it.
pub(crate) struct Candidate<'a, K> {
    pub(crate) key: &'a K,
    pub(crate) weight: u32,
    pub(crate) load: &'a Load,
}

/// What [`Runner::eligible`] decides for one snapshot.
pub(crate) struct Eligibility {
    /// For each candidate, its effective weight, or `None` when it gets no requests.
    pub(crate) weights: Vec<Option<u32>>,
    /// What the weights were multiplied by (1 unless some endpoint gets a fraction of its
    /// weight): `weights[i] / scale` is the effective weight in discovery's units. Read
    /// by the metrics (feature `metrics`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) scale: f64,
    /// The flags that make a pick skip an endpoint, for the hot path.
    pub(crate) skip: u32,
    pub(crate) stats: HealthStats,
}

impl<K: Clone + Eq + Hash + Send + 'static> Runner<K> {
    /// Decides, for the endpoints about to be published, which take requests and with
    /// which weights; applies panic mode (see the [health module docs](super#panic-mode)).
    pub(crate) fn eligible(&mut self, candidates: &[Candidate<'_, K>]) -> Eligibility {
        let now = Instant::now();
        self.started = true;
        let tiers: Vec<Option<Tier>> = candidates.iter().map(|c| self.tier(c)).collect();
        let mut stats = HealthStats::default();
        for (c, tier) in candidates.iter().zip(&tiers) {
            let bits = c.load.health_flags();
            stats.candidates += usize::from(tier.is_some());
            stats.healthy += usize::from(*tier == Some(Tier::Healthy));
            stats.ejected += usize::from(bits & flags::EJECTED != 0);
            stats.unreachable += usize::from(tier.is_some() && bits & flags::UNREACHABLE != 0);
        }
        if let Some(outlier) = &self.settings.outlier {
            self.signal
                .set_max_ejected(outlier.max_ejected(stats.candidates));
        }
        let panic = self.settings.panic;
        stats.panic = stats.candidates > 0
            && (stats.healthy as f64) < panic.threshold * stats.candidates as f64;
        // The least proven tier that takes requests: healthy ones only, or in panic mode
        // (failing open) also those out on a probe verdict alone, or, when neither exists,
        // every endpoint (nginx's "every server failed: try them all again").
        let admitted = if !stats.panic || panic.fail_closed {
            Tier::Healthy
        } else if tiers
            .iter()
            .any(|t| matches!(t, Some(Tier::Healthy | Tier::Suspect)))
        {
            Tier::Suspect
        } else {
            Tier::Failing
        };
        stats.admitted_unhealthy = tiers
            .iter()
            .filter(|t| t.is_some_and(|t| t != Tier::Healthy && t <= admitted))
            .count();
        self.log_panic(&stats, admitted);
        let skip = match admitted {
            Tier::Healthy => flags::UNAVAILABLE,
            // Endpoints out on a probe verdict take requests; one ejected meanwhile does not.
            Tier::Suspect => flags::DRAINING | flags::EJECTED,
            Tier::Failing | Tier::Awaiting => flags::DRAINING,
        };

        // Slow start and probation: the share of its weight each endpoint gets (none for
        // hashing strategies, whose keys would move with the weights).
        let factors = self.weight_factors(candidates, now);
        let scale = weight_scale(candidates, &factors);
        let weights = candidates
            .iter()
            .zip(&tiers)
            .zip(&factors)
            .map(|((c, tier), factor)| {
                if !tier.is_some_and(|t| t <= admitted) {
                    return None;
                }
                match scale {
                    None => Some(c.weight),
                    Some(scale) => {
                        let w = f64::from(c.weight) * scale * factor;
                        Some(w.round().clamp(1.0, f64::from(u32::MAX)) as u32)
                    }
                }
            })
            .collect();
        Eligibility {
            weights,
            scale: scale.unwrap_or(1.0),
            skip,
            stats,
        }
    }

    /// Where an endpoint stands for routing; `None` when it is no candidate at all
    /// (weight 0, or draining).
    fn tier(&self, c: &Candidate<'_, K>) -> Option<Tier> {
        let bits = c.load.health_flags();
        if c.weight == 0 || bits & flags::DRAINING != 0 {
            return None;
        }
        if bits & (flags::UNHEALTHY | flags::EJECTED) == 0 {
            return Some(Tier::Healthy);
        }
        let awaiting = bits & flags::UNHEALTHY != 0
            && self.settings.active.is_some()
            && self.records.get(c.key).is_some_and(|r| r.probed.is_none());
        if awaiting {
            Some(Tier::Awaiting)
        } else if bits & (flags::EJECTED | flags::UNREACHABLE) != 0 {
            Some(Tier::Failing)
        } else {
            Some(Tier::Suspect)
        }
    }

    /// Logs panic mode as it starts and ends (a warning: the health picture is bad enough
    /// that the balancer no longer trusts part of it).
    fn log_panic(&mut self, stats: &HealthStats, admitted: Tier) {
        if stats.panic == self.in_panic {
            return;
        }
        self.in_panic = stats.panic;
        if !stats.panic {
            tracing::info!(
                healthy = stats.healthy,
                endpoints = stats.candidates,
                "panic mode over: enough endpoints are healthy again"
            );
            return;
        }
        let threshold = self.settings.panic.threshold * 100.0;
        let action = match admitted {
            Tier::Healthy => "failing closed: only healthy endpoints take requests",
            Tier::Suspect => {
                "balancing over the healthy endpoints and those out on a probe verdict alone; \
                 ejected and unreachable ones stay out"
            }
            Tier::Failing | Tier::Awaiting => {
                "no endpoint is healthy: balancing over all of them (fail open)"
            }
        };
        tracing::warn!(
            healthy = stats.healthy,
            endpoints = stats.candidates,
            readmitted = stats.admitted_unhealthy,
            "panic mode: {} of {} endpoints healthy, below the {threshold} % threshold; {action}",
            stats.healthy,
            stats.candidates,
        );
    }

    /// The share of its weight each candidate gets now: a tenth on probation, its ramp
    /// during slow start, the lower of the two when both apply, 1 otherwise.
    fn weight_factors(&mut self, candidates: &[Candidate<'_, K>], now: Instant) -> Vec<f64> {
        let fixed = self.settings.fixed_weights;
        let slow_start = self.settings.slow_start.filter(|_| !fixed);
        let mut ramping = false;
        let factors = candidates
            .iter()
            .map(|c| {
                let mut factor = 1.0;
                if !fixed && c.load.health_flags() & flags::PROBATION != 0 {
                    factor = PROBATION_FACTOR;
                }
                if let (Some(s), Some(record)) = (slow_start, self.records.get(c.key)) {
                    if let Some(from) = record.ramp_from {
                        let f = s.factor(now.saturating_duration_since(from));
                        if f < 1.0 {
                            ramping = true;
                            factor = f64::min(factor, f);
                        }
                    }
                }
                factor
            })
            .collect();
        if ramping {
            if let Some(s) = slow_start {
                self.next_ramp_step = Some(after(
                    now,
                    (s.window / RAMP_STEPS).max(Duration::from_millis(1)),
                ));
            }
        } else {
            self.next_ramp_step = None;
            for record in self.records.values_mut() {
                record.ramp_from = None;
            }
        }
        factors
    }
}

/// Where an endpoint stands when the balancer decides who takes requests. Ordered: panic
/// mode admits tiers from the first up to the first that has an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// Not unhealthy by probes, not ejected.
    Healthy,
    /// Out on a probe verdict alone (a status, a timeout): the verdict may be what is
    /// broken, so panic mode sends it traffic, and outlier detection judges that traffic.
    Suspect,
    /// Ejected for failed requests, or unreachable (refused connections): proof that a
    /// request sent there fails. Only taken when nothing else is left.
    Failing,
    /// Awaiting its first probe answer with `Initial::Unhealthy`: counts as not healthy,
    /// and takes no requests, even when nothing else is left.
    Awaiting,
}

/// The factor that turns weights into effective weights when some endpoint gets a
/// fraction of its weight (`None`: weights are used as they are). Fractions of small
/// weights need resolution, so weights are scaled up by [`WEIGHT_SCALE`], but never so far
/// that the largest weight would overflow `u32` and lose its proportion to the others.
fn weight_scale<K>(candidates: &[Candidate<'_, K>], factors: &[f64]) -> Option<f64> {
    if factors.iter().all(|f| *f >= 1.0) {
        return None;
    }
    let heaviest = candidates
        .iter()
        .map(|c| c.weight)
        .max()
        .unwrap_or(1)
        .max(1);
    let room = f64::from(u32::MAX) / f64::from(heaviest);
    Some(room.clamp(1.0, WEIGHT_SCALE as f64))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::endpoint::Metadata;
    use crate::health::{
        ActiveChecks, HealthSettings, OutlierDetection, OutlierSignal, PanicMode, TcpProbe,
    };
    use crate::strategy::rng::Rng;

    /// A runner over endpoints "0", "1", ... with the given weights, every one probed once
    /// successfully (so none awaits its first answer), with these panic settings.
    fn fleet(weights: &[u32], panic: PanicMode) -> (Runner<usize>, Vec<Arc<Load>>) {
        let outlier = OutlierDetection::new();
        let signal = Arc::new(OutlierSignal::new(&outlier));
        let settings = HealthSettings {
            active: Some((ActiveChecks::new(), Arc::new(TcpProbe::new()))),
            outlier: Some(outlier),
            panic,
            ..HealthSettings::default()
        };
        let mut runner = Runner::new(settings, signal, None, None, Rng::default(), false);
        let loads: Vec<Arc<Load>> = weights
            .iter()
            .map(|_| Arc::new(runner.new_load()))
            .collect();
        for (i, load) in loads.iter().enumerate() {
            runner.insert(&i, load, i.to_string().into(), Metadata::default());
            runner.records.get_mut(&i).unwrap().probed = Some(true);
        }
        (runner, loads)
    }

    fn decide(runner: &mut Runner<usize>, weights: &[u32], loads: &[Arc<Load>]) -> Eligibility {
        let keys: Vec<usize> = (0..weights.len()).collect();
        let candidates: Vec<Candidate<'_, usize>> = keys
            .iter()
            .zip(weights)
            .zip(loads)
            .map(|((key, &weight), load)| Candidate { key, weight, load })
            .collect();
        runner.eligible(&candidates)
    }

    #[tokio::test(start_paused = true)]
    async fn panic_mode_admits_suspect_endpoints_but_not_failing_ones() {
        use flags::{EJECTED, UNHEALTHY, UNREACHABLE};
        let open = PanicMode::default();
        let closed = PanicMode {
            fail_closed: true,
            ..open
        };
        // (flags of each endpoint, panic settings, who takes requests, admitted unhealthy)
        let cases: [([u32; 3], PanicMode, [bool; 3], usize); 7] = [
            // The seed's case: one healthy, one ejected for 500s, one refusing.
            (
                [0, EJECTED, UNHEALTHY | UNREACHABLE],
                open,
                [true, false, false],
                0,
            ),
            (
                [0, EJECTED, EJECTED | UNREACHABLE],
                open,
                [true, false, false],
                0,
            ),
            // A probe verdict alone may be what is broken: in.
            ([0, EJECTED, UNHEALTHY], open, [true, false, true], 1),
            ([0, UNHEALTHY, UNHEALTHY], open, [true, true, true], 2),
            // Nothing healthy or suspect: every endpoint (fail open).
            (
                [EJECTED, EJECTED, UNHEALTHY | UNREACHABLE],
                open,
                [true, true, true],
                3,
            ),
            // Failing closed: only the healthy.
            ([0, UNHEALTHY, UNHEALTHY], closed, [true, false, false], 0),
            // Two of three healthy: no panic, the ejected one stays out.
            ([0, 0, EJECTED], open, [true, true, false], 0),
        ];
        for (bits, panic, expected, admitted) in cases {
            let weights = [1, 1, 1];
            let (mut runner, loads) = fleet(&weights, panic);
            for (load, bits) in loads.iter().zip(bits) {
                load.set_flags(bits, true);
            }
            let decided = decide(&mut runner, &weights, &loads);
            let takes: Vec<bool> = decided.weights.iter().map(Option::is_some).collect();
            assert_eq!(takes, expected, "{bits:?} {panic:?}");
            assert_eq!(decided.stats.admitted_unhealthy, admitted, "{bits:?}");
            assert_eq!(
                decided.stats.panic,
                bits.iter().filter(|b| **b == 0).count() < 2
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_endpoints_keep_panic_modes_protection_against_probe_verdicts() {
        let weights = [1; 100];
        let (mut runner, loads) = fleet(&weights, PanicMode::default());
        // 60 out on a probe verdict alone (a health path broken everywhere, say): panic
        // mode sends traffic to all 100, as Envoy's does.
        for load in &loads[..60] {
            load.set_flags(flags::UNHEALTHY, true);
        }
        let decided = decide(&mut runner, &weights, &loads);
        assert!(decided.stats.panic);
        assert_eq!(decided.stats.admitted_unhealthy, 60);
        assert!(decided.weights.iter().all(Option::is_some));
        // The same 60 unreachable instead: the 40 healthy take everything.
        for load in &loads[..60] {
            load.set_flags(flags::UNREACHABLE, true);
        }
        let decided = decide(&mut runner, &weights, &loads);
        assert!(decided.stats.panic);
        assert_eq!(decided.stats.unreachable, 60);
        assert_eq!(decided.stats.admitted_unhealthy, 0);
        assert_eq!(decided.weights.iter().filter(|w| w.is_some()).count(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn weights_above_43_million_keep_their_proportions_while_one_is_on_probation() {
        let weights = [100_000_000, 300_000_000, 4_000_000_000];
        let (mut runner, loads) = fleet(&weights, PanicMode::default());
        loads[1].set_flags(flags::PROBATION, true);
        let decided = decide(&mut runner, &weights, &loads);
        let w: Vec<f64> = decided
            .weights
            .iter()
            .map(|w| f64::from(w.unwrap()))
            .collect();
        // 300 M on probation counts a tenth: 30 M, against 100 M and 4 000 M.
        assert!((w[1] / w[0] - 0.3).abs() < 1e-6, "{w:?}");
        assert!((w[2] / w[0] - 40.0).abs() < 1e-6, "{w:?}");
        assert!(w[2] <= f64::from(u32::MAX));
    }
}
