//! Latency samples counted in buckets inside the endpoint, handed to the recorder's
//! histogram once per [`SYNC`](super::SYNC).
//!
//! A request's latency costs one atomic add here, where a histogram of a recorder costs
//! more (metrics-exporter-prometheus reads its own clock and appends to a lock-free list:
//! about 110-140 ns a sample on the development machine, more than the 60 ns the whole
//! feature may cost a request). The driver drains the buckets each second and records
//! each bucket's midpoint as many times as it counted (`Histogram::record_many`).
//!
//! The buckets are log-linear, as HdrHistogram's: 8 per doubling, so a sample is recorded
//! as the midpoint of a bucket at most 1/8 of its lower edge wide, within 6.25 % of its
//! value (quantiles within the same). Values below 8 ns are exact; values above 2^36 ns
//! (about 69 s) count as 2^36 ns.

use std::sync::atomic::{AtomicU32, Ordering};

/// Sub-buckets per doubling, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The largest value kept apart, as a power of two of nanoseconds.
const MAX_LOG2: u32 = 36;
/// Buckets: `SUB` exact small values, then `SUB` per doubling from `SUB` to `2^MAX_LOG2`.
const BUCKETS: usize = SUB + (MAX_LOG2 - SUB_BITS + 1) as usize * SUB;

/// The bucket of `ns`.
#[inline]
fn index(ns: u64) -> usize {
    let v = ns.min((1 << (MAX_LOG2 + 1)) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let log2 = 63 - v.leading_zeros();
    let shift = log2 - SUB_BITS;
    let sub = (v >> shift) as usize & (SUB - 1);
    SUB + shift as usize * SUB + sub
}

/// The midpoint of bucket `i`, in nanoseconds.
fn midpoint(i: usize) -> f64 {
    if i < SUB {
        return i as f64;
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    let lower = ((SUB + sub) as u64) << shift;
    lower as f64 + (1u64 << shift) as f64 / 2.0
}

/// Counts of latency samples by bucket, since the last drain.
#[derive(Debug)]
pub(crate) struct LatencyBuckets {
    counts: Box<[AtomicU32]>,
}

impl LatencyBuckets {
    pub(crate) fn new() -> Self {
        LatencyBuckets {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Counts one sample of `ns` nanoseconds.
    #[inline]
    pub(crate) fn record(&self, ns: u64) {
        self.counts[index(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Empties the buckets, calling `f(seconds, count)` for each that counted samples.
    pub(crate) fn drain(&self, mut f: impl FnMut(f64, usize)) {
        for (i, count) in self.counts.iter().enumerate() {
            if count.load(Ordering::Relaxed) != 0 {
                let n = count.swap(0, Ordering::Relaxed);
                f(midpoint(i) * 1e-9, n as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_within_a_sixteenth_of_its_bucket_midpoint() {
        let mut v = 1u64;
        while v < 1 << MAX_LOG2 {
            for x in [v, v + v / 3, v + v / 2, 2 * v - 1] {
                let mid = midpoint(index(x));
                let error = (mid - x as f64).abs() / x as f64;
                assert!(error <= 1.0 / 16.0, "{x} ns -> {mid} ns ({error})");
            }
            v *= 2;
        }
        // Small values are exact; the last bucket holds everything above the range.
        assert_eq!(midpoint(index(5)), 5.0);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(index((1 << (MAX_LOG2 + 1)) - 1), BUCKETS - 1);
    }

    #[test]
    fn buckets_are_ordered_and_contiguous() {
        // Each bucket starts where the previous one ends.
        let mut last = 0;
        for ns in 0..100_000u64 {
            let i = index(ns);
            assert!(i == last || i == last + 1, "{ns}: {last} -> {i}");
            last = i;
        }
    }

    #[test]
    fn a_drain_reports_each_sample_once() {
        let buckets = LatencyBuckets::new();
        for ns in [1_000_000, 1_000_000, 5_000_000] {
            buckets.record(ns);
        }
        let mut seen = Vec::new();
        buckets.drain(|s, n| seen.push((s, n)));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, 2);
        assert!((seen[0].0 - 0.001).abs() / 0.001 <= 1.0 / 16.0);
        assert_eq!(seen[1].1, 1);
        let mut again = 0;
        buckets.drain(|_, n| again += n);
        assert_eq!(again, 0);
    }
}
