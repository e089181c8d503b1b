//! A sliding-window event rate: requests per second and errors per second for reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How many buckets a window is split into: the window slides by a tenth of its length.
const BUCKETS: usize = 10;

/// Events per second over a sliding window, lock-free.
///
/// The window is split into 10 buckets; an event adds 1 to the bucket of the current
/// tenth of the window, and the rate is the events of the last 10 buckets (the current one
/// partly elapsed) divided by the time they cover. Until one window has passed since the
/// first event, the rate is over the time since then, so a new server reports its real
/// rate at once. Concurrent events at a bucket boundary may lose a count or two: a rate, not
/// a ledger.
///
/// It reads tokio's clock, so tests can pause it.
#[derive(Debug)]
pub struct RateWindow {
    bucket_ns: u64,
    epoch: Instant,
    /// The bucket number (time since `epoch` / `bucket_ns`, plus 1; 0 = never used) each
    /// slot holds, and its count.
    stamps: [AtomicU64; BUCKETS],
    counts: [AtomicU64; BUCKETS],
}

impl RateWindow {
    /// A window of `length` (at least 10 ms), starting now.
    pub fn new(length: Duration) -> Self {
        let bucket_ns = (length.as_nanos() as u64 / BUCKETS as u64).max(1_000_000);
        RateWindow {
            bucket_ns,
            epoch: Instant::now(),
            stamps: Default::default(),
            counts: Default::default(),
        }
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.bucket_ns * BUCKETS as u64)
    }

    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// Counts one event now.
    pub fn record(&self) {
        self.record_n(1);
    }

    /// Counts `n` events now.
    pub fn record_n(&self, n: u64) {
        let bucket = self.now_ns() / self.bucket_ns + 1;
        let slot = (bucket % BUCKETS as u64) as usize;
        let stamp = self.stamps[slot].load(Ordering::Acquire);
        if stamp != bucket {
            // The first event of a new bucket resets the slot (one winner).
            if self.stamps[slot]
                .compare_exchange(stamp, bucket, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.counts[slot].store(0, Ordering::Release);
            }
        }
        self.counts[slot].fetch_add(n, Ordering::AcqRel);
    }

    /// Events per second over the window that ends now.
    pub fn rate(&self) -> f64 {
        let now = self.now_ns();
        let bucket = now / self.bucket_ns + 1;
        let oldest = bucket.saturating_sub(BUCKETS as u64 - 1);
        let mut events = 0u64;
        let mut first: Option<u64> = None;
        for slot in 0..BUCKETS {
            let stamp = self.stamps[slot].load(Ordering::Acquire);
            if stamp >= oldest && stamp <= bucket && stamp != 0 {
                events += self.counts[slot].load(Ordering::Acquire);
                first = Some(first.map_or(stamp, |f: u64| f.min(stamp)));
            }
        }
        let Some(first) = first else {
            return 0.0;
        };
        // From the start of the oldest bucket counted (or of the full window) to now; at
        // least one bucket, so a burst in the first instant does not read as a huge rate.
        let start_ns = (first.max(oldest) - 1) * self.bucket_ns;
        let span_ns = now.saturating_sub(start_ns).max(self.bucket_ns);
        events as f64 * 1e9 / span_ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_reads_back_and_slides_out() {
        let window = RateWindow::new(Duration::from_secs(1));
        // 100 events per second for 3 s.
        for _ in 0..300 {
            window.record();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let rate = window.rate();
        assert!((rate - 100.0).abs() < 5.0, "{rate}");
        // Silence for 2 s: the events slide out.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(window.rate(), 0.0);
        // A new burst starts a new rate.
        for _ in 0..50 {
            window.record();
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        let rate = window.rate();
        assert!((rate - 50.0).abs() < 5.0, "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_young_window_reads_its_rate_over_its_age() {
        let window = RateWindow::new(Duration::from_secs(10));
        for _ in 0..20 {
            window.record();
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        // 20 events in 1 s, though the window is 10 s.
        let rate = window.rate();
        assert!((rate - 20.0).abs() < 1.0, "{rate}");
    }
}
