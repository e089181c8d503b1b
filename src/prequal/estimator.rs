//! The server's own load as Prequal reports it: requests in flight (RIF), and a latency
//! estimate at the current RIF.
//!
//! # The latency estimator
//!
//! Prequal's servers report "the median latency of recent queries that ran at (or near) the
//! current RIF" (Wydrowski et al., NSDI 2024, §3): latency grows with the load a server
//! carries, so the latency worth reporting is the one a request arriving now would see,
//! not an average over calm and busy moments.
//!
//! [`LoadEstimator`] keeps, for each RIF a request found when it arrived (0 to
//! [`MAX_TRACKED_RIF`]; higher RIFs share the last bucket), the latencies of the last
//! [`SAMPLES_PER_RIF`] requests that arrived at that RIF and completed within the last
//! [`max_sample_age`](LoadEstimator::with_max_sample_age) (10 s by default). The estimate
//! at RIF `r` is the median of bucket `r`'s samples if it has at least [`MIN_SAMPLES`];
//! otherwise the buckets nearest to `r` are added, `r - 1`, `r + 1`, `r - 2`, `r + 2`, ...,
//! until there are.
//!
//! With no sample at all (a server that just started, or whose samples aged out), this
//! crate reports how long the oldest request in flight has been waiting (0 when none is):
//! a lower bound of what a request arriving now would wait. Reporting 0 instead makes a new
//! or slow server look fastest until its first requests complete, and many clients herd
//! onto it (measured in the simulator's `prequal` scenario at start-up).
//!
//! "The RIF a request found" counts the other requests in flight when it arrived, so that
//! the estimate at the current RIF is the latency of a request that would arrive now.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::wire::ProbeAnswer;

/// The highest RIF with a bucket of its own; requests that found more share the last one.
pub const MAX_TRACKED_RIF: usize = 63;
/// How many recent latencies each RIF bucket keeps.
pub const SAMPLES_PER_RIF: usize = 16;
/// How many samples the median needs before nearer buckets stop being widened.
pub const MIN_SAMPLES: usize = 3;

/// The default age past which a latency sample no longer counts: 10 s.
const DEFAULT_MAX_SAMPLE_AGE: Duration = Duration::from_secs(10);

/// One RIF's recent latencies: a ring of (completion time, latency in µs).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    samples: [(u64, u64); SAMPLES_PER_RIF],
    len: usize,
    next: usize,
}

impl Bucket {
    fn push(&mut self, at_us: u64, latency_us: u64) {
        self.samples[self.next] = (at_us, latency_us);
        self.next = (self.next + 1) % SAMPLES_PER_RIF;
        self.len = (self.len + 1).min(SAMPLES_PER_RIF);
    }

    fn fresh(&self, since_us: u64) -> impl Iterator<Item = u64> + '_ {
        self.samples[..self.len]
            .iter()
            .filter(move |(at, _)| *at >= since_us)
            .map(|&(_, latency)| latency)
    }
}

/// A server's requests in flight and its latency by RIF. See the [module docs](self).
///
/// Shared by [`PrequalLayer`](super::PrequalLayer) and its services; usable on its own by
/// servers that are not tower services: call [`arrive`](Self::arrive) when a request
/// arrives and [`Arrival::complete`] when it completes.
#[derive(Debug)]
pub struct LoadEstimator {
    rif: AtomicU64,
    epoch: Instant,
    max_sample_age_us: u64,
    inner: Mutex<Inner>,
}

/// What the estimator keeps under its lock.
#[derive(Debug)]
struct Inner {
    buckets: Vec<Bucket>,
    /// When the requests in flight arrived (µs since the epoch), with their counts.
    arrivals: BTreeMap<u64, u32>,
}

impl Inner {
    fn leave(&mut self, at_us: u64) {
        if let Some(n) = self.arrivals.get_mut(&at_us) {
            *n -= 1;
            if *n == 0 {
                self.arrivals.remove(&at_us);
            }
        }
    }
}

impl Default for LoadEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadEstimator {
    /// An estimator with no requests and no samples, whose samples count for 10 s.
    pub fn new() -> Self {
        LoadEstimator {
            rif: AtomicU64::new(0),
            epoch: Instant::now(),
            max_sample_age_us: DEFAULT_MAX_SAMPLE_AGE.as_micros() as u64,
            inner: Mutex::new(Inner {
                buckets: vec![Bucket::default(); MAX_TRACKED_RIF + 1],
                arrivals: BTreeMap::new(),
            }),
        }
    }

