//! Outlier detection's per-request rules, applied on the completion path as each request
//! (or readiness check) finishes: failures in a row eject the endpoint at once, so that no
//! further request picks it; successes on probation end the probation; a refused
//! connection marks the endpoint unreachable, and a success clears that.
//!
//! The counters live in the endpoint's [`Load`]; the thresholds and the ejection slots in
//! the [`OutlierSignal`] that every endpoint of the balancer shares. The interval rules
//! (success rate, failure percentage) and the end of ejections run in the background task
//! instead (see [`outlier`](super::outlier)).

use crate::endpoint::{flags, Load, Observed, OutcomePolicy};

use super::OutlierSignal;

impl OutcomePolicy for OutlierSignal {
    /// Counts failures in a row, ejects the endpoint at the threshold, and ends probation
    /// after enough successes. Marks the endpoint unreachable (or reachable again). Wakes
    /// the driver on every change of flags.
    #[cold]
    fn observe(&self, load: &Load, observed: Observed) {
        let flags_now = load.health_flags();
        if observed == Observed::Success {
            return self.observe_success(load, flags_now);
        }
        let unreachable = observed == Observed::Unreachable;
        if unreachable && flags_now & flags::UNREACHABLE == 0 {
            load.set_flags(flags::UNREACHABLE, true);
            self.wake_driver();
        }
        let in_row = load.count_failure_in_row();
        let on_probation = flags_now & flags::PROBATION != 0;
        if on_probation {
            // Probation ends after successes in a row: a failure that cannot eject (no
            // ejection slot is free) still starts the count again.
            load.clear_probation_successes();
        }
        if flags_now & (flags::EJECTED | flags::REMOVED) == 0
            && (on_probation || self.consecutive_threshold_reached(in_row))
            && self.reserve_ejection(unreachable)
        {
            let before = load.set_flags(flags::EJECTED, true);
            if before & (flags::EJECTED | flags::REMOVED) != 0 {
                // Another completion (or the driver) ejected it first, or it was removed
                // meanwhile: the removal gave back (or will give back) the slot of an
                // ejection it saw, and none other, so this one's slot goes back now.
                self.release_ejection();
            }
            self.wake_driver();
        }
    }
}

impl OutlierSignal {
    fn observe_success(&self, load: &Load, flags_now: u32) {
        load.clear_failures_in_row();
        if flags_now & flags::UNREACHABLE != 0 {
            load.set_flags(flags::UNREACHABLE, false);
            self.wake_driver();
        }
        if flags_now & flags::PROBATION != 0
            && load.count_probation_success() == self.probation_successes()
        {
            load.set_flags(flags::PROBATION, false);
            self.wake_driver();
        }
    }
}
