//! The health state machine, run by the balancer's background task.
//!
//! It keeps one record per endpoint, runs the probes, ends ejections, runs the outlier
//! detectors every interval, and turns flag changes made on the completion path (an
//! ejection, the end of probation) and by `set_draining` into events. When the driver
//! publishes a snapshot, [`eligibility`] decides which endpoints take requests, with which
//! effective weights (panic mode, probation, slow start).

mod eligibility;

pub(crate) use eligibility::Candidate;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::{Instant, Sleep};

use super::outlier::{self, Sample, Verdict};
use super::probe::{DynProbe, ProbeTarget};
use super::{
    ActiveChecks, Health, HealthEvent, HealthReason, HealthSettings, OutlierDetection,
    OutlierSignal,
};
use crate::endpoint::{flags, Load, LoadSettings, Metadata, Penalty, Timing};
use crate::strategy::rng::Rng;
use crate::time::after;

type ProbeResult<K> = (K, u64, Result<(), super::ProbeFailure>);
type ProbeTask<K> = Pin<Box<dyn Future<Output = ProbeResult<K>> + Send>>;

/// One endpoint's health record.
struct Record {
    load: Arc<Load>,
    target: ProbeTarget,
    /// Bumped when the endpoint is re-added, so a late probe answer for the old one is ignored.
    generation: u64,
    /// The last probe answer (healthy or not): `None` until the first answer.
    probed: Option<bool>,
    /// Probe answers in a row that agree with the last one.
    in_row: u32,
    /// When the next probe is due; `None` while one runs or waits for a slot.
    next_probe: Option<Instant>,
    queued: bool,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    /// Whether a probe failed during the current ejection, or the endpoint was unreachable
    /// when it was ejected: the next successful probe then ends the ejection (the endpoint
    /// was seen to fail and to recover).
    probe_failed_in_ejection: bool,
    /// Whether an ejection ended during the current outlier interval: such an interval
    /// does not forgive an ejection.
    returned_in_interval: bool,
    /// When probation ends even without its successes: one outlier interval after it
    /// began, if no failure ejected the endpoint again.
    probation_until: Option<Instant>,
    /// Requests and completed failures at the start of the outlier interval.
    counts: (u64, u64),
    /// The flags the runner has accounted for: those of the last reconcile, with the
    /// runner's own changes since applied (never read back from the load, so that a change
    /// the completion path or `set_draining` makes meanwhile is still reconciled).
    seen_flags: u32,
    /// When the endpoint was added or came back, while it ramps.
    ramp_from: Option<Instant>,
}

impl Record {
    fn health(&self, active: bool) -> Health {
        health_of(self.seen_flags, active && self.probed.is_none())
    }

    /// Sets (`on`) or clears the flags in `mask` as the runner's own change. Returns the
    /// flags before.
    fn set_flags(&mut self, mask: u32, on: bool) -> u32 {
        if on {
            self.seen_flags |= mask;
        } else {
            self.seen_flags &= !mask;
        }
        self.load.set_flags(mask, on)
    }

    /// Ends tracking: requests still in flight on the endpoint can no longer eject it, and
    /// an ejection it holds gives back its slot.
    fn detach(&self, signal: &OutlierSignal) {
        let before = self.load.set_flags(flags::REMOVED, true);
        if before & flags::EJECTED != 0 {
            signal.release_ejection();
        }
    }
}

fn health_of(flag_bits: u32, unknown: bool) -> Health {
    if flag_bits & flags::DRAINING != 0 {
        Health::Draining
    } else if flag_bits & flags::EJECTED != 0 {
        Health::Ejected
    } else if unknown {
        Health::Unknown
    } else if flag_bits & flags::UNHEALTHY != 0 {
        Health::Unhealthy
    } else if flag_bits & flags::PROBATION != 0 {
        Health::Probation
    } else {
        Health::Healthy
    }
}

