//! The series of a subset adapter ([`Subset::metrics`](crate::discover::subset::Subset::metrics)).

use std::sync::Arc;

use ::metrics::{counter, gauge, Counter, Gauge, Label};

use super::*;

/// The handles of one subset adapter's series, labelled with the balancer it feeds.
#[derive(Debug)]
pub(crate) struct SubsetMetrics {
    members: Gauge,
    backends: Gauge,
    joined: Counter,
    left: Counter,
}

impl SubsetMetrics {
    /// Registers the series for balancer `name`, or returns `None` without a recorder.
    pub(crate) fn register(name: Arc<str>) -> Option<Self> {
        if !recorder_installed() {
            return None;
        }
        describe_once();
        let labels = [Label::new(LABEL_BALANCER, name)];
        Some(SubsetMetrics {
            members: gauge!(SUBSET_MEMBERS, labels.to_vec()),
            backends: gauge!(SUBSET_BACKENDS, labels.to_vec()),
            joined: counter!(SUBSET_JOINED_TOTAL, labels.to_vec()),
            left: counter!(SUBSET_LEFT_TOTAL, labels.to_vec()),
        })
    }

    /// A new subset: its size, the full set's, and the members that came and went.
    pub(crate) fn subset(&self, members: usize, backends: usize, joined: u64, left: u64) {
        self.members.set(members as f64);
        self.backends.set(backends as f64);
        self.joined.increment(joined);
        self.left.increment(left);
    }
}
