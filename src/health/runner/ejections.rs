//! Outlier detection in the runner: ejections that end (on probation, or straight back),
//! probations that end, and the interval detectors (success rate, failure percentage).

use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::super::outlier::{self, Sample, Verdict};
use super::super::{HealthEvent, HealthReason, OutlierDetection, OutlierSignal};
use super::record::{completed_failures, Record};
use super::Runner;
use crate::endpoint::flags;
use crate::time::after;

impl<K: Clone + Eq + Hash + Send + 'static> Runner<K> {
    /// Ends the ejections whose time is over: probation, or straight back.
    pub(super) fn end_ejections(
        &mut self,
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let back = self.comeback();
        let mut changed = false;
        for (key, record) in &mut self.records {
            if record.ejected_until.is_none_or(|t| t > now) {
                continue;
            }
            back.apply(
                key,
                record,
                now,
                &self.signal,
                HealthReason::EjectionEnded,
                emit,
            );
            changed = true;
        }
        changed
    }

    /// How an endpoint comes back from an ejection, with these settings.
    pub(super) fn comeback(&self) -> Comeback {
        Comeback {
            active: self.active().is_some(),
            probation: self
                .settings
                .outlier
                .as_ref()
                .filter(|o| o.probation_successes.is_some())
                .map(|o| o.interval),
            slow_start: self.settings.slow_start.is_some(),
        }
    }

    /// Ends the probations that lasted a whole outlier interval without a failure. An
    /// endpoint on probation gets a tenth of its weight, which under least request and a
    /// light load can be almost no requests at all: without this limit it could wait for
    /// its successes for ever.
    pub(super) fn end_probations(
        &mut self,
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let active = self.active().is_some();
        let mut changed = false;
        for (key, record) in &mut self.records {
            if record.probation_until.is_none_or(|t| t > now) {
                continue;
            }
            record.probation_until = None;
            if record.seen_flags & flags::PROBATION == 0
                || record.load.health_flags() & flags::PROBATION == 0
            {
                // Already ended (successes) or turned into an ejection: reconcile said so.
                continue;
            }
            let from = record.health(active);
            record.set_flags(flags::PROBATION, false);
            emit(HealthEvent {
                key: key.clone(),
                from,
                to: record.health(active),
                reason: HealthReason::ProbationElapsed,
            });
            changed = true;
        }
        changed
    }

    /// Every outlier interval: the success-rate and failure-percentage detectors.
    pub(super) fn run_interval(
        &mut self,
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let Some(settings) = self.settings.outlier.clone() else {
            return false;
        };
        let due = *self
            .next_interval
            .get_or_insert_with(|| after(now, settings.interval));
        if due > now {
            return false;
        }
        self.next_interval = Some(after(now, settings.interval));
        let (keys, verdicts) = self.judge_interval(&settings);
        self.apply_verdicts(&settings, &keys, &verdicts, now, emit)
    }

    /// Takes each endpoint's requests and failures over the interval that ends now, and
    /// runs the detectors on them. Returns the endpoints in the order judged, and the
    /// verdicts by index into that order.
    pub(super) fn judge_interval(
        &mut self,
        settings: &OutlierDetection,
    ) -> (Vec<K>, Vec<(usize, Verdict)>) {
        let keys: Vec<K> = self.records.keys().cloned().collect();
        let samples: Vec<Option<Sample>> = keys
            .iter()
            .map(|k| {
                let record = self.records.get_mut(k)?;
                let counts = (record.load.completed(), completed_failures(&record.load));
                let sample = Sample {
                    requests: counts.0.saturating_sub(record.counts.0),
                    failures: counts.1.saturating_sub(record.counts.1),
                };
                record.counts = counts;
                let flag_bits = record.load.health_flags();
                (flag_bits & (flags::EJECTED | flags::DRAINING) == 0).then_some(sample)
            })
            .collect();
        let verdicts = outlier::evaluate(settings, &samples);
        (keys, verdicts)
    }

    /// Ejects the endpoints the detectors judged, as far as the ejection slots allow, and
    /// forgives each of the others one earlier ejection.
    pub(super) fn apply_verdicts(
        &mut self,
        settings: &OutlierDetection,
        keys: &[K],
        verdicts: &[(usize, Verdict)],
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let active = self.active().is_some();
        let mut changed = false;
        for (i, key) in keys.iter().enumerate() {
            let Some(record) = self.records.get_mut(key) else {
                continue;
            };
            let verdict = verdicts.iter().find(|(j, _)| *j == i).map(|(_, v)| *v);
            let returned = std::mem::take(&mut record.returned_in_interval);
            let Some(verdict) = verdict else {
                // An interval without ejection forgives one earlier ejection: not one in
                // which an ejection ran or ended, nor one spent on probation (a failure on
                // probation must find the count it left with, and double the ejection).
                let flag_bits = record.load.health_flags();
                let held = flag_bits & (flags::PROBATION | flags::EJECTED) != 0;
                if record.ejected_until.is_none() && !returned && !held {
                    record.times_ejected = record.times_ejected.saturating_sub(1);
                }
                continue;
            };
            let unreachable = record.load.health_flags() & flags::UNREACHABLE != 0;
            if !self.signal.reserve_ejection(unreachable) {
                continue;
            }
            let from = record.health(active);
            if record.load.set_flags(flags::EJECTED, true) & flags::EJECTED != 0 {
                // The completion path ejected it since it was sampled: that ejection holds
                // its own slot, and the next reconcile reports it.
                self.signal.release_ejection();
                continue;
            }
            record.seen_flags |= flags::EJECTED;
            record.set_flags(flags::PROBATION, false);
            record.times_ejected = record.times_ejected.saturating_add(1);
            record.ejected_until = Some(after(now, settings.ejection_time(record.times_ejected)));
            record.probe_failed_in_ejection = false;
            record.ramp_from = None;
            let reason = match verdict {
                Verdict::SuccessRate { rate, threshold } => {
                    HealthReason::SuccessRate { rate, threshold }
                }
                Verdict::FailurePercentage { percent } => {
                    HealthReason::FailurePercentage { percent }
                }
            };
            emit(HealthEvent {
                key: key.clone(),
                from,
                to: record.health(active),
                reason,
            });
            changed = true;
        }
        changed
    }
}

/// How an endpoint comes back from an ejection: on probation (for at most one outlier
/// interval) or straight back, ramping if slow start is on.
pub(super) struct Comeback {
    active: bool,
    probation: Option<Duration>,
    slow_start: bool,
}

impl Comeback {
    /// Ends `record`'s ejection now, gives back its slot, and reports it with `reason`.
    pub(super) fn apply<K: Clone>(
        &self,
        key: &K,
        record: &mut Record,
        now: Instant,
        signal: &OutlierSignal,
        reason: HealthReason,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) {
        record.ejected_until = None;
        record.probe_failed_in_ejection = false;
        record.returned_in_interval = true;
        let from = record.health(self.active);
        if let Some(limit) = self.probation {
            record.load.begin_probation();
            record.seen_flags |= flags::PROBATION;
            record.probation_until = Some(after(now, limit));
        } else {
            record.load.end_ejection();
        }
        record.seen_flags &= !flags::EJECTED;
        signal.release_ejection();
        if self.slow_start {
            record.ramp_from = Some(now);
        }
        emit(HealthEvent {
            key: key.clone(),
            from,
            to: record.health(self.active),
            reason,
        });
    }
}
