//! The fail-fast wait of `poll_ready`: how long a handle waits for an eligible endpoint.
//!
//! A handle that finds no endpoint ready waits for the set to change (the driver wakes it
//! when it publishes a snapshot) or for a busy endpoint to become ready (its clone's
//! wake-up), up to the [fail-fast timeout](crate::Builder::fail_fast). The wait ends at its
//! deadline however late the handle is polled; see `Builder::fail_fast` for why.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::NoRuntime;

/// The first and the longest pause before a handle whose endpoints all failed their
/// readiness checks looks again.
const RECHECK_FIRST: Duration = Duration::from_millis(5);
const RECHECK_MAX: Duration = Duration::from_millis(100);

/// One handle's wait for an eligible endpoint.
#[derive(Default)]
pub(super) struct FailFast {
    /// When the wait began, and its deadline's timer.
    wait: Option<(Instant, Pin<Box<Sleep>>)>,
    /// When every endpoint failed its readiness check, no endpoint will wake this handle:
    /// it looks again after this timer (5 ms, doubling up to 100 ms).
    recheck: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl FailFast {
    /// An endpoint was found: the wait, if any, is over.
    #[inline]
    pub(super) fn reset(&mut self) {
        self.wait = None;
        self.recheck = None;
    }

    /// Waits up to `timeout` since the wait began. `Pending` while time is left (with a
    /// recheck timer armed when nothing else will wake the task: `recheck`);
    /// `Ready(Ok(waited))` when the wait is over, which ends it; `Ready(Err(NoRuntime))`
    /// outside a tokio runtime, where no timer can run.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        timeout: Duration,
        recheck: bool,
    ) -> Poll<Result<Duration, NoRuntime>> {
        if timeout.is_zero() {
            self.reset();
            return Poll::Ready(Ok(Duration::ZERO));
        }
        // The wait ends at its deadline, however late this poll comes: a handle cannot tell
        // a caller that polls late from one that gave up on a `ready()` and came back, and
        // starting afresh would let a late poller wait without bound. (A caller that wants
        // a fresh wait after giving up uses a fresh clone; see `Builder::fail_fast`.)
        if self.wait.is_none() && tokio::runtime::Handle::try_current().is_err() {
            // A timer needs a tokio runtime; outside one, fail instead of panicking.
            return Poll::Ready(Err(NoRuntime));
        }
        let (since, sleep) = self
            .wait
            .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(timeout))));
        if sleep.as_mut().poll(cx).is_pending() {
            if recheck {
                self.schedule_recheck(cx);
            }
            return Poll::Pending;
        }
        let waited = since.elapsed();
        self.reset();
        Poll::Ready(Ok(waited))
    }

    /// Arms the recheck timer, whose expiry wakes the task to look again. When it has
    /// expired (this poll is that look), it is re-armed with twice the delay.
    fn schedule_recheck(&mut self, cx: &mut Context<'_>) {
        let (delay, sleep) = self
            .recheck
            .get_or_insert_with(|| (RECHECK_FIRST, Box::pin(tokio::time::sleep(RECHECK_FIRST))));
        if sleep.as_mut().poll(cx).is_ready() {
            *delay = (*delay * 2).min(RECHECK_MAX);
            sleep.as_mut().reset(Instant::now() + *delay);
            let _ = sleep.as_mut().poll(cx);
        }
    }
}
