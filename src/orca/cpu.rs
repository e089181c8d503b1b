//! The process's CPU utilization, sampled in the background for server reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The process's CPU utilization, as `cpu_utilization` of [`LoadReport`](super::LoadReport)
/// wants it: CPU time used over the last interval divided by the CPU time the process's cores
/// could give (so 1.0 is every core it may use busy all the time).
///
/// [`spawn`](Self::spawn) starts a tokio task that samples every interval:
///
/// - **Linux:** the process's user and system time from `/proc/self/stat` (fields 14 and 15,
///   in clock ticks of 1/100 s, `USER_HZ`, which is 100 on every architecture Linux runs
///   on today), over wall time, divided by
///   [`std::thread::available_parallelism`] (which follows CPU affinity and cgroup quotas).
/// - **Elsewhere:** nothing is sampled and the value stays 0, which reports leave out.
///   Weighted round robin then uses `application_utilization` if the handler records it
///   (see [`CallMetricRecorder`](super::CallMetricRecorder)), and otherwise ignores the
///   reports (every endpoint gets the mean weight). [`set`](Self::set) feeds a value from
///   any other source.
///
/// The task stops when the last clone of the sampler is dropped.
#[derive(Debug, Clone, Default)]
pub struct CpuSampler {
    value: Arc<AtomicU64>,
}

impl CpuSampler {
    /// A sampler that never samples: its value is what [`set`](Self::set) stores (0 at first).
    pub fn manual() -> Self {
        Self::default()
    }

    /// Starts sampling every `interval` (at least 10 ms) on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns a task).
    pub fn spawn(interval: Duration) -> Self {
        let sampler = CpuSampler::default();
        let weak = Arc::downgrade(&sampler.value);
        let interval = interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut last = read();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(value) = weak.upgrade() else {
                    return;
                };
                let now = read();
                if let (Some(before), Some(after)) = (last, now) {
                    let utilization = utilization(before, after, cores());
                    value.store(utilization.to_bits(), Ordering::Relaxed);
                }
                last = now;
            }
        });
        sampler
    }

    /// The latest sample (0 before the first).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }

    /// Stores a value (ignored unless finite and not negative).
    pub fn set(&self, utilization: f64) {
        if utilization.is_finite() && utilization >= 0.0 {
            self.value.store(utilization.to_bits(), Ordering::Relaxed);
        }
    }
}

/// CPU seconds used by the process and the wall clock, at one moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    cpu_secs: f64,
    at: std::time::Instant,
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// CPU time used between two readings over the CPU time `cores` could give.
fn utilization(before: Reading, after: Reading, cores: f64) -> f64 {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    ((after.cpu_secs - before.cpu_secs).max(0.0) / wall / cores.max(1.0)).max(0.0)
}

#[cfg(target_os = "linux")]
fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let at = std::time::Instant::now();
    Some(Reading {
        cpu_secs: cpu_secs_of_stat(&stat)?,
        at,
    })
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<Reading> {
    None
}

/// User plus system time in `/proc/self/stat`, in seconds. The second field (the command
/// name) is in parentheses and may hold spaces, so fields are counted after its `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn cpu_secs_of_stat(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; utime is field 14, stime field 15.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_name_with_spaces() {
        let stat = "1234 (my (odd) server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    8 0 100 0 0";
        assert_eq!(cpu_secs_of_stat(stat), Some(3.0));
        assert_eq!(cpu_secs_of_stat("garbage"), None);
    }

    #[test]
    fn utilization_is_cpu_time_over_wall_time_and_cores() {
        let at = std::time::Instant::now();
        let before = Reading { cpu_secs: 10.0, at };
        let after = Reading {
            cpu_secs: 11.0,
            at: at + Duration::from_secs(1),
        };
        assert_eq!(utilization(before, after, 2.0), 0.5);
        assert_eq!(utilization(before, before, 2.0), 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_busy_thread_shows_in_the_reading() {
        let before = read().unwrap();
        // Burn CPU (not sleep) until the kernel has counted at least 3 ticks of it.
        let mut x = 0u64;
        while read().unwrap().cpu_secs - before.cpu_secs < 0.03 {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        let after = read().unwrap();
        assert!(utilization(before, after, cores()) > 0.0);
    }

    #[test]
    fn set_ignores_values_a_report_cannot_hold() {
        let s = CpuSampler::manual();
        s.set(0.4);
        s.set(f64::NAN);
        s.set(-1.0);
        assert_eq!(s.get(), 0.4);
    }
}
