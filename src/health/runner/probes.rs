//! Active health checks in the runner: probes started on schedule (at most
//! `concurrency` at once), their answers turned into health by rise and fall, and the
//! proof of an unreachable endpoint they carry.

use std::hash::Hash;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::StreamExt;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::super::{ActiveChecks, HealthEvent, HealthReason, ProbeFailure};
use super::Runner;
use crate::endpoint::flags;
use crate::time::after;

impl<K: Clone + Eq + Hash + Send + 'static> Runner<K> {
    /// Collects probe answers and starts the probes that are due.
    pub(super) fn poll_probes(
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
                                Err(_) => Err(ProbeFailure::Timeout(timeout)),
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

    pub(super) fn on_probe_result(
        &mut self,
        checks: &ActiveChecks,
        key: K,
        generation: u64,
        result: Result<(), ProbeFailure>,
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
}

#[cold]
fn probe_panicked() -> ProbeFailure {
    tracing::error!("a health probe panicked; counting it as a failed probe");
    ProbeFailure::Unhealthy("the probe panicked".into())
}

/// Whether a failed probe proves that the endpoint cannot be reached.
fn proves_unreachable(failure: &ProbeFailure) -> bool {
    match failure {
        ProbeFailure::Connect(e) => super::super::unreachable::is_unreachable(e),
        ProbeFailure::Transport(e) => super::super::unreachable::is_unreachable(&**e),
        _ => false,
    }
}