pub(crate) struct Runner<K> {
    settings: HealthSettings,
    signal: Arc<OutlierSignal>,
    /// What every endpoint's counters share (clock, latency and penalty settings, the
    /// outlier hook).
    load_settings: Arc<LoadSettings>,
    records: HashMap<K, Record>,
    next_generation: u64,
    probes: FuturesUnordered<ProbeTask<K>>,
    /// Endpoints waiting for a probe slot, in order.
    waiting: Vec<K>,
    timer: Option<Pin<Box<Sleep>>>,
    next_interval: Option<Instant>,
    next_ramp_step: Option<Instant>,
    /// Whether the first snapshot was published: endpoints added later ramp up.
    started: bool,
    /// Whether the last published snapshot was in panic mode (to log its start and end).
    in_panic: bool,
    rng: Rng,
}

impl<K: Clone + Eq + Hash + Send + 'static> Runner<K> {
    /// A runner for endpoints whose counters take their clock and latency settings from
    /// `timing` and `penalty`; `rng` draws the jitter of probe intervals.
    pub(crate) fn new(
        settings: HealthSettings,
        signal: Arc<OutlierSignal>,
        timing: Option<Timing>,
        penalty: Option<Penalty>,
        rng: Rng,
        reports: bool,
    ) -> Self {
        let load_settings = Arc::new(LoadSettings {
            timing,
            penalty,
            outlier: settings.outlier.as_ref().map(|_| signal.clone()),
            reports,
        });
        Runner {
            settings,
            signal,
            load_settings,
            records: HashMap::new(),
            next_generation: 0,
            probes: FuturesUnordered::new(),
            waiting: Vec::new(),
            timer: None,
            next_interval: None,
            next_ramp_step: None,
            started: false,
            in_panic: false,
            rng,
        }
    }

    fn active(&self) -> Option<&(ActiveChecks, Arc<dyn DynProbe>)> {
        self.settings.active.as_ref()
    }

    /// A new endpoint's counters, with its initial flags and the shared settings.
    pub(crate) fn new_load(&self) -> Load {
        let initial = match self.active() {
            Some((a, _)) if a.initial == super::Initial::Unhealthy => flags::UNHEALTHY,
            _ => 0,
        };
        Load::new(self.load_settings.clone(), initial)
    }

    /// Starts tracking an endpoint (new, or re-added with new counters), or updates its
    /// target. A known endpoint keeps its record.
    pub(crate) fn insert(&mut self, key: &K, load: &Arc<Load>, name: Arc<str>, metadata: Metadata) {
        let now = Instant::now();
        if let Some(record) = self.records.get_mut(key) {
            if Arc::ptr_eq(&record.load, load) {
                record.target = ProbeTarget { name, metadata };
                return;
            }
            record.detach(&self.signal);
        }
        self.next_generation += 1;
        let flags_now = load.health_flags();
        let record = Record {
            load: load.clone(),
            target: ProbeTarget { name, metadata },
            generation: self.next_generation,
            probed: None,
            in_row: 0,
            next_probe: self.active().map(|_| now),
            queued: false,
            times_ejected: 0,
            ejected_until: None,
            probe_failed_in_ejection: false,
            returned_in_interval: false,
            probation_until: None,
            counts: (load.completed(), completed_failures(load)),
            seen_flags: flags_now,
            ramp_from: (self.started && self.settings.slow_start.is_some()).then_some(now),
        };
        self.records.insert(key.clone(), record);
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(record) = self.records.remove(key) {
            record.detach(&self.signal);
        }
        self.waiting.retain(|k| k != key);
    }

    /// Runs everything that is due. Events go to `emit`. Returns whether eligibility or
    /// effective weights changed, so the driver must publish a new snapshot.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        self.signal.register_driver(cx.waker());
        let now = Instant::now();
        let mut changed = self.reconcile(now, emit);
        changed |= self.poll_probes(cx, now, emit);
        changed |= self.end_ejections(now, emit);
        changed |= self.end_probations(now, emit);
        changed |= self.run_interval(now, emit);
        if let Some(step) = self.next_ramp_step {
            if step <= now {
                self.next_ramp_step = None;
                changed = true;
            }
        }
        changed
    }

    /// Turns flags changed outside the driver into records and events: one event per
    /// change, in a fixed order (ejection or end of probation, then draining), even when
    /// several happened since the last reconcile.
    fn reconcile(&mut self, now: Instant, emit: &mut dyn FnMut(HealthEvent<K>)) -> bool {
        let active = self.active().is_some();
        let outlier = self.settings.outlier.clone();
        let mut changed = false;
        for (key, record) in &mut self.records {
            let flags_now = record.load.health_flags();
            let before = record.seen_flags;
            if flags_now == before {
                continue;
            }
            changed = true;
            record.seen_flags = flags_now;
            let unknown = active && record.probed.is_none();
            let newly = flags_now & !before;
            let cleared = before & !flags_now;
            // Each change as its own event, each from where the one before left off.
            let mut shown = before;
            let mut events: [Option<(u32, u32, HealthReason)>; 2] = [None, None];
            if newly & flags::EJECTED != 0 {
                // Ejected by the completion path: failures in a row (one, on probation).
                record.times_ejected = record.times_ejected.saturating_add(1);
                let time = outlier.as_ref().map_or(Duration::from_secs(30), |o| {
                    o.ejection_time(record.times_ejected)
                });
                record.ejected_until = Some(after(now, time));
                // Ejected while unreachable (its requests were refused a connection): it
                // failed as a TCP probe fails, so the first probe that reaches it ends the
                // ejection, even when it came back before any probe ran (a supervisor's
                // restart takes about a second; probes run every two).
                record.probe_failed_in_ejection = flags_now & flags::UNREACHABLE != 0;
                record.ramp_from = None;
                let in_row = record.load.consecutive_failures().max(1);
                if flags_now & flags::PROBATION != 0 {
                    record.set_flags(flags::PROBATION, false);
                }
                let to = (shown | flags::EJECTED) & !flags::PROBATION;
                events[0] = Some((shown, to, HealthReason::ConsecutiveFailures(in_row)));
                shown = to;
            } else if cleared & flags::PROBATION != 0 {
                let to = shown & !flags::PROBATION;
                events[0] = Some((shown, to, HealthReason::ProbationPassed));
                shown = to;
            }
            if newly & flags::DRAINING != 0 {
                events[1] = Some((shown, shown | flags::DRAINING, HealthReason::DrainStarted));
            } else if cleared & flags::DRAINING != 0 {
                events[1] = Some((shown, shown & !flags::DRAINING, HealthReason::DrainStopped));
            }
            for (from, to, reason) in events.into_iter().flatten() {
                emit(HealthEvent {
                    key: key.clone(),
                    from: health_of(from, unknown),
                    to: health_of(to, unknown),
                    reason,
                });
            }
        }
        changed
    }

    /// Collects probe answers and starts the probes that are due.
    fn poll_probes(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let Some((checks, probe)) = self.settings.active.clone() else {
            return false;
        };
        let mut changed = false;
        loop {
            while let Poll::Ready(Some((key, generation, result))) = self.probes.poll_next_unpin(cx)
            {
                changed |= self.on_probe_result(&checks, key, generation, result, now, emit);
            }
            // Start due probes, up to the concurrency cap, in order of due time.
            let mut due: Vec<(Instant, K)> = self
                .records
                .iter()
                .filter(|(_, r)| !r.queued && r.next_probe.is_some_and(|t| t <= now))
                .map(|(k, r)| (r.next_probe.unwrap_or(now), k.clone()))
                .collect();
            due.sort_by_key(|(t, _)| *t);
            for (_, key) in due {
                if let Some(record) = self.records.get_mut(&key) {
                    record.next_probe = None;
                    record.queued = true;
                }
                self.waiting.push(key);
            }
            let mut started = false;
            while self.probes.len() < checks.concurrency && !self.waiting.is_empty() {
                let key = self.waiting.remove(0);
                let Some(record) = self.records.get(&key) else {
                    continue;
                };
                // A probe is user code: if it panics (starting or running), that probe
                // failed, and the driver (discovery, the other probes) carries on.
                let future =
                    panic::catch_unwind(AssertUnwindSafe(|| probe.probe_boxed(&record.target)));
                let timeout = checks.timeout;
                let generation = record.generation;
                self.probes.push(Box::pin(async move {
                    let result = match future {
                        Ok(future) => {
                            let checked = AssertUnwindSafe(future).catch_unwind();
                            match tokio::time::timeout(timeout, checked).await {
                                Ok(Ok(result)) => result,
                                Ok(Err(_)) => Err(probe_panicked()),
                                Err(_) => Err(super::ProbeFailure::Timeout(timeout)),
                            }
                        }
                        Err(_) => Err(probe_panicked()),
                    };
                    (key, generation, result)
                }));
                started = true;
            }
            if !started {
                return changed;
            }
        }
    }

    fn on_probe_result(
        &mut self,
        checks: &ActiveChecks,
        key: K,
        generation: u64,
        result: Result<(), super::ProbeFailure>,
        now: Instant,
        emit: &mut dyn FnMut(HealthEvent<K>),
    ) -> bool {
        let delay = checks.next_delay(self.rng.unit());
        let back = self.comeback();
        let Some(record) = self.records.get_mut(&key) else {
            return false;
        };
        if record.generation != generation {
            return false;
        }
        record.queued = false;
        record.next_probe = Some(after(now, delay));
        let ok = result.is_ok();
        // Whether the answer proves the endpoint unreachable (or reachable): evidence that
        // panic mode and the ejection cap read, whatever the probe's rise and fall decide.
        let unreachable = result.as_ref().err().is_some_and(proves_unreachable);
        let was_unreachable = record.load.health_flags() & flags::UNREACHABLE != 0;
        let mut changed = false;
        if unreachable != was_unreachable && (ok || unreachable) {
            record.set_flags(flags::UNREACHABLE, unreachable);
            changed = true;
        }
        // A probe that failed during an ejection and now succeeds saw the endpoint come
        // back: the ejection ends now rather than at its time.
        if record.ejected_until.is_some() {
            if !ok {
                record.probe_failed_in_ejection = true;
            } else if record.probe_failed_in_ejection {
                back.apply(
                    &key,
                    record,
                    now,
                    &self.signal,
                    HealthReason::ProbeRecovered,
                    emit,
                );
                changed = true;
            }
        }
        let from = record.health(true);
        let first = record.probed.is_none();
        // `probed` is the last answer (not the state), so `in_row` counts the answers in a
        // row that agree: a success after failures starts a new run of one.
        if record.probed == Some(ok) {
            record.in_row = record.in_row.saturating_add(1);
        } else {
            record.in_row = 1;
        }
        record.probed = Some(ok);
        let healthy_before = record.load.health_flags() & flags::UNHEALTHY == 0;
        // The first answer decides at once; later ones need `rise` or `fall` in a row, but
        // for an endpoint that could not be reached and now answers: a process that was not
        // listening and now is (a restart) is back at its first success.
        let flip = if first {
            true
        } else if ok {
            !healthy_before && (record.in_row >= checks.rise || was_unreachable)
        } else {
            healthy_before && record.in_row >= checks.fall
        };
        if !flip {
            return changed;
        }
        record.set_flags(flags::UNHEALTHY, !ok);
        if ok && !healthy_before && self.started && self.settings.slow_start.is_some() {
            record.ramp_from = Some(now);
        }
        let reason = match result {
            Ok(()) => HealthReason::ProbeSucceeded,
            Err(failure) => HealthReason::ProbeFailed(Arc::new(failure)),
        };
        emit(HealthEvent {
            key,
            from,
            to: record.health(true),
            reason,
        });
        true
    }

    /// Ends the ejections whose time is over: probation, or straight back.
    fn end_ejections(&mut self, now: Instant, emit: &mut dyn FnMut(HealthEvent<K>)) -> bool {
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
    fn comeback(&self) -> Comeback {
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
    fn end_probations(&mut self, now: Instant, emit: &mut dyn FnMut(HealthEvent<K>)) -> bool {
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
    fn run_interval(&mut self, now: Instant, emit: &mut dyn FnMut(HealthEvent<K>)) -> bool {
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
    fn judge_interval(&mut self, settings: &OutlierDetection) -> (Vec<K>, Vec<(usize, Verdict)>) {
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
    fn apply_verdicts(
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

    /// Arms one timer for the earliest thing due: a probe, an ejection's end, the outlier
    /// interval, the next slow-start step.
    pub(crate) fn arm_timer(&mut self, cx: &mut Context<'_>) {
        let mut next: Option<Instant> = self
            .next_interval
            .filter(|_| self.settings.outlier.is_some());
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.next_ramp_step);
        for record in self.records.values() {
            consider(record.next_probe);
            consider(record.ejected_until);
            consider(record.probation_until);
        }
        let Some(deadline) = next else {
            self.timer = None;
            return;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            // Already due: come back at once.
            cx.waker().wake_by_ref();
        }
    }
}

/// How an endpoint comes back from an ejection: on probation (for at most one outlier
/// interval) or straight back, ramping if slow start is on.
struct Comeback {
    active: bool,
    probation: Option<Duration>,
    slow_start: bool,
}

impl Comeback {
    /// Ends `record`'s ejection now, gives back its slot, and reports it with `reason`.
    fn apply<K: Clone>(
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

#[cold]
fn probe_panicked() -> super::ProbeFailure {
    tracing::error!("a health probe panicked; counting it as a failed probe");
    super::ProbeFailure::Unhealthy("the probe panicked".into())
}

/// Whether a failed probe proves that the endpoint cannot be reached.
fn proves_unreachable(failure: &super::ProbeFailure) -> bool {
    match failure {
        super::ProbeFailure::Connect(e) => super::unreachable::is_unreachable(e),
        super::ProbeFailure::Transport(e) => super::unreachable::is_unreachable(&**e),
        _ => false,
    }
}

/// Completed requests that failed (failures minus failed readiness checks).
fn completed_failures(load: &Load) -> u64 {
    load.failures().saturating_sub(load.readiness_failures())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::outlier::FailurePercentage;
    use crate::health::{ProbeFailure, TcpProbe};

    /// A runner with active checks and outlier detection (ejecting after `consecutive`
    /// failures in a row, or at 85 % failures of at least one request), tracking endpoint
    /// "a".
    fn runner(consecutive: u32) -> (Runner<&'static str>, Arc<Load>, Arc<OutlierSignal>) {
        let outlier = OutlierDetection::new()
            .consecutive_failures(Some(consecutive))
            .success_rate(None)
            .failure_percentage(Some(FailurePercentage {
                minimum_hosts: 1,
                request_volume: 1,
                ..FailurePercentage::default()
            }));
        let signal = Arc::new(OutlierSignal::new(&outlier));
        signal.set_max_ejected(5);
        let settings = HealthSettings {
            active: Some((ActiveChecks::new(), Arc::new(TcpProbe::new()))),
            outlier: Some(outlier),
            ..HealthSettings::default()
        };
        // With least request's failure penalty, which an ejection's end forgives.
        let penalty = Penalty {
            epoch: Instant::now(),
            decay_ns: 1e9,
        };
        let mut runner = Runner::new(
            settings,
            signal.clone(),
            None,
            Some(penalty),
            Rng::default(),
            false,
        );
        let load = Arc::new(runner.new_load());
        runner.insert(&"a", &load, "a".into(), Metadata::default());
        (runner, load, signal)
    }

    /// One request that completed on `load`, failed or not.
    fn complete(load: &Load, failure: bool) {
        load.start();
        load.record(if failure {
            crate::endpoint::Observed::Failure
        } else {
            crate::endpoint::Observed::Success
        });
        load.finish();
    }

    fn reasons(events: &[HealthEvent<&'static str>]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{} -> {} ({})", e.from, e.to, e.reason))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_on_the_completion_path_during_a_probe_answer_is_still_reconciled() {
        let (mut runner, load, signal) = runner(1);
        let checks = ActiveChecks::new();
        let mut events = Vec::new();
        let now = Instant::now();
        assert!(!runner.reconcile(now, &mut |e| events.push(e)));
        // Another thread's request fails after the driver reconciled, before it handles
        // the endpoint's first probe answer.
        complete(&load, true);
        assert_ne!(load.health_flags() & flags::EJECTED, 0);
        let generation = runner.records[&"a"].generation;
        let answer: Result<(), ProbeFailure> = Ok(());
        runner.on_probe_result(&checks, "a", generation, answer, now, &mut |e| {
            events.push(e)
        });
        // The next reconcile reports the ejection and times it.
        assert!(runner.reconcile(now, &mut |e| events.push(e)));
        assert_eq!(
            reasons(&events),
            [
                "unknown -> healthy (probe succeeded)",
                "healthy -> ejected (1 failures in a row)"
            ]
        );
        let until = runner.records[&"a"]
            .ejected_until
            .expect("the ejection ends");
        assert_eq!(until, now + Duration::from_secs(30));
        runner.end_ejections(until, &mut |e| events.push(e));
        assert_eq!(load.health_flags() & flags::EJECTED, 0);
        assert_eq!(signal.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_ejection_racing_a_completion_path_ejection_takes_one_slot() {
        let (mut runner, load, signal) = runner(3);
        let settings = runner.settings.outlier.clone().unwrap();
        let mut events = Vec::new();
        let now = Instant::now();
        // Two failures: not yet three in a row, but 100 % of the interval's requests.
        complete(&load, true);
        complete(&load, true);
        let (keys, verdicts) = runner.judge_interval(&settings);
        assert_eq!(verdicts.len(), 1);
        // The third failure ejects it on the completion path before the verdict applies.
        complete(&load, true);
        assert_eq!(signal.ejected(), 1);
        runner.apply_verdicts(&settings, &keys, &verdicts, now, &mut |e| events.push(e));
        assert_eq!(signal.ejected(), 1, "one ejection, one slot");
        // The completion path's ejection is the one reported and timed.
        runner.reconcile(now, &mut |e| events.push(e));
        assert_eq!(
            reasons(&events),
            ["unknown -> ejected (3 failures in a row)"]
        );
        let until = runner.records[&"a"]
            .ejected_until
            .expect("the ejection ends");
        runner.end_ejections(until, &mut |e| events.push(e));
        assert_eq!(signal.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_endpoints_late_failures_take_no_ejection_slot() {
        // Removed with a request in flight that then fails.
        let (mut health, load, signal) = runner(1);
        health.remove(&"a");
        complete(&load, true);
        assert_eq!(load.health_flags() & flags::EJECTED, 0);
        assert_eq!(signal.ejected(), 0);
        // Removed while ejected: the slot comes back at the removal, once.
        let (mut health, load, signal) = runner(1);
        complete(&load, true);
        assert_eq!(signal.ejected(), 1);
        health.remove(&"a");
        assert_eq!(signal.ejected(), 0);
        complete(&load, true);
        assert_eq!(signal.ejected(), 0);
    }

    fn refused() -> Result<(), ProbeFailure> {
        Err(ProbeFailure::Connect(
            std::io::ErrorKind::ConnectionRefused.into(),
        ))
    }

    fn bad_status() -> Result<(), ProbeFailure> {
        Err(ProbeFailure::Status(http::StatusCode::SERVICE_UNAVAILABLE))
    }

    /// Hands `answer` to the runner as endpoint "a"'s next probe answer.
    fn answer(
        runner: &mut Runner<&'static str>,
        answer: Result<(), ProbeFailure>,
        events: &mut Vec<HealthEvent<&'static str>>,
    ) {
        let generation = runner.records[&"a"].generation;
        let checks = ActiveChecks::new();
        runner.on_probe_result(&checks, "a", generation, answer, Instant::now(), &mut |e| {
            events.push(e)
        });
    }

    /// The events of an endpoint ejected at its first failure, whose ejection a probe
    /// ended.
    const RECOVERED: [&str; 3] = [
        "unknown -> healthy (probe succeeded)",
        "healthy -> ejected (1 failures in a row)",
        "ejected -> probation (probe succeeded after failing during the ejection)",
    ];

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_failed_during_an_ejection_ends_it_when_it_succeeds() {
        let (mut runner, load, signal) = runner(1);
        let mut events = Vec::new();
        answer(&mut runner, Ok(()), &mut events);
        complete(&load, true);
        runner.reconcile(Instant::now(), &mut |e| events.push(e));
        assert!(runner.records[&"a"].ejected_until.is_some());
        // The endpoint goes away (refused) and comes back: the probe saw both.
        answer(&mut runner, refused(), &mut events);
        assert_ne!(load.health_flags() & flags::UNREACHABLE, 0);
        answer(&mut runner, Ok(()), &mut events);
        assert_eq!(reasons(&events), RECOVERED);
        let bits = load.health_flags();
        assert_eq!(bits & (flags::EJECTED | flags::UNREACHABLE), 0);
        assert_ne!(bits & flags::PROBATION, 0);
        assert_eq!(signal.ejected(), 0);
        assert!(runner.records[&"a"].ejected_until.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_failed_leaves_the_ejection_to_its_time() {
        // A TCP probe of a server that answers 500: it connects throughout.
        let (mut runner, load, _) = runner(1);
        let mut events = Vec::new();
        answer(&mut runner, Ok(()), &mut events);
        complete(&load, true);
        runner.reconcile(Instant::now(), &mut |e| events.push(e));
        for _ in 0..5 {
            answer(&mut runner, Ok(()), &mut events);
        }
        assert_ne!(load.health_flags() & flags::EJECTED, 0);
        assert_eq!(events.len(), 2, "{:?}", reasons(&events));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_for_refused_connections_ends_at_the_first_successful_probe() {
        // Requests were refused a connection (unreachable) and ejected the endpoint; it
        // restarts before any probe runs: the next probe ends the ejection.
        let (mut runner, load, signal) = runner(1);
        let mut events = Vec::new();
        answer(&mut runner, Ok(()), &mut events);
        load.start();
        load.record(crate::endpoint::Observed::Unreachable);
        load.finish();
        runner.reconcile(Instant::now(), &mut |e| events.push(e));
        assert_ne!(load.health_flags() & flags::EJECTED, 0);
        assert!(load.has_failure_penalty());
        answer(&mut runner, Ok(()), &mut events);
        assert_eq!(reasons(&events), RECOVERED);
        assert_eq!(
            load.health_flags() & (flags::EJECTED | flags::UNREACHABLE),
            0
        );
        assert_eq!(signal.ejected(), 0);
        // The failures that ejected it are forgiven: no penalty keeps it from requests.
        assert!(!load.has_failure_penalty());
        assert_eq!(load.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_endpoint_is_back_at_its_first_successful_probe() {
        let (mut runner, load, _) = runner(5);
        let mut events = Vec::new();
        answer(&mut runner, refused(), &mut events);
        assert_eq!(
            load.health_flags() & (flags::UNHEALTHY | flags::UNREACHABLE),
            flags::UNHEALTHY | flags::UNREACHABLE
        );
        answer(&mut runner, Ok(()), &mut events);
        assert_eq!(
            load.health_flags() & (flags::UNHEALTHY | flags::UNREACHABLE),
            0
        );
        // A bad answer (not unreachable) still needs `rise` (2) successes in a row.
        for _ in 0..3 {
            answer(&mut runner, bad_status(), &mut events);
        }
        assert_eq!(load.health_flags() & flags::UNHEALTHY, flags::UNHEALTHY);
        answer(&mut runner, Ok(()), &mut events);
        assert_ne!(
            load.health_flags() & flags::UNHEALTHY,
            0,
            "one success is not enough"
        );
        answer(&mut runner, Ok(()), &mut events);
        assert_eq!(load.health_flags() & flags::UNHEALTHY, 0);
    }
}
