//! One endpoint's health record, as the runner keeps it.

use std::sync::Arc;

use tokio::time::Instant;

use super::super::probe::ProbeTarget;
use super::super::{Health, OutlierSignal};
use crate::endpoint::{flags, Load};

/// One endpoint's health record.
pub(super) struct Record {
    pub(super) load: Arc<Load>,
    pub(super) target: ProbeTarget,
    /// Bumped when the endpoint is re-added, so a late probe answer for the old one is ignored.
    pub(super) generation: u64,
    /// The last probe answer (healthy or not): `None` until the first answer.
    pub(super) probed: Option<bool>,
    /// Probe answers in a row that agree with the last one.
    pub(super) in_row: u32,
    /// When the next probe is due; `None` while one runs or waits for a slot.
    pub(super) next_probe: Option<Instant>,
    pub(super) queued: bool,
    pub(super) times_ejected: u32,
    pub(super) ejected_until: Option<Instant>,
    /// Whether a probe failed during the current ejection, or the endpoint was unreachable
    /// when it was ejected: the next successful probe then ends the ejection (the endpoint
    /// was seen to fail and to recover).
    pub(super) probe_failed_in_ejection: bool,
    /// Whether an ejection ended during the current outlier interval: such an interval
    /// does not forgive an ejection.
    pub(super) returned_in_interval: bool,
    /// When probation ends even without its successes: one outlier interval after it
    /// began, if no failure ejected the endpoint again.
    pub(super) probation_until: Option<Instant>,
    /// Requests and completed failures at the start of the outlier interval.
    pub(super) counts: (u64, u64),
    /// The flags the runner has accounted for: those of the last reconcile, with the
    /// runner's own changes since applied (never read back from the load, so that a change
    /// the completion path or `set_draining` makes meanwhile is still reconciled).
    pub(super) seen_flags: u32,
    /// When the endpoint was added or came back, while it ramps.
    pub(super) ramp_from: Option<Instant>,
}

impl Record {
    pub(super) fn health(&self, active: bool) -> Health {
        health_of(self.seen_flags, active && self.probed.is_none())
    }

    /// Sets (`on`) or clears the flags in `mask` as the runner's own change. Returns the
    /// flags before.
    pub(super) fn set_flags(&mut self, mask: u32, on: bool) -> u32 {
        if on {
            self.seen_flags |= mask;
        } else {
            self.seen_flags &= !mask;
        }
        self.load.set_flags(mask, on)
    }

    /// Ends tracking: requests still in flight on the endpoint can no longer eject it, and
    /// an ejection it holds gives back its slot.
    pub(super) fn detach(&self, signal: &OutlierSignal) {
        let before = self.load.set_flags(flags::REMOVED, true);
        if before & flags::EJECTED != 0 {
            signal.release_ejection();
        }
    }
}

pub(super) fn health_of(flag_bits: u32, unknown: bool) -> Health {
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

/// Completed requests that failed (failures minus failed readiness checks).
pub(super) fn completed_failures(load: &Load) -> u64 {
    load.failures().saturating_sub(load.readiness_failures())
}
