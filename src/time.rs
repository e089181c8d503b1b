//! Deadlines from configured durations, without overflow.
//!
//! Settings such as a probe interval, an ejection time or a DNS TTL bound may be
//! `Duration::MAX`, meaning "never". `Instant + Duration::MAX` panics, so every deadline
//! computed from a setting goes through [`after`], which caps the duration at
//! [`FAR_FUTURE`].

use std::time::Duration;

use tokio::time::Instant;

/// The latest deadline set from a configured duration (about 30 years, as tokio's own "far
/// future"): a configured `Duration::MAX` means "never", not an overflow.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, without overflow: at most [`FAR_FUTURE`] ahead.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now + d.min(FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_max_is_the_far_future() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
