//! The health state machine, run by the balancer's background task.
//!
//! It keeps one [record](record) per endpoint, and each time the driver polls it, it:
//!
//! 1. turns flag changes made on the completion path (an ejection, the end of probation)
//!    and by `set_draining` into events (`reconcile`, here);
//! 2. collects probe answers and starts the probes that are due ([`probes`]);
//! 3. ends ejections and probations whose time is over, and runs the outlier detectors
//!    every interval ([`ejections`]);
//! 4. arms one timer for the next thing due (here).
//!
//! When the driver publishes a snapshot, [`eligibility`] decides which endpoints take
//! requests, with which effective weights (panic mode, probation, slow start).

mod ejections;
mod eligibility;
mod probes;
mod record;

pub(crate) use eligibility::Candidate;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, Sleep};

use super::probe::{DynProbe, ProbeTarget};
use super::{ActiveChecks, HealthEvent, HealthReason, HealthSettings, OutlierSignal};
use crate::endpoint::{flags, Load, LoadSettings, Metadata, Penalty, Timing};
use crate::strategy::rng::Rng;
use crate::time::after;
use record::{completed_failures, health_of, Record};

type ProbeResult<K> = (K, u64, Result<(), super::ProbeFailure>);
type ProbeTask<K> = Pin<Box<dyn Future<Output = ProbeResult<K>> + Send>>;

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
            outlier: settings
                .outlier
                .as_ref()
                .map(|_| signal.clone() as Arc<dyn crate::endpoint::OutcomePolicy>),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::outlier::FailurePercentage;
    use crate::health::{OutlierDetection, ProbeFailure, TcpProbe};

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