    /// Samples older than `age` no longer count (default 10 s; at least 1 ms).
    pub fn with_max_sample_age(mut self, age: Duration) -> Self {
        self.max_sample_age_us = (age.as_micros() as u64).max(1000);
        self
    }

    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_micros() as u64
    }

    /// Requests in flight now.
    pub fn rif(&self) -> u64 {
        self.rif.load(Ordering::Relaxed)
    }

    /// A request arrives: it counts in the RIF until the returned [`Arrival`] completes or
    /// is dropped.
    pub fn arrive(self: &Arc<Self>) -> Arrival {
        let found = self.rif.fetch_add(1, Ordering::Relaxed);
        let at_us = self.now_us();
        *super::lock(&self.inner).arrivals.entry(at_us).or_insert(0) += 1;
        Arrival {
            estimator: self.clone(),
            found,
            at_us,
            done: false,
        }
    }

    /// Records a completed request that found `found` others in flight and took `latency`.
    pub fn record(&self, found: u64, latency: Duration) {
        let bucket = (found as usize).min(MAX_TRACKED_RIF);
        let latency_us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let now = self.now_us();
        super::lock(&self.inner).buckets[bucket].push(now, latency_us);
    }

    /// The latency estimate at RIF `rif` (see the [module docs](self)); without samples,
    /// the time the oldest request in flight has waited.
    pub fn latency_at(&self, rif: u64) -> Duration {
        let now = self.now_us();
        let since = now.saturating_sub(self.max_sample_age_us);
        let inner = super::lock(&self.inner);
        let buckets = &inner.buckets;
        let center = (rif as usize).min(MAX_TRACKED_RIF);
        let mut samples: Vec<u64> = Vec::with_capacity(2 * SAMPLES_PER_RIF);
        samples.extend(buckets[center].fresh(since));
        let mut distance = 1;
        while samples.len() < MIN_SAMPLES && distance <= MAX_TRACKED_RIF {
            if let Some(below) = center.checked_sub(distance) {
                samples.extend(buckets[below].fresh(since));
            }
            if let Some(above) = buckets.get(center + distance) {
                samples.extend(above.fresh(since));
            }
            distance += 1;
        }
        if samples.is_empty() {
            let oldest = inner.arrivals.keys().next().copied();
            return Duration::from_micros(oldest.map_or(0, |at| now.saturating_sub(at)));
        }
        drop(inner);
        Duration::from_micros(median(&mut samples))
    }

    /// What a probe answer says now: the RIF and the latency estimate at it.
    pub fn answer(&self) -> ProbeAnswer {
        let rif = self.rif();
        ProbeAnswer::new(rif, self.latency_at(rif))
    }
}

/// The median (the lower of the two middle values for an even count); 0 for none.
fn median(samples: &mut [u64]) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mid = (samples.len() - 1) / 2;
    *samples.select_nth_unstable(mid).1
}

/// A request counted in its [`LoadEstimator`]'s RIF. Dropping it without
/// [`complete`](Self::complete) (a cancelled request) takes it out of the RIF without a
/// latency sample.
#[derive(Debug)]
pub struct Arrival {
    estimator: Arc<LoadEstimator>,
    found: u64,
    at_us: u64,
    done: bool,
}

impl Arrival {
    /// The estimator this request counts in.
    pub fn estimator(&self) -> &Arc<LoadEstimator> {
        &self.estimator
    }

    /// The other requests in flight when this one arrived.
    pub fn found(&self) -> u64 {
        self.found
    }

    /// The request completed: records its latency at the RIF it found.
    pub fn complete(mut self) {
        let estimator = &self.estimator;
        let now = estimator.now_us();
        let bucket = (self.found as usize).min(MAX_TRACKED_RIF);
        let mut inner = super::lock(&estimator.inner);
        inner.buckets[bucket].push(now, now.saturating_sub(self.at_us));
        inner.leave(self.at_us);
        drop(inner);
        self.done = true;
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.estimator.rif.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            super::lock(&self.estimator.inner).leave(self.at_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn rif_counts_arrivals_until_they_complete_or_drop() {
        let e = Arc::new(LoadEstimator::new());
        let a = e.arrive();
        let b = e.arrive();
        assert_eq!((a.found(), b.found(), e.rif()), (0, 1, 2));
        tokio::time::advance(5 * MS).await;
        a.complete();
        drop(b);
        assert_eq!(e.rif(), 0);
        // Only the completed one left a sample: 5 ms at RIF 0.
        assert_eq!(e.latency_at(0), 5 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn without_samples_the_oldest_request_in_flight_counts() {
        let e = Arc::new(LoadEstimator::new());
        assert_eq!(
            e.latency_at(0),
            Duration::ZERO,
            "nothing in flight, no sample"
        );
        let first = e.arrive();
        tokio::time::advance(30 * MS).await;
        let second = e.arrive();
        tokio::time::advance(10 * MS).await;
        assert_eq!(e.latency_at(2), 40 * MS, "the first has waited 40 ms");
        drop(first);
        assert_eq!(e.latency_at(1), 10 * MS, "then the second, 10 ms");
        second.complete();
        // Now there is a sample (10 ms, at the RIF 1 the second found): the median rules.
        assert_eq!(e.latency_at(1), 10 * MS);
        assert_eq!(e.rif(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn median_at_the_rif_then_nearest_buckets() {
        let e = LoadEstimator::new();
        assert_eq!(e.latency_at(0), Duration::ZERO, "no sample, no estimate");
        for (rif, ms) in [(2, 10), (2, 30), (2, 20), (5, 100), (6, 200), (4, 50)] {
            e.record(rif, ms * MS);
        }
        // RIF 2 has three samples: their median.
        assert_eq!(e.latency_at(2), 20 * MS);
        // RIF 5 has one; 4 and 6 are added: {100, 50, 200}.
        assert_eq!(e.latency_at(5), 100 * MS);
        // RIF 3 has none; 2 and 4 give four: {10, 30, 20, 50}, lower middle 20.
        assert_eq!(e.latency_at(3), 20 * MS);
        // Far above every sample: widened until three are found (6, 5, 4).
        assert_eq!(e.latency_at(40), 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_and_overflowing_rings_are_forgotten() {
        let e = LoadEstimator::new().with_max_sample_age(Duration::from_secs(1));
        for _ in 0..SAMPLES_PER_RIF {
            e.record(1, 100 * MS);
        }
        for _ in 0..MIN_SAMPLES {
            e.record(1, 7 * MS);
        }
        // 3 of the 16 are 7 ms, 13 are 100 ms.
        assert_eq!(e.latency_at(1), 100 * MS);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(e.latency_at(1), Duration::ZERO);
        // RIFs above the last bucket share it.
        e.record(1000, 9 * MS);
        assert_eq!(e.latency_at(MAX_TRACKED_RIF as u64), 9 * MS);
    }
}
