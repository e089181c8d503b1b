//! The series of a subset adapter ([`Subset::metrics`](crate::discover::subset::Subset::metrics)).
//!
//! A subset may stay the same for hours, longer than a recorder's idle timeout, so its
//! figures are kept in atomics and written (looked up by name, off any request path) when
//! the subset changes and again every [`SYNC`], by a task that ends with the adapter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ::metrics::{counter, gauge, Label};

use super::*;

/// The figures of one subset adapter, and the name of the balancer it feeds.
#[derive(Debug)]
struct Figures {
    labels: [Label; 1],
    members: AtomicU64,
    backends: AtomicU64,
    joined: AtomicU64,
    left: AtomicU64,
}

impl Figures {
    fn write(&self) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge!(SUBSET_MEMBERS, self.labels.to_vec()).set(get(&self.members) as f64);
        gauge!(SUBSET_BACKENDS, self.labels.to_vec()).set(get(&self.backends) as f64);
        counter!(SUBSET_JOINED_TOTAL, self.labels.to_vec()).absolute(get(&self.joined));
        counter!(SUBSET_LEFT_TOTAL, self.labels.to_vec()).absolute(get(&self.left));
    }
}

/// A subset adapter's series, labelled with the balancer it feeds.
#[derive(Debug)]
pub(crate) struct SubsetMetrics {
    figures: Arc<Figures>,
    refreshing: AtomicBool,
}

impl SubsetMetrics {
    /// The series for balancer `name`, or `None` without a recorder.
    pub(crate) fn register(name: Arc<str>) -> Option<Self> {
        if !recorder_installed() {
            return None;
        }
        describe_once();
        Some(SubsetMetrics {
            figures: Arc::new(Figures {
                labels: [Label::new(LABEL_BALANCER, name)],
                members: AtomicU64::new(0),
                backends: AtomicU64::new(0),
                joined: AtomicU64::new(0),
                left: AtomicU64::new(0),
            }),
            refreshing: AtomicBool::new(false),
        })
    }

    /// A new subset: its size, the full set's, and the members that came and went. Starts
    /// the refresh task at the first call made inside a tokio runtime.
    pub(crate) fn subset(&self, members: usize, backends: usize, joined: u64, left: u64) {
        let f = &self.figures;
        f.members.store(members as u64, Ordering::Relaxed);
        f.backends.store(backends as u64, Ordering::Relaxed);
        f.joined.fetch_add(joined, Ordering::Relaxed);
        f.left.fetch_add(left, Ordering::Relaxed);
        f.write();
        if !self.refreshing.load(Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                self.refreshing.store(true, Ordering::Relaxed);
                runtime.spawn(refresh(Arc::downgrade(&self.figures)));
            }
        }
    }
}

/// Writes the figures every [`SYNC`] while the adapter lives.
async fn refresh(figures: Weak<Figures>) {
    loop {
        tokio::time::sleep(SYNC).await;
        match figures.upgrade() {
            Some(figures) => figures.write(),
            None => return,
        }
    }
}
